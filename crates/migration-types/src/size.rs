//! Byte sizes and transfer rates, parsed from and printed as human text.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::error::{Error, Result, quote};

/// Units accepted by [`ByteSize::from_str`], lowercase, with their multiplier.
const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("pb", 1_000_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("pib", 1 << 50),
    ("k", 1 << 10),
    ("m", 1 << 20),
    ("g", 1 << 30),
    ("t", 1 << 40),
    ("p", 1 << 50),
];

/// Units [`ByteSize`]'s `Display` picks from, largest first: binary before decimal.
const DISPLAY_UNITS: &[(&str, u64)] = &[
    ("PiB", 1 << 50),
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("PB", 1_000_000_000_000_000),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
];

const UNIT_HINT: &str = "use B, KB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB";
const MAX_FRACTION_DIGITS: usize = 9;

/// A number of bytes.
///
/// # Text form
///
/// Parsing accepts a whole or decimal number, an optional single space and an optional unit,
/// case-insensitively:
///
/// | unit | meaning |
/// |---|---|
/// | none, `B` | bytes |
/// | `KB` `MB` `GB` `TB` `PB` | decimal: 1000, 1000², … bytes |
/// | `KiB` `MiB` `GiB` `TiB` `PiB` | binary: 1024, 1024², … bytes |
/// | `K` `M` `G` `T` `P` | shorthand for the **binary** units, as `ls -h` and rclone read them |
///
/// Because the units are case-insensitive, `Mb` means megabytes, not megabits.
/// A fraction (at most 9 digits after the point) is computed exactly and rounded to the
/// nearest byte: `1.5GB` is 1 500 000 000 bytes, `1.5KiB` is 1536. Bytes themselves cannot
/// be fractional (`1.5` and `1.5B` are errors).
///
/// `Display` is exact, so printing then parsing gives the same value back: it uses the
/// largest binary unit that divides the size (`50MiB`), else the largest decimal one
/// (`1500MB`), else bytes (`1023B`); zero prints as `0B`.
///
/// ```
/// use ferry_types::ByteSize;
/// # fn main() -> Result<(), ferry_types::Error> {
/// assert_eq!("50MiB".parse::<ByteSize>()?, ByteSize::mib(50));
/// assert_eq!("1.5GB".parse::<ByteSize>()?.as_u64(), 1_500_000_000);
/// assert_eq!("4 k".parse::<ByteSize>()?, ByteSize::kib(4));
/// assert_eq!(ByteSize::b(1_500_000).to_string(), "1500KB");
/// # Ok(()) }
/// ```
///
/// # Serde
///
/// Human-readable formats (JSON, TOML) write the text form and read either the text form or
/// a plain integer of bytes; binary formats (postcard) use a `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Zero bytes.
    pub const ZERO: ByteSize = ByteSize(0);

    /// `n` bytes.
    pub const fn b(n: u64) -> ByteSize {
        ByteSize(n)
    }

    /// `n` kibibytes (`n × 1024` bytes), saturating at `u64::MAX`.
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n.saturating_mul(1 << 10))
    }

    /// `n` mebibytes (`n × 1024²` bytes), saturating at `u64::MAX`.
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n.saturating_mul(1 << 20))
    }

    /// `n` gibibytes (`n × 1024³` bytes), saturating at `u64::MAX`.
    pub const fn gib(n: u64) -> ByteSize {
        ByteSize(n.saturating_mul(1 << 30))
    }

    /// `n` tebibytes (`n × 1024⁴` bytes), saturating at `u64::MAX`.
    pub const fn tib(n: u64) -> ByteSize {
        ByteSize(n.saturating_mul(1 << 40))
    }

    /// The number of bytes.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl From<u64> for ByteSize {
    fn from(n: u64) -> ByteSize {
        ByteSize(n)
    }
}

impl From<ByteSize> for u64 {
    fn from(size: ByteSize) -> u64 {
        size.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n == 0 {
            return f.pad("0B");
        }
        let text = match DISPLAY_UNITS
            .iter()
            .find(|(_, mult)| n.is_multiple_of(*mult))
        {
            Some((unit, mult)) => format!("{}{unit}", n / mult),
            None => format!("{n}B"),
        };
        f.pad(&text)
    }
}

impl FromStr for ByteSize {
    type Err = Error;

    fn from_str(text: &str) -> Result<ByteSize> {
        parse_bytes(text)
            .map(ByteSize)
            .map_err(|reason| Error::InvalidSize {
                text: text.to_owned(),
                reason,
            })
    }
}

