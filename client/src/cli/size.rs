//! Byte sizes on the command line: `8MiB`, `1KiB`, `100MB`, `1.5GiB` or plain bytes, with
//! binary (`KiB`, `MiB`, `GiB`, `TiB`) and decimal (`KB`, `MB`, `GB`, `TB`) units, case-insensitive.

use std::fmt;
use std::str::FromStr;

/// A number of bytes parsed from a size string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ByteSize(pub(crate) u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let unit = unit.trim();
        let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "m" | "mb" => 1_000_000,
            "g" | "gb" => 1_000_000_000,
            "t" | "tb" => 1_000_000_000_000,
            "ki" | "kib" => 1 << 10,
            "mi" | "mib" => 1 << 20,
            "gi" | "gib" => 1 << 30,
            "ti" | "tib" => 1 << 40,
            _ => {
                return Err(format!(
                    "unknown size unit '{unit}' in '{s}' (use B, KiB, MiB, GiB, KB, MB, GB)"
                ));
            }
        };
        if number.is_empty() {
            return Err(format!("size '{s}' has no number"));
        }
        let bytes = if let Ok(whole) = number.parse::<u64>() {
            whole
                .checked_mul(multiplier)
                .ok_or_else(|| format!("size '{s}' is too large"))?
        } else {
            let value: f64 = number
                .parse()
                .map_err(|_| format!("'{number}' is not a number in size '{s}'"))?;
            let bytes = value * multiplier as f64;
            if !bytes.is_finite() || bytes >= u64::MAX as f64 {
                return Err(format!("size '{s}' is too large"));
            }
            bytes.round() as u64
        };
        Ok(ByteSize(bytes))
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
