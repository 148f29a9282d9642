//! The adaptive rate: a job's bandwidth that follows the health of its target.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::{format_duration, serde_text};
use crate::error::{Error, Result};
use crate::size::{ByteSize, Rate};

/// How a job's rate follows its target's health (`--rate auto`): the rate grows while the
/// target answers quickly and without throttling errors, and shrinks when it does not.
///
/// The plan's [`rate`](crate::PlanOptions::rate) is then the ceiling the adaptive rate never
/// passes (unlimited: no ceiling). The controller itself (its window, its constants) is
/// `ferry_throttle::adaptive`.
///
/// ```
/// use std::time::Duration;
/// use ferry_types::{AdaptiveRate, MigrationPlan, NodeId, ObjectSelection};
/// # fn main() -> Result<(), ferry_types::Error> {
/// let plan = MigrationPlan::new(NodeId::new("a")?, NodeId::new("b")?, ObjectSelection::all())
///     .with_rate("200MiB/s".parse()?) // the ceiling
///     .with_adaptive_rate(AdaptiveRate {
///         max_latency: Duration::from_millis(100),
///         ..AdaptiveRate::default()
///     });
/// plan.validate()?;
/// assert_eq!(plan.options.rate_setting().to_string(), "auto:200MiB/s");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveRate {
    /// The target's operation latency (the 90th percentile over the last interval) above
    /// which the rate backs off (default [`AdaptiveRate::DEFAULT_MAX_LATENCY`], 250 ms).
    #[serde(with = "serde_text")]
    pub max_latency: Duration,
    /// The lowest rate, in bytes per second, the job backs off to: it never stops
    /// (default 1 MiB). Not zero; a floor above the ceiling counts as the ceiling.
    pub floor: ByteSize,
}

impl AdaptiveRate {
    /// The default [`max_latency`](AdaptiveRate::max_latency): 250 ms.
    ///
    /// Well above what a healthy store answers in (on the machines Ferry is measured on, a
    /// 1 MiB PUT has a p99 of 25–40 ms through S3 on loopback, a directory store a few ms;
    /// a cloud object store's p99 for one part is typically 100–200 ms), and well below the
    /// seconds an overloaded one takes (queued requests, 503s retried with backoff).
    pub const DEFAULT_MAX_LATENCY: Duration = Duration::from_millis(250);
    /// The default [`floor`](AdaptiveRate::floor): 1 MiB per second.
    pub const DEFAULT_FLOOR: ByteSize = ByteSize::mib(1);

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_latency.is_zero() {
            return Err(Error::InvalidPlan {
                field: "options.adaptive.max_latency",
                reason: "must not be zero: every operation would count as slow".into(),
            });
        }
        if self.floor.as_u64() == 0 {
            return Err(Error::InvalidPlan {
                field: "options.adaptive.floor",
                reason: "must be at least 1 byte per second: the job would stop".into(),
            });
        }
        Ok(())
    }
}

impl Default for AdaptiveRate {
    fn default() -> AdaptiveRate {
        AdaptiveRate {
            max_latency: AdaptiveRate::DEFAULT_MAX_LATENCY,
            floor: AdaptiveRate::DEFAULT_FLOOR,
        }
    }
}

/// A job's rate as users write it: a fixed [`Rate`], or `auto` with an optional ceiling.
///
/// Text form: `auto`, `auto:<rate>` (e.g. `auto:200MiB`), or a [`Rate`] (`50MiB`,
/// `unlimited`). `Display` prints the same forms, and parsing it gives the setting back.
///
/// ```
/// use ferry_types::{Rate, RateSetting};
/// # fn main() -> Result<(), ferry_types::Error> {
/// assert_eq!("auto".parse::<RateSetting>()?, RateSetting::Auto { ceiling: Rate::Unlimited });
/// assert_eq!(
///     "auto:200MiB".parse::<RateSetting>()?,
///     RateSetting::Auto { ceiling: "200MiB/s".parse()? }
/// );
/// assert_eq!("50MiB".parse::<RateSetting>()?, RateSetting::Fixed("50MiB/s".parse()?));
/// assert!("auto:0".parse::<RateSetting>().is_err());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateSetting {
    /// A fixed limit (or none).
    Fixed(Rate),
    /// The rate follows the target's health, never above `ceiling`.
    Auto {
        /// The highest rate (unlimited: no ceiling).
        ceiling: Rate,
    },
}

impl RateSetting {
    /// Whether the rate follows the target's health.
    pub const fn is_auto(&self) -> bool {
        matches!(self, RateSetting::Auto { .. })
    }