/// Parses the text form of a [`ByteSize`]; the error is the reason only.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty; expected a number with an optional unit, e.g. 512B or 50MiB".into());
    }
    if s.starts_with('-') {
        return Err("negative sizes are not allowed".into());
    }
    let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
    let (int_digits, rest) = s.split_at(int_len);
    if int_digits.is_empty() {
        return Err("expected a number, e.g. 512B or 1.5GiB".into());
    }
    let (frac_digits, rest) = match rest.strip_prefix('.') {
        Some(after) => {
            let frac_len = after.bytes().take_while(u8::is_ascii_digit).count();
            if frac_len == 0 {
                return Err("expected digits after the decimal point".into());
            }
            if frac_len > MAX_FRACTION_DIGITS {
                return Err(format!(
                    "too many digits after the decimal point (at most {MAX_FRACTION_DIGITS})"
                ));
            }
            after.split_at(frac_len)
        }
        None => ("", rest),
    };
    let unit = rest.strip_prefix(' ').unwrap_or(rest);
    let lower = unit.to_ascii_lowercase();
    let Some(&(_, mult)) = UNITS.iter().find(|(name, _)| *name == lower) else {
        return Err(format!("unknown unit {} ({UNIT_HINT})", quote(unit)));
    };
    if mult == 1 && !frac_digits.is_empty() {
        return Err(
            "a size in bytes cannot have a fraction; use a larger unit, e.g. 1.5KiB".into(),
        );
    }
    let overflow = || format!("too large; the maximum is {} bytes", u64::MAX);
    let mut int: u128 = 0;
    for digit in int_digits.bytes() {
        int = int
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(digit - b'0')))
            .filter(|&v| v <= u128::from(u64::MAX))
            .ok_or_else(overflow)?;
    }
    let mut total = int.checked_mul(u128::from(mult)).ok_or_else(overflow)?;
    if !frac_digits.is_empty() {
        let mut frac: u128 = 0;
        let mut scale: u128 = 1;
        for digit in frac_digits.bytes() {
            frac = frac * 10 + u128::from(digit - b'0');
            scale *= 10;
        }
        // frac < 10^9 and mult <= 2^50, so the product fits easily in a u128.
        let frac_bytes = (frac * u128::from(mult) + scale / 2) / scale;
        total += frac_bytes;
    }
    u64::try_from(total).map_err(|_| overflow())
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ByteSize, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"50MiB\" or a number of bytes")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| {
                    E::custom(format_args!(
                        "invalid size {v}: negative sizes are not allowed"
                    ))
                })
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }

        if deserializer.is_human_readable() {
            deserializer.deserialize_any(SizeVisitor)
        } else {
            deserializer.deserialize_u64(SizeVisitor)
        }
    }
}

/// A transfer rate in bytes per second, or no limit.
///
/// # Text form
///
/// `unlimited` (case-insensitive), or a [`ByteSize`] with an optional `/s` suffix:
/// `50MiB`, `50MiB/s`, `1.5GB/s`. `Display` prints `unlimited` or `<size>/s`, e.g. `50MiB/s`,
/// and parsing that text gives the same rate back. A rate of zero is refused: it would never
/// finish; pause the job instead.
///
/// ```
/// use ferry_types::Rate;
/// # fn main() -> Result<(), ferry_types::Error> {
/// let rate: Rate = "50MiB".parse()?;
/// assert_eq!(rate.as_bytes_per_sec(), Some(50 * 1024 * 1024));
/// assert_eq!(rate.to_string(), "50MiB/s");
/// assert!("unlimited".parse::<Rate>()?.is_unlimited());
/// assert!("0/s".parse::<Rate>().is_err());
/// # Ok(()) }
/// ```
///
/// # Serde
///
/// Human-readable formats write the text form and read the text form or an integer of bytes
/// per second; binary formats use a `u64`. In the integer forms `0` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Rate {
    /// No limit.
    #[default]
    Unlimited,
    /// At most this many bytes per second.
    Limited(NonZeroU64),
}

const ZERO_RATE: &str = "a rate of 0 would never finish; pause the job instead";

