use proptest::prelude::*;

use super::*;

/// A fake batch of `len` bytes (≥ 21) whose bytes are `fill` but its CRC32C field (bytes
/// 17..21), which holds the CRC32C of the bytes after it, as a validated batch's does.
fn fake_batch(len: usize, fill: u8) -> Bytes {
    let mut b = vec![fill; len];
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(b)
}

fn two_entry_segment() -> (Bytes, Vec<SegmentEntry>) {
    let mut w = SegmentWriter::new(1_700_000_000_000, 0);
    w.begin_entry(7, 0);
    w.push_batch(&fake_batch(61, 0xaa), 100, 3, 1_000, 900);
    w.push_batch(&fake_batch(61, 0xbb), 103, 2, 1_100, 1_050);
    w.begin_entry(7, 3); // empty entry: dropped
    w.begin_entry(9, 1);
    w.push_batch(&fake_batch(64, 0xcc), 0, 1, 5, 5);
    w.finish_bytes()
}

/// The exact bytes of format v1 for `two_entry_segment`. If this test fails, the format
/// changed: bump `SEGMENT_VERSION` and keep a reader for version 1 instead of editing this.
const GOLDEN_HEX: &str = include_str!("golden_v1.hex");

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn golden_bytes_pin_format_v1() {
    let (bytes, _) = two_entry_segment();
    let golden: String = GOLDEN_HEX.split_whitespace().collect();
    if std::env::var_os("SILT_WRITE_GOLDEN").is_some() {
        let lines: Vec<String> = hex(&bytes)
            .as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/src/segment/golden_v1.hex"),
            lines.join("\n") + "\n",
        )
        .unwrap();
        return;
    }
    assert_eq!(hex(&bytes), golden);
}

#[test]
fn layout_round_trips() {
    let (bytes, entries) = two_entry_segment();
    assert_eq!(entries.len(), 2, "the empty entry is dropped");
    let e = &entries[0];
    assert_eq!((e.topic_id, e.partition, e.batch_count), (7, 0, 2));
    assert_eq!((e.first_offset, e.last_offset), (100, 104));
    assert_eq!((e.min_timestamp, e.max_timestamp), (900, 1_100));
    assert_eq!((e.position, e.length), (HEADER_LEN as u64, 122));
    let e2 = &entries[1];
    assert_eq!(
        (e2.position, e2.length, e2.first_offset, e2.last_offset),
        (138, 64, 0, 0)
    );
    // Base offsets were written big-endian into each batch copy.
    assert_eq!(&bytes[16..24], &100i64.to_be_bytes());
    assert_eq!(&bytes[16 + 61..16 + 69], &103i64.to_be_bytes());
    assert_eq!(bytes[24], 0xaa, "the rest of the batch is untouched");

    let decoded = decode_segment(&bytes).unwrap();
    assert_eq!(decoded.created_at_ms, 1_700_000_000_000);
    assert_eq!(decoded.entries, entries);
    for e in &entries {
        let range = &bytes[e.position as usize..(e.position + u64::from(e.length)) as usize];
        verify_entry_range(e, range).unwrap();
    }
    let footer = decode_footer(&bytes[bytes.len() - FOOTER_LEN..]).unwrap();
    assert_eq!(footer.object_length, bytes.len() as u64);
    assert_eq!(footer.entry_count, 2);
}

/// Compaction's copy: entries of one partition from several segments, pushed whole into one
/// object, read back byte for byte with one entry whose CRC was combined, not recomputed.
#[test]
fn entries_copied_whole_combine_their_crcs() {
    let (a, a_entries) = two_entry_segment();
    let mut w = SegmentWriter::new(1_800_000_000_000, 0);
    w.begin_entry(7, 0);
    assert_eq!(w.open_entry_len(), 0);
    let src = &a_entries[0];
    let range = |b: &Bytes, e: &SegmentEntry| {
        b.slice(e.position as usize..(e.position + u64::from(e.length)) as usize)
    };
    w.push_entry(&range(&a, src), src);
    let mut next = SegmentWriter::new(0, 0);
    next.begin_entry(7, 0);
    next.push_batch(&fake_batch(70, 0xdd), 105, 4, 1_200, 1_150);
    let (b, b_entries) = next.finish_bytes();
    w.push_entry(&range(&b, &b_entries[0]), &b_entries[0]);
    assert_eq!(w.open_entry_len(), 122 + 70);
    let (bytes, entries) = w.finish_bytes();
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!((e.topic_id, e.partition, e.batch_count), (7, 0, 3));
    assert_eq!((e.first_offset, e.last_offset), (100, 108));
    assert_eq!((e.min_timestamp, e.max_timestamp), (900, 1_200));
    let copied = range(&bytes, e);
    verify_entry_range(e, &copied).unwrap();
    assert_eq!(&copied[..122], &range(&a, src)[..]);
    assert_eq!(decode_segment(&bytes).unwrap().entries, entries);
}

