//! CRC32C combination in O(log n): the CRC32C of `a ‖ b` from the CRC32C of `a`, the CRC32C
//! of `b` and `b`'s length, without reading any byte again.
//!
//! A segment entry's CRC32C covers its batches as laid out; each batch's own CRC32C (checked
//! when it was produced) already covers all of it but its first 21 bytes (base offset, length,
//! leader epoch, magic, CRC). So the entry CRC is the CRC of those 21 bytes combined with the
//! batch's CRC: every byte is CRC'd once on the produce path, not twice.
//!
//! The math: over GF(2), `crc(a ‖ b) = crc(a) · x^(8·|b|) mod P  ⊕  crc(b)` (the pre- and
//! post-inversions of CRC32C cancel in this form). Multiplying by `x^(8·n)` is done with a table
//! of `x^(2^k) mod P`, one modular multiplication per set bit of `8·n`: a few hundred
//! instructions whatever the length, where the `crc32c` crate's combine squares 32×32 bit
//! matrices for every bit of the length.

/// CRC32C's polynomial, bit-reflected (Castagnoli).
const POLY: u32 = 0x82F6_3B78;

/// `a · b mod P`, both bit-reflected polynomials (bit 31 is x^0).
const fn mul_mod(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut product = 0u32;
    while m != 0 {
        if a & m != 0 {
            product ^= b;
        }
        // b ← b · x mod P
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        m >>= 1;
    }
    product
}

/// `X2N[k] = x^(2^k) mod P`.
const X2N: [u32; 64] = {
    let mut table = [0u32; 64];
    table[0] = 1 << 30; // x^1
    let mut k = 1;
    while k < 64 {
        table[k] = mul_mod(table[k - 1], table[k - 1]);
        k += 1;
    }
    table
};

/// `x^(8·n) mod P`.
fn x_pow_8n(n: u64) -> u32 {
    let mut p = 1u32 << 31; // x^0
    let mut n = n;
    let mut k = 3; // 8·n = n · 2^3
    while n != 0 {
        if n & 1 != 0 {
            p = mul_mod(X2N[k % 64], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The CRC32C of `a ‖ b`, given `crc_a` = CRC32C(a), `crc_b` = CRC32C(b) and `len_b` = |b|.
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: usize) -> u32 {
    if len_b == 0 {
        return crc_a;
    }
    mul_mod(x_pow_8n(len_b as u64), crc_a) ^ crc_b
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn matches_the_crc_of_the_concatenation() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        for split in [0, 1, 7, 21, 64, 1000, 4096, 65_535, 69_999, 70_000] {
            let (a, b) = data.split_at(split);
            assert_eq!(
                crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len()),
                crc32c::crc32c(&data),
                "split at {split}"
            );
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_crc32c_crate(a: u32, b: u32, len in 0usize..(1 << 40)) {
            prop_assert_eq!(crc32c_combine(a, b, len), crc32c::crc32c_combine(a, b, len));
        }
    }
}