impl Rate {
    /// A limit of `n` bytes per second.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRate`] when `n` is 0: a rate of 0 would never finish (pause the job
    /// instead, or use [`Rate::Unlimited`] for no limit).
    pub fn bytes_per_sec(n: u64) -> Result<Rate> {
        NonZeroU64::new(n)
            .map(Rate::Limited)
            .ok_or_else(|| Error::InvalidRate {
                text: n.to_string(),
                reason: ZERO_RATE.into(),
            })
    }

    /// A limit of `size` per second.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRate`] when `size` is zero, as for [`Rate::bytes_per_sec`].
    pub fn per_sec(size: ByteSize) -> Result<Rate> {
        Rate::bytes_per_sec(size.0)
    }

    /// The limit in bytes per second, or `None` when unlimited.
    pub const fn as_bytes_per_sec(&self) -> Option<u64> {
        match self {
            Rate::Unlimited => None,
            Rate::Limited(n) => Some(n.get()),
        }
    }

    /// Whether there is no limit.
    pub const fn is_unlimited(&self) -> bool {
        matches!(self, Rate::Unlimited)
    }

    /// The tighter of two limits, e.g. a job's own rate and a global cap it shares.
    pub fn tighter(self, other: Rate) -> Rate {
        match (self, other) {
            (Rate::Unlimited, rate) | (rate, Rate::Unlimited) => rate,
            (Rate::Limited(a), Rate::Limited(b)) => Rate::Limited(a.min(b)),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Unlimited => f.pad("unlimited"),
            Rate::Limited(n) => f.pad(&format!("{}/s", ByteSize(n.get()))),
        }
    }
}

impl FromStr for Rate {
    type Err = Error;