#[test]
fn corruption_is_detected() {
    let (bytes, entries) = two_entry_segment();
    let n = bytes.len();
    let flip = |at: usize| {
        let mut b = bytes.to_vec();
        b[at] ^= 1;
        b
    };
    assert!(matches!(
        decode_segment(&flip(0)),
        Err(SegmentError::BadMagic { .. })
    ));
    assert!(matches!(
        decode_segment(&flip(4)),
        Err(SegmentError::UnsupportedVersion { .. })
    ));
    assert!(matches!(
        decode_segment(&flip(n - 1)),
        Err(SegmentError::BadChecksum { what: "footer", .. })
    ));
    let index_at = entries
        .last()
        .map(|e| (e.position + u64::from(e.length)) as usize)
        .unwrap();
    assert!(matches!(
        decode_segment(&flip(index_at + 3)),
        Err(SegmentError::BadChecksum { what: "index", .. })
    ));
    assert!(decode_segment(&bytes[..n - 1]).is_err());
    assert!(matches!(
        decode_segment(&bytes[..10]),
        Err(SegmentError::TooShort { .. })
    ));
    let e = &entries[0];
    let mut range =
        bytes[e.position as usize..(e.position + u64::from(e.length)) as usize].to_vec();
    range[30] ^= 0x40;
    assert!(matches!(
        verify_entry_range(e, &range),
        Err(SegmentError::BadChecksum { what: "entry", .. })
    ));
}

#[test]
fn empty_segment_is_valid() {
    let (bytes, entries) = SegmentWriter::new(5, 0).finish_bytes();
    assert!(entries.is_empty());
    assert_eq!(bytes.len(), HEADER_LEN + FOOTER_LEN);
    assert_eq!(decode_segment(&bytes).unwrap().entries, vec![]);
}

proptest! {
    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_segment(&bytes);
        if bytes.len() >= FOOTER_LEN {
            let _ = decode_footer(&bytes[bytes.len() - FOOTER_LEN..]);
        }
    }

    #[test]
    fn decoder_rejects_or_survives_damage(at in 0usize..400, bit in 0u8..8, cut in 0usize..400) {
        let (bytes, _) = two_entry_segment();
        let mut damaged = bytes.to_vec();
        let at = at % damaged.len();
        damaged[at] ^= 1 << bit;
        // Any single bit flip outside the batch bytes is detected.
        let in_batches = (HEADER_LEN..HEADER_LEN + 122 + 64).contains(&at);
        let result = decode_segment(&damaged);
        if !in_batches && !(8..16).contains(&at) && !(6..8).contains(&at) {
            prop_assert!(result.is_err(), "flip at {} went unnoticed", at);
        }
        let cut = cut % bytes.len();
        prop_assert!(decode_segment(&bytes[..cut]).is_err());
    }

    #[test]
    fn writer_and_decoder_agree(parts in proptest::collection::vec((0u64..4, 0u32..4, proptest::collection::vec((prop_oneof![8usize..200, BORROW_MIN - 2..BORROW_MIN + 300], 1u32..50, any::<u8>()), 1..4)), 0..6)) {
        let mut w = SegmentWriter::new(1, 0);
        let mut offset = 0i64;
        let mut expected = Vec::new();
        for (topic, partition, batches) in &parts {
            w.begin_entry(*topic, *partition);
            for (len, count, fill) in batches {
                let batch = if *len >= 21 { fake_batch(*len, *fill) } else { Bytes::from(vec![*fill; *len]) };
                w.push_batch(&batch, offset, *count, 10, 5);
                let mut laid = batch.to_vec();
                laid[..8].copy_from_slice(&offset.to_be_bytes());
                expected.push(laid);
                offset += i64::from(*count);
            }
        }
        let (pieces, entries) = w.finish();
        let bytes = concat(pieces);
        prop_assert_eq!(entries.len(), parts.len());
        prop_assert_eq!(&decode_segment(&bytes).unwrap().entries, &entries);
        // Borrowed or copied, every batch reads back with its offset, under its entry's CRC.
        let batches: Vec<u8> = expected.concat();
        prop_assert_eq!(&bytes[HEADER_LEN..HEADER_LEN + batches.len()], &batches[..]);
        for e in &entries {
            let range = e.position as usize..(e.position + u64::from(e.length)) as usize;
            prop_assert!(verify_entry_range(e, &bytes[range]).is_ok());
        }
    }
}

#[test]
fn large_batches_are_referenced_not_copied() {
    let big = fake_batch(BORROW_MIN + 100, 0x5a);
    let small = fake_batch(100, 0x33);
    let mut w = SegmentWriter::new(3, 0);
    w.begin_entry(1, 0);
    w.push_batch(&small, 10, 2, 7, 7);
    w.push_batch(&big, 12, 5, 8, 8);
    w.push_batch(&big, 17, 5, 9, 9);
    let (pieces, entries) = w.finish();
    // header + small + first offset | big after its offset | second offset | big | index + footer
    assert_eq!(pieces.len(), 5);
    let inside = |p: &Bytes| {
        let (at, end) = (big.as_ptr() as usize, big.as_ptr() as usize + big.len());
        (at..end).contains(&(p.as_ptr() as usize))
    };
    assert!(inside(&pieces[1]) && inside(&pieces[3]));
    assert_eq!(pieces[1].len(), big.len() - 8);
    let bytes = concat(pieces);
    let e = &entries[0];
    assert_eq!((e.first_offset, e.last_offset, e.batch_count), (10, 21, 3));
    let range = e.position as usize..(e.position + u64::from(e.length)) as usize;
    verify_entry_range(e, &bytes[range.clone()]).unwrap();
    let second = range.start + small.len() + big.len();
    assert_eq!(&bytes[second..second + 8], &17i64.to_be_bytes());
    assert_eq!(&bytes[second + 8..range.end], &big[8..]);
    assert_eq!(decode_segment(&bytes).unwrap().entries, entries);
}
