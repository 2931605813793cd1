//! Byte sizes on the command line: `8MiB`, `1KiB`, `100MB`, `1.5GiB` or plain bytes, with
//! binary (`KiB`, `MiB`, `GiB`, `TiB`) and decimal (`KB`, `MB`, `GB`, `TB`) units,
//! case-insensitive, parsed by the `bytesize` crate as the broker's settings are.

use std::fmt;
use std::str::FromStr;

/// A number of bytes parsed from a size string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ByteSize(pub(crate) u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        s.parse::<bytesize::ByteSize>()
            .map(|b| ByteSize(b.as_u64()))
            .map_err(|e| format!("'{s}' is not a size (use e.g. 4096, 8MiB, 100MB, 1.5GiB): {e}"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_bytes(self.0))
    }
}

/// Formats bytes with the largest binary unit that keeps the number at least 1 (`8 MiB`,
/// `1.5 KiB`, `100 B`).
pub(crate) fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> u64 {
        s.parse::<ByteSize>().unwrap().0
    }

    #[test]
    fn parses_units() {
        assert_eq!(parse("8MiB"), 8 << 20);
        assert_eq!(parse("1KiB"), 1024);
        assert_eq!(parse("100MB"), 100_000_000);
        assert_eq!(parse("4096"), 4096);
        assert_eq!(parse("12B"), 12);
        assert_eq!(parse("2gib"), 2 << 30);
        assert_eq!(parse("1 KB"), 1000);
        assert_eq!(parse("1.5KiB"), 1536);
        assert_eq!(parse("1k"), 1000);
    }

    #[test]
    fn refuses_nonsense() {
        for bad in [
            "",
            "MiB",
            "8 parsecs",
            "1.2.3MB",
            "99999999999999999999",
            "-1",
        ] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats_with_binary_units() {
        assert_eq!(format_bytes(100), "100 B");
        assert_eq!(format_bytes(8 << 20), "8 MiB");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(ByteSize(1 << 30).to_string(), "1 GiB");
    }
}