    fn from_str(text: &str) -> Result<Rate> {
        let invalid = |reason: String| Error::InvalidRate {
            text: text.to_owned(),
            reason,
        };
        let s = text.trim();
        if s.eq_ignore_ascii_case("unlimited") {
            return Ok(Rate::Unlimited);
        }
        let size = match s.len().checked_sub(2).and_then(|at| s.get(at..)) {
            Some(suffix) if suffix.eq_ignore_ascii_case("/s") => &s[..s.len() - 2],
            _ => s,
        };
        let bytes = parse_bytes(size).map_err(invalid)?;
        NonZeroU64::new(bytes)
            .map(Rate::Limited)
            .ok_or_else(|| invalid(ZERO_RATE.into()))
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u64(self.as_bytes_per_sec().unwrap_or(0))
        }
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Rate, D::Error> {
        struct RateVisitor;

        impl Visitor<'_> for RateVisitor {
            type Value = Rate;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate such as \"50MiB/s\" or \"unlimited\", or bytes per second (0 = unlimited)")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Rate, E> {
                Ok(NonZeroU64::new(v).map_or(Rate::Unlimited, Rate::Limited))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Rate, E> {
                u64::try_from(v)
                    .map_err(|_| {
                        E::custom(format_args!(
                            "invalid rate {v}: negative rates are not allowed"
                        ))
                    })
                    .and_then(|v| self.visit_u64(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Rate, E> {
                v.parse().map_err(E::custom)
            }
        }

        if deserializer.is_human_readable() {
            deserializer.deserialize_any(RateVisitor)
        } else {
            deserializer.deserialize_u64(RateVisitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_documented_form() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("1024", 1024),
            ("512B", 512),
            ("512b", 512),
            ("50MiB", 50 << 20),
            ("50mib", 50 << 20),
            ("1.5GB", 1_500_000_000),
            ("4 KiB", 4096),
            ("4K", 4096),
            ("2M", 2 << 20),
            ("1G", 1 << 30),
            ("1T", 1 << 40),
            ("1P", 1 << 50),
            ("1KB", 1000),
            ("1TB", 1_000_000_000_000),
            ("3PB", 3_000_000_000_000_000),
            ("1.5KiB", 1536),
            ("0.5K", 512),
            ("0.0005KB", 1), // 0.5 bytes rounds half up
            ("0.0004KB", 0),
            ("18446744073709551615", u64::MAX),
            ("18446744073709551615B", u64::MAX),
        ];
        for &(text, want) in cases {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(want)), "{text}");
        }
    }

    #[test]
    fn invalid_sizes_are_rejected_with_the_text_in_the_message() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("-1", "negative"),
            ("1.5", "fraction"),
            ("1.5B", "fraction"),
            ("12XB", "unknown unit \"XB\""),
            ("99999999999999999999", "too large"),
            ("18446744073709551616", "too large"),
            ("16384PiB", "too large"),
            ("1.5GiB/", "unknown unit \"GiB/\""),
            ("MiB", "expected a number"),
            ("1.MiB", "digits after the decimal point"),
            ("1.0000000001KiB", "too many digits"),
            ("4  KiB", "unknown unit"),
            ("1e3", "unknown unit"),
            ("+5", "expected a number"),
        ];
        for &(text, reason_part) in cases {
            let err = text.parse::<ByteSize>().expect_err(text);
            let Error::InvalidSize { text: got, reason } = &err else {
                panic!("{text}: wrong variant {err:?}");
            };
            assert_eq!(got, text);
            assert!(reason.contains(reason_part), "{text}: {reason}");
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
        }
    }

    #[test]
    fn unknown_unit_message_lists_the_units() {
        let err = "50XB".parse::<ByteSize>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid size \"50XB\": unknown unit \"XB\" (use B, KB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB)"
        );
    }

    #[test]
    fn display_picks_the_largest_exact_unit() {
        let cases: &[(u64, &str)] = &[
            (0, "0B"),
            (1, "1B"),
            (1023, "1023B"),
            (1024, "1KiB"),
            (1000, "1KB"),
            (1_500_000, "1500KB"),
            (1_500_000_000, "1500MB"),
            (50 << 20, "50MiB"),
            (1536, "1536B"),
            (1 << 50, "1PiB"),
            (u64::MAX, "18446744073709551615B"),
        ];
        for &(n, want) in cases {
            assert_eq!(ByteSize(n).to_string(), want);
        }
        assert_eq!(format!("{:>6}", ByteSize::kib(1)), "  1KiB");
    }

    #[test]
    fn constructors_multiply_and_saturate() {
        assert_eq!(ByteSize::b(7).as_u64(), 7);
        assert_eq!(ByteSize::kib(2).as_u64(), 2048);
        assert_eq!(ByteSize::mib(1).as_u64(), 1 << 20);
        assert_eq!(ByteSize::gib(3).as_u64(), 3 << 30);
        assert_eq!(ByteSize::tib(1).as_u64(), 1 << 40);
        assert_eq!(ByteSize::gib(u64::MAX).as_u64(), u64::MAX);
    }

    #[test]
    fn rate_parses_with_and_without_per_second_suffix() {
        let limited = |n: u64| Rate::Limited(NonZeroU64::new(n).unwrap());
        assert_eq!("unlimited".parse::<Rate>(), Ok(Rate::Unlimited));
        assert_eq!("UNLIMITED".parse::<Rate>(), Ok(Rate::Unlimited));
        assert_eq!("50MiB".parse::<Rate>(), Ok(limited(50 << 20)));
        assert_eq!("50MiB/s".parse::<Rate>(), Ok(limited(50 << 20)));
        assert_eq!("1.5GB/s".parse::<Rate>(), Ok(limited(1_500_000_000)));
        assert_eq!("1.5GB/S".parse::<Rate>(), Ok(limited(1_500_000_000)));
        assert_eq!("100".parse::<Rate>(), Ok(limited(100)));
        assert_eq!(limited(50 << 20).to_string(), "50MiB/s");
        assert_eq!(Rate::Unlimited.to_string(), "unlimited");
        assert_eq!(Rate::default(), Rate::Unlimited);
    }

    #[test]
    fn invalid_rates_are_rejected_with_the_text_in_the_message() {
        for text in [
            "", "0", "0/s", "0MiB/s", "-1/s", "12XB/s", "1.5GiB/", "/s", "fast",
        ] {
            let err = text.parse::<Rate>().expect_err(text);
            assert!(matches!(err, Error::InvalidRate { .. }), "{text}: {err:?}");
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
        }
        let err = Rate::bytes_per_sec(0).unwrap_err();
        assert!(err.to_string().contains("pause the job instead"), "{err}");
        assert_eq!(Rate::bytes_per_sec(5).unwrap().as_bytes_per_sec(), Some(5));
        assert!(Rate::per_sec(ByteSize::ZERO).is_err());
    }

    #[test]
    fn tighter_rate_is_the_smaller_limit() {
        let ten = Rate::bytes_per_sec(10).unwrap();
        let five = Rate::bytes_per_sec(5).unwrap();
        assert_eq!(ten.tighter(five), five);
        assert_eq!(five.tighter(ten), five);
        assert_eq!(Rate::Unlimited.tighter(ten), ten);
        assert_eq!(ten.tighter(Rate::Unlimited), ten);
        assert_eq!(Rate::Unlimited.tighter(Rate::Unlimited), Rate::Unlimited);
    }

    #[test]
    fn serde_uses_text_for_json_and_integers_for_postcard() {
        let size = ByteSize::mib(50);
        assert_eq!(serde_json::to_string(&size).unwrap(), "\"50MiB\"");
        assert_eq!(serde_json::from_str::<ByteSize>("\"50MiB\"").unwrap(), size);
        assert_eq!(
            serde_json::from_str::<ByteSize>("1024").unwrap(),
            ByteSize::kib(1)
        );
        assert!(serde_json::from_str::<ByteSize>("-1").is_err());
        assert!(serde_json::from_str::<ByteSize>("\"12XB\"").is_err());
        let bytes = postcard::to_allocvec(&size).unwrap();
        assert_eq!(postcard::from_bytes::<ByteSize>(&bytes).unwrap(), size);
        assert_eq!(bytes, postcard::to_allocvec(&(50u64 << 20)).unwrap());

        let rate = Rate::bytes_per_sec(50 << 20).unwrap();
        assert_eq!(serde_json::to_string(&rate).unwrap(), "\"50MiB/s\"");
        assert_eq!(serde_json::from_str::<Rate>("\"50MiB/s\"").unwrap(), rate);
        assert_eq!(serde_json::from_str::<Rate>("52428800").unwrap(), rate);
        assert_eq!(serde_json::from_str::<Rate>("0").unwrap(), Rate::Unlimited);
        assert_eq!(
            serde_json::to_string(&Rate::Unlimited).unwrap(),
            "\"unlimited\""
        );
        for rate in [rate, Rate::Unlimited] {
            let bytes = postcard::to_allocvec(&rate).unwrap();
            assert_eq!(postcard::from_bytes::<Rate>(&bytes).unwrap(), rate);
        }
        assert_eq!(postcard::to_allocvec(&Rate::Unlimited).unwrap(), [0]);
    }

    fn any_size() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            (0u64..1 << 20, 0usize..DISPLAY_UNITS.len())
                .prop_map(|(n, unit)| n.saturating_mul(DISPLAY_UNITS[unit].1)),
        ]
    }

    proptest! {
        #[test]
        fn byte_size_parse_of_display_is_identity(n in any_size()) {
            let text = ByteSize(n).to_string();
            prop_assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(n)), "{}", text);
        }

        #[test]
        fn rate_parse_of_display_is_identity(n in any_size().prop_filter("nonzero", |n| *n != 0)) {
            let rate = Rate::bytes_per_sec(n).unwrap();
            let text = rate.to_string();
            prop_assert_eq!(text.parse::<Rate>(), Ok(rate), "{}", text);
        }

        #[test]
        fn byte_size_and_rate_survive_json_and_postcard(n in any_size()) {
            let size = ByteSize(n);
            let json = serde_json::to_string(&size).unwrap();
            prop_assert_eq!(serde_json::from_str::<ByteSize>(&json).unwrap(), size);
            let bin = postcard::to_allocvec(&size).unwrap();
            prop_assert_eq!(postcard::from_bytes::<ByteSize>(&bin).unwrap(), size);
            let rate = NonZeroU64::new(n).map_or(Rate::Unlimited, Rate::Limited);
            let json = serde_json::to_string(&rate).unwrap();
            prop_assert_eq!(serde_json::from_str::<Rate>(&json).unwrap(), rate);
            let bin = postcard::to_allocvec(&rate).unwrap();
            prop_assert_eq!(postcard::from_bytes::<Rate>(&bin).unwrap(), rate);
        }

        #[test]
        fn decimal_fractions_round_to_the_nearest_byte(whole in 0u64..1_000_000, frac in 0u32..1_000_000_000) {
            // x.yyyyyyyyy GB is exactly whole * 10^9 + frac bytes.
            let text = format!("{whole}.{frac:09}GB");
            prop_assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(whole * 1_000_000_000 + u64::from(frac))));
            // In KiB: round(frac * 1024 / 10^9), half up.
            let text = format!("{whole}.{frac:09}KiB");
            let want = whole * 1024 + (u64::from(frac) * 1024 + 500_000_000) / 1_000_000_000;
            prop_assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(want)));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in "\\PC{0,24}") {
            let _ = text.parse::<ByteSize>();
            let _ = text.parse::<Rate>();
        }
    }
}
