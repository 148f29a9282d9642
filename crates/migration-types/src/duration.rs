//! Whole-number durations with a unit: `500ms`, `30s`, `5m`, `2h`, `1d`.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result, quote};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Units, largest first, with their length in nanoseconds.
const UNITS: &[(&str, u128)] = &[
    ("d", 86_400 * NANOS_PER_SEC),
    ("h", 3_600 * NANOS_PER_SEC),
    ("m", 60 * NANOS_PER_SEC),
    ("s", NANOS_PER_SEC),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

const UNIT_HINT: &str = "use ns, us, ms, s, m, h or d";

/// Parses a duration written as a whole number and a unit: `ns`, `us`, `ms`, `s`, `m`
/// (minutes), `h` or `d` (days), with an optional single space between them, e.g. `30s`,
/// `500ms`, `2 h`.
///
/// Fractions are not accepted (write `1500ms`, not `1.5s`), nor is a number without a unit.
/// [`format_duration`] prints the same form.
///
/// ```
/// use std::time::Duration;
/// # fn main() -> Result<(), ferry_types::Error> {
/// assert_eq!(ferry_types::parse_duration("30s")?, Duration::from_secs(30));
/// assert_eq!(ferry_types::parse_duration("2h")?, Duration::from_secs(7200));
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::InvalidDuration`], quoting the text, when it is empty, negative, has no digits, a
/// fraction, no or an unknown unit, or is longer than [`Duration::MAX`].
pub fn parse_duration(text: &str) -> Result<Duration> {
    parse_nanos(text).map_err(|reason| Error::InvalidDuration {
        text: text.to_owned(),
        reason,
    })
}

fn parse_nanos(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty; expected a whole number and a unit, e.g. 30s".into());
    }
    if s.starts_with('-') {
        return Err("negative durations are not allowed".into());
    }
    let digits_len = s.bytes().take_while(u8::is_ascii_digit).count();
    let (digits, rest) = s.split_at(digits_len);
    if digits.is_empty() {
        return Err("expected a whole number and a unit, e.g. 30s".into());
    }
    if rest.starts_with('.') {
        return Err("fractions are not supported; use a smaller unit, e.g. 1500ms".into());
    }
    let unit = rest.strip_prefix(' ').unwrap_or(rest);
    if unit.is_empty() {
        return Err(format!("missing unit ({UNIT_HINT})"));
    }
    let lower = unit.to_ascii_lowercase();
    let Some(&(_, unit_nanos)) = UNITS.iter().find(|(name, _)| *name == lower) else {
        return Err(format!("unknown unit {} ({UNIT_HINT})", quote(unit)));
    };
    let too_long = || "too long; the maximum is about 584 billion years".to_owned();
    let mut value: u128 = 0;
    for digit in digits.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(digit - b'0')))
            .ok_or_else(too_long)?;
    }
    let nanos = value.checked_mul(unit_nanos).ok_or_else(too_long)?;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| too_long())?;
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).map_err(|_| too_long())?;
    Ok(Duration::new(secs, subsec))
}

/// Formats a duration exactly, in the largest unit that divides it: `30s`, `5m`, `1500ms`,
/// `0s` for zero. [`parse_duration`] reads it back to the same value.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(ferry_types::format_duration(Duration::from_secs(90)).to_string(), "90s");
/// assert_eq!(ferry_types::format_duration(Duration::from_secs(120)).to_string(), "2m");
/// assert_eq!(ferry_types::format_duration(Duration::from_millis(1500)).to_string(), "1500ms");
/// ```
pub fn format_duration(duration: Duration) -> FormattedDuration {
    FormattedDuration(duration)
}

/// A [`Duration`] printed in the form [`parse_duration`] reads; made by [`format_duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormattedDuration(Duration);

impl fmt::Display for FormattedDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.pad("0s");
        }
        // The last unit, ns, divides everything.
        let (name, unit_nanos) = UNITS
            .iter()
            .find(|(_, unit_nanos)| nanos.is_multiple_of(*unit_nanos))
            .copied()
            .unwrap_or(("ns", 1));
        f.pad(&format!("{}{name}", nanos / unit_nanos))
    }
}

/// Serde for `Duration` fields: the text form in human-readable formats, serde's own
/// `{secs, nanos}` form in binary ones.
pub(crate) mod serde_text {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};
    use serde::{Deserialize, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(&super::format_duration(*d))
        } else {
            d.serialize(serializer)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        struct TextVisitor;

        impl Visitor<'_> for TextVisitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\" or \"500ms\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                super::parse_duration(v).map_err(E::custom)
            }
        }

        if deserializer.is_human_readable() {
            deserializer.deserialize_str(TextVisitor)
        } else {
            Duration::deserialize(deserializer)
        }
    }

    /// The same for `Option<Duration>`.
    pub(crate) mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        #[derive(Serialize, Deserialize)]
        struct Wrap(#[serde(with = "super")] Duration);

        pub(crate) fn serialize<S: Serializer>(
            d: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            d.map(Wrap).serialize(serializer)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            Ok(Option::<Wrap>::deserialize(deserializer)?.map(|Wrap(d)| d))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_unit() {
        let cases: &[(&str, Duration)] = &[
            ("0s", Duration::ZERO),
            ("0ms", Duration::ZERO),
            ("7ns", Duration::from_nanos(7)),
            ("7us", Duration::from_micros(7)),
            ("100ms", Duration::from_millis(100)),
            ("30s", Duration::from_secs(30)),
            ("30 s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("2h", Duration::from_secs(7200)),
            ("1d", Duration::from_secs(86_400)),
            ("1D", Duration::from_secs(86_400)),
            ("1500MS", Duration::from_millis(1500)),
        ];
        for &(text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn invalid_durations_are_rejected_with_the_text_in_the_message() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("-1s", "negative"),
            ("s", "whole number"),
            ("1.5s", "fractions"),
            ("30", "missing unit"),
            ("30x", "unknown unit \"x\""),
            ("30 ", "missing unit"),
            ("99999999999999999999999999999d", "too long"),
            ("18446744073709551616s", "too long"),
        ];
        for &(text, part) in cases {
            let err = parse_duration(text).expect_err(text);
            let Error::InvalidDuration { reason, .. } = &err else {
                panic!("{text}: wrong variant {err:?}");
            };
            assert!(reason.contains(part), "{text}: {reason}");
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
        }
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        let cases: &[(Duration, &str)] = &[
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(86_400 * 2), "2d"),
            (Duration::MAX, "18446744073709551615999999999ns"),
        ];
        for &(d, want) in cases {
            assert_eq!(format_duration(d).to_string(), want);
        }
    }

    proptest! {
        #[test]
        fn parse_of_format_is_identity(secs in any::<u64>(), nanos in 0u32..1_000_000_000, round in 0usize..4) {
            let d = match round {
                0 => Duration::new(secs, nanos),
                1 => Duration::from_secs(secs),
                2 => Duration::from_millis(secs % (1 << 40)),
                _ => Duration::from_secs((secs % (1 << 20)) * 60),
            };
            let text = format_duration(d).to_string();
            prop_assert_eq!(parse_duration(&text), Ok(d), "{}", text);
        }
    }
}