    /// The fixed rate, or the ceiling of an adaptive one: the plan's
    /// [`rate`](crate::PlanOptions::rate).
    pub const fn rate(&self) -> Rate {
        match *self {
            RateSetting::Fixed(rate) | RateSetting::Auto { ceiling: rate } => rate,
        }
    }
}

impl Default for RateSetting {
    fn default() -> RateSetting {
        RateSetting::Fixed(Rate::Unlimited)
    }
}

impl fmt::Display for RateSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateSetting::Fixed(rate) => fmt::Display::fmt(rate, f),
            RateSetting::Auto {
                ceiling: Rate::Unlimited,
            } => f.pad("auto"),
            RateSetting::Auto { ceiling } => f.pad(&format!("auto:{ceiling}")),
        }
    }
}

impl FromStr for RateSetting {
    type Err = Error;

    fn from_str(text: &str) -> Result<RateSetting> {
        let s = text.trim();
        let (head, ceiling) = match s.split_once(':') {
            Some((head, ceiling)) => (head.trim(), Some(ceiling)),
            None => (s, None),
        };
        if !head.eq_ignore_ascii_case("auto") {
            return s.parse().map(RateSetting::Fixed);
        }
        let ceiling = match ceiling {
            None => Rate::Unlimited,
            Some(ceiling) => ceiling.parse().map_err(|err| match err {
                Error::InvalidRate { reason, .. } => Error::InvalidRate {
                    text: text.to_owned(),
                    reason: format!("the ceiling after \"auto:\": {reason}"),
                },
                other => other,
            })?,
        };
        Ok(RateSetting::Auto { ceiling })
    }
}

/// The text form of an adaptive rate's options, for messages: `max latency 250ms, floor
/// 1MiB/s`.
impl fmt::Display for AdaptiveRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "max latency {}, floor {}/s",
            format_duration(self.max_latency),
            self.floor
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_settings_round_trip_through_their_text_form() {
        let cases = [
            ("auto", "auto"),
            ("AUTO", "auto"),
            ("auto:200MiB", "auto:200MiB/s"),
            ("auto: 1GiB/s", "auto:1GiB/s"),
            ("auto:unlimited", "auto"),
            ("50MiB", "50MiB/s"),
            ("unlimited", "unlimited"),
        ];
        for (text, shown) in cases {
            let setting: RateSetting = text.parse().unwrap();
            assert_eq!(setting.to_string(), shown, "{text}");
            assert_eq!(shown.parse::<RateSetting>().unwrap(), setting, "{text}");
        }
        assert!("auto".parse::<RateSetting>().unwrap().is_auto());
        assert!(!"1MiB".parse::<RateSetting>().unwrap().is_auto());
    }

    #[test]
    fn a_bad_ceiling_or_word_is_refused_quoting_the_input() {
        for bad in ["auto:0", "auto:", "auto:fast", "automatic", "0", "fast"] {
            let err = bad.parse::<RateSetting>().unwrap_err();
            assert!(matches!(err, Error::InvalidRate { .. }), "{bad}: {err:?}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn validate_refuses_a_zero_latency_and_a_zero_floor() {
        let ok = AdaptiveRate::default();
        ok.validate().unwrap();
        let cases = [
            (
                AdaptiveRate {
                    max_latency: Duration::ZERO,
                    ..ok
                },
                "options.adaptive.max_latency",
            ),
            (
                AdaptiveRate {
                    floor: ByteSize::ZERO,
                    ..ok
                },
                "options.adaptive.floor",
            ),
        ];
        for (adaptive, want) in cases {
            match adaptive.validate() {
                Err(Error::InvalidPlan { field, .. }) => assert_eq!(field, want),
                other => panic!("{want}: {other:?}"),
            }
        }
    }

    #[test]
    fn json_options_may_omit_fields_but_not_misspell_them() {
        let adaptive: AdaptiveRate = serde_json::from_str(r#"{"max_latency": "100ms"}"#).unwrap();
        assert_eq!(adaptive.max_latency, Duration::from_millis(100));
        assert_eq!(adaptive.floor, AdaptiveRate::DEFAULT_FLOOR);
        assert!(serde_json::from_str::<AdaptiveRate>(r#"{"max_latncy": "1s"}"#).is_err());
        let bin = postcard::to_allocvec(&adaptive).unwrap();
        assert_eq!(
            postcard::from_bytes::<AdaptiveRate>(&bin).unwrap(),
            adaptive
        );
    }
}
