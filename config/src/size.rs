//! Human-friendly byte sizes: `512MiB`, `2GiB`, `1.5GiB`, `10G`, or plain bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes that parses from and prints as a human-friendly string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("size is empty")]
    Empty,
    #[error("size {0:?} is not a number followed by an optional unit (B, KiB, MiB, GiB, TiB, K, M, G, T)")]
    Malformed(String),
    #[error("size {0:?} has an unknown unit {1:?} (use B, KiB, MiB, GiB, TiB, K, M, G or T)")]
    UnknownUnit(String, String),
    #[error("size {0:?} is larger than 2^64-1 bytes")]
    TooLarge(String),
}

const KIB: u64 = 1024;

fn unit_multiplier(unit: &str) -> Option<u64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => KIB.pow(2),
        "g" | "gb" | "gib" => KIB.pow(3),
        "t" | "tb" | "tib" => KIB.pow(4),
        "p" | "pb" | "pib" => KIB.pow(5),
        _ => return None,
    })
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(input: &str) -> Result<Self, SizeError> {
        let text = input.trim();
        if text.is_empty() {
            return Err(SizeError::Empty);
        }
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let unit = unit.trim();
        if number.is_empty() || number.chars().filter(|c| *c == '.').count() > 1 {
            return Err(SizeError::Malformed(input.to_owned()));
        }
        let multiplier = unit_multiplier(unit)
            .ok_or_else(|| SizeError::UnknownUnit(input.to_owned(), unit.to_owned()))?;
        if let Some((whole, fraction)) = number.split_once('.') {
            // Exact decimal arithmetic: whole * m + fraction * m / 10^digits.
            let whole: u128 = if whole.is_empty() {
                0
            } else {
                whole
                    .parse()
                    .map_err(|_| SizeError::TooLarge(input.to_owned()))?
            };
            if fraction.len() > 18 {
                return Err(SizeError::Malformed(input.to_owned()));
            }
            let scale = 10u128.pow(fraction.len() as u32);
            let fraction: u128 = if fraction.is_empty() {
                0
            } else {
                fraction
                    .parse()
                    .map_err(|_| SizeError::Malformed(input.to_owned()))?
            };
            let bytes = whole
                .checked_mul(u128::from(multiplier))
                .and_then(|w| w.checked_add(fraction * u128::from(multiplier) / scale))
                .ok_or_else(|| SizeError::TooLarge(input.to_owned()))?;
            return u64::try_from(bytes)
                .map(ByteSize)
                .map_err(|_| SizeError::TooLarge(input.to_owned()));
        }
        let value: u64 = number
            .parse()
            .map_err(|_| SizeError::TooLarge(input.to_owned()))?;
        value
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| SizeError::TooLarge(input.to_owned()))
    }
}

impl fmt::Display for ByteSize {
    /// Prints with a binary unit and one decimal, e.g. `1.0 GiB`; exact bytes below 1 KiB.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        if self.0 < KIB {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64 / KIB as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.1} {}", UNITS[unit])
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    /// Accepts either an integer number of bytes or a string such as "2GiB".
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bytes(bytes) => Ok(ByteSize(bytes)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_plain_bytes() {
        assert_eq!("512MiB".parse(), Ok(ByteSize(512 * 1024 * 1024)));
        assert_eq!("2GiB".parse(), Ok(ByteSize(2 * 1024 * 1024 * 1024)));
        assert_eq!("2G".parse(), Ok(ByteSize(2 * 1024 * 1024 * 1024)));
        assert_eq!("1.5GiB".parse(), Ok(ByteSize(1536 * 1024 * 1024)));
        assert_eq!("4096".parse(), Ok(ByteSize(4096)));
        assert_eq!(" 10 MiB ".parse(), Ok(ByteSize(10 * 1024 * 1024)));
    }

    #[test]
    fn rejects_bad_sizes_with_the_reason() {
        assert_eq!("".parse::<ByteSize>(), Err(SizeError::Empty));
        assert!(
            matches!("12 parsecs".parse::<ByteSize>(), Err(SizeError::UnknownUnit(_, u)) if u == "parsecs")
        );
        assert!(matches!(
            "-5".parse::<ByteSize>(),
            Err(SizeError::Malformed(_))
        ));
        assert!(matches!(
            "1.2.3G".parse::<ByteSize>(),
            Err(SizeError::Malformed(_))
        ));
        assert!(matches!(
            "99999999999999999999".parse::<ByteSize>(),
            Err(SizeError::TooLarge(_))
        ));
        assert!(matches!(
            "18000000000GiB".parse::<ByteSize>(),
            Err(SizeError::TooLarge(_))
        ));
    }

    #[test]
    fn displays_human_units() {
        assert_eq!(ByteSize(1024 * 1024 * 1024).to_string(), "1.0 GiB");
        assert_eq!(ByteSize(256 * 1024 * 1024).to_string(), "256.0 MiB");
        assert_eq!(ByteSize(12).to_string(), "12 B");
    }
}
