//! What a migration should do: the plan and its options.

use std::collections::HashSet;
use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::time::Duration;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize, Serializer};

use crate::adaptive::{AdaptiveRate, RateSetting};
use crate::duration::{format_duration, parse_duration, serde_text};
use crate::error::{Error, Result, quote};
use crate::ids::{JobId, NodeId, ObjectKey, ValidatingVisitor};
use crate::size::{ByteSize, Rate};

/// How a copy is checked before the key is forwarded to the target.
///
/// Text form (and serde): `none`, `size` or `checksum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// Trust the copy. Fastest; only for stores that check content themselves.
    None,
    /// Compare the target's size with the source's.
    Size,
    /// Compare the checksum computed while streaming (and the size) with the target's and
    /// with the source's, both re-read: the copy is what the source holds, end to end. A
    /// store that reports the BLAKE3 of what it holds (`ObjectMeta::checksum`) is not read
    /// back: its report is compared instead.
    #[default]
    Checksum,
}

impl VerifyMode {
    /// The text form: `"none"`, `"size"` or `"checksum"`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            VerifyMode::None => "none",
            VerifyMode::Size => "size",
            VerifyMode::Checksum => "checksum",
        }
    }
}

impl fmt::Display for VerifyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for VerifyMode {
    type Err = Error;

    fn from_str(text: &str) -> Result<VerifyMode> {
        [VerifyMode::None, VerifyMode::Size, VerifyMode::Checksum]
            .into_iter()
            .find(|mode| text.trim().eq_ignore_ascii_case(mode.as_str()))
            .ok_or_else(|| Error::InvalidValue {
                what: "verify mode",
                text: text.to_owned(),
                expected: "none, size or checksum",
            })
    }
}

/// When the source copy of a migrated object is deleted.
///
/// Whatever the policy, the source is deleted only after the copy was verified, the key
/// forwarded and the commit hook called, and only if the source still holds the version
/// that was copied (SPEC I1, I2).
///
/// Text form: `never`, `after-verify` or `grace=<duration>` (e.g. `grace=30s`, see
/// [`parse_duration`]). Serde uses the text form in human-readable formats.
///
/// ```
/// use std::time::Duration;
/// use ferry_types::CleanupPolicy;
/// # fn main() -> Result<(), ferry_types::Error> {
/// assert_eq!("grace=5m".parse::<CleanupPolicy>()?, CleanupPolicy::AfterGrace(Duration::from_secs(300)));
/// assert_eq!(CleanupPolicy::AfterVerify.to_string(), "after-verify");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CleanupPolicy {
    /// Keep the source copy; the forwarding entry then stays until its TTL.
    #[default]
    Never,
    /// Delete the source as soon as the object is forwarded (and the commit hook returned).
    /// No grace period: reads that looked up the old route just before the flip must be
    /// drained by the storage system in its commit hook (see the engine's `CommitHook`).
    AfterVerify,
    /// Delete the source this long after the flip, so readers that looked up the old route
    /// just before it can still finish.
    AfterGrace(Duration),
}

impl fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CleanupPolicy::Never => f.pad("never"),
            CleanupPolicy::AfterVerify => f.pad("after-verify"),
            CleanupPolicy::AfterGrace(grace) => {
                f.pad(&format!("grace={}", format_duration(*grace)))
            }
        }
    }
}

impl FromStr for CleanupPolicy {
    type Err = Error;

    fn from_str(text: &str) -> Result<CleanupPolicy> {
        let s = text.trim();
        if s.eq_ignore_ascii_case("never") {
            return Ok(CleanupPolicy::Never);
        }
        if s.eq_ignore_ascii_case("after-verify") || s.eq_ignore_ascii_case("after_verify") {
            return Ok(CleanupPolicy::AfterVerify);
        }
        match s.split_once('=') {
            Some((key, grace)) if key.trim().eq_ignore_ascii_case("grace") => {
                parse_duration(grace).map(CleanupPolicy::AfterGrace)
            }
            _ => Err(Error::InvalidValue {
                what: "cleanup policy",
                text: text.to_owned(),
                expected: "never, after-verify or grace=<duration> (e.g. grace=30s)",
            }),
        }
    }
}

/// The binary serde form of [`CleanupPolicy`].
#[derive(Serialize, Deserialize)]
enum CleanupRepr {
    Never,
    AfterVerify,
    AfterGrace(Duration),
}

impl Serialize for CleanupPolicy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            match *self {
                CleanupPolicy::Never => CleanupRepr::Never,
                CleanupPolicy::AfterVerify => CleanupRepr::AfterVerify,
                CleanupPolicy::AfterGrace(grace) => CleanupRepr::AfterGrace(grace),
            }
            .serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for CleanupPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<CleanupPolicy, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(ValidatingVisitor::new(
                "a cleanup policy: never, after-verify or grace=<duration>",
                str::parse,
            ))
        } else {
            Ok(match CleanupRepr::deserialize(deserializer)? {
                CleanupRepr::Never => CleanupPolicy::Never,
                CleanupRepr::AfterVerify => CleanupPolicy::AfterVerify,
                CleanupRepr::AfterGrace(grace) => CleanupPolicy::AfterGrace(grace),
            })
        }
    }
}

/// How failed steps are retried: exponential backoff with optional full jitter.
///
/// `max_attempts` counts every attempt, the first included: with the default of 5 a step is
/// tried once and retried at most four times. Only transient errors are retried; permanent
/// ones mark the object failed at once.
///
/// ```
/// use std::time::Duration;
/// use ferry_types::RetryPolicy;
///
/// let retry = RetryPolicy { jitter: false, ..RetryPolicy::default() };
/// assert_eq!(retry.backoff(1, 0.0), Duration::from_millis(100));
/// assert_eq!(retry.backoff(3, 0.0), Duration::from_millis(400));
/// assert_eq!(retry.backoff(100, 0.0), Duration::from_secs(30)); // capped
/// assert!(retry.should_retry(4));
/// assert!(!retry.should_retry(5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (default 5). Must be at least 1.
    pub max_attempts: u32,
    /// Wait after the first failed attempt (default 100 ms).
    #[serde(with = "serde_text")]
    pub initial_backoff: Duration,
    /// Upper bound of any wait (default 30 s). Must not be below `initial_backoff`.
    #[serde(with = "serde_text")]
    pub max_backoff: Duration,
    /// Growth factor of the wait per attempt (default 2). Must be at least 1.
    pub multiplier: u32,
    /// Whether to spread waits with "full jitter" (default true): a uniformly random wait
    /// between zero and the exponential one, so many failing copies do not retry in step.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            multiplier: 2,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// How long to wait after attempt number `attempt` (1 for the first) failed.
    ///
    /// Without jitter that is `initial_backoff × multiplier^(attempt − 1)`, capped at
    /// `max_backoff`. With jitter it is that value scaled by `jitter_unit`, a uniformly random
    /// number in `[0, 1)` the caller draws (this crate has no random number generator, which
    /// also keeps the function pure and testable). `jitter_unit` is clamped to `[0, 1]`, and a
    /// NaN counts as 0. `attempt` 0 is treated as 1.
    ///
    /// Arithmetic saturates: this never panics and never exceeds `max_backoff`, for any
    /// `attempt` up to `u32::MAX`.
    pub fn backoff(&self, attempt: u32, jitter_unit: f64) -> Duration {
        let max = self.max_backoff.as_nanos();
        let exponent = attempt.saturating_sub(1);
        let capped = u128::from(self.multiplier)
            .checked_pow(exponent)
            .and_then(|factor| self.initial_backoff.as_nanos().checked_mul(factor))
            .map_or(max, |nanos| nanos.min(max));
        let nanos = if self.jitter {
            let unit = if jitter_unit.is_nan() {
                0.0
            } else {
                jitter_unit.clamp(0.0, 1.0)
            };
            // Float-to-int `as` saturates; the `min` keeps rounding from passing the cap.
            ((capped as f64 * unit) as u128).min(capped)
        } else {
            capped
        };
        nanos_to_duration(nanos)
    }

    /// Whether another attempt is allowed after `attempts_made` attempts failed.
    pub const fn should_retry(&self, attempts_made: u32) -> bool {
        attempts_made < self.max_attempts
    }

    fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(plan_error(
                "options.retry.max_attempts",
                "must be at least 1 (the first attempt counts)",
            ));
        }
        if self.multiplier == 0 {
            return Err(plan_error(
                "options.retry.multiplier",
                "must be at least 1 (1 waits the same time before every retry)",
            ));
        }
        if self.max_backoff < self.initial_backoff {
            return Err(plan_error(
                "options.retry.max_backoff",
                format!(
                    "{} is below initial_backoff {}",
                    format_duration(self.max_backoff),
                    format_duration(self.initial_backoff)
                ),
            ));
        }
        Ok(())
    }
}

/// Converts nanoseconds to a `Duration`, saturating at [`Duration::MAX`].
fn nanos_to_duration(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    match u64::try_from(nanos / NANOS_PER_SEC) {
        // The remainder is below 10^9, so it fits in a u32.
        Ok(secs) => Duration::new(secs, (nanos % NANOS_PER_SEC) as u32),
        Err(_) => Duration::MAX,
    }
}

/// How often progress is saved: after `objects` finished objects or `every` time,
/// whichever comes first (and always at pause, cancel and finish).
///
/// After a crash, resume re-does at most the objects in flight plus one interval (SPEC I4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointInterval {
    /// Save after this many finished objects (default 1000). Must be at least 1; 1 saves
    /// after every object.
    pub objects: u64,
    /// Save at least this often while objects finish (default 1 s). Must not be zero.
    #[serde(with = "serde_text")]
    pub every: Duration,
}

impl Default for CheckpointInterval {
    fn default() -> CheckpointInterval {
        CheckpointInterval {
            objects: 1000,
            every: Duration::from_secs(1),
        }
    }
}

/// Which objects a plan moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectSelection {
    /// Exactly these keys, each at most once.
    Keys(Vec<ObjectKey>),
    /// Every key that starts with this prefix, listed lazily from the source in key order.
    /// The empty prefix selects everything.
    Prefix(String),
    // Appended last: records are postcard-encoded by variant index.
    /// Every key that starts with `prefix` and lies in `(after, until]`, listed lazily from the
    /// source in key order: one worker's share of a job split by key range.
    Range(KeyRange),
}

/// A key range of [`ObjectSelection::Range`]: the keys that start with `prefix` and lie in
/// `(after, until]`, in key order (the byte order of the keys, as stores list them).
///
/// Ranges that share a prefix and meet at their bounds, such as `(None, k3]`, `(k3, k6]` and
/// `(k6, None]`, split a prefix into disjoint shares that together cover it.
///
/// ```
/// use ferry_types::{KeyRange, ObjectKey};
/// # fn main() -> Result<(), ferry_types::Error> {
/// let range = KeyRange {
///     prefix: "logs/".into(),
///     after: Some(ObjectKey::new("logs/b")?),
///     until: Some(ObjectKey::new("logs/d")?),
/// };
/// assert!(!range.contains(&ObjectKey::new("logs/b")?)); // `after` is excluded
/// assert!(range.contains(&ObjectKey::new("logs/c")?));
/// assert!(range.contains(&ObjectKey::new("logs/d")?)); // `until` is included
/// assert!(!range.contains(&ObjectKey::new("other/c")?));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRange {
    /// Only keys that start with this prefix (the empty prefix: every key).
    pub prefix: String,
    /// Exclusive lower bound; `None` starts at the first key of the prefix.
    pub after: Option<ObjectKey>,
    /// Inclusive upper bound; `None` runs to the last key of the prefix.
    pub until: Option<ObjectKey>,
}

impl KeyRange {
    /// Whether `key` starts with the prefix, comes after `after` and not after `until`.
    pub fn contains(&self, key: &ObjectKey) -> bool {
        key.as_str().starts_with(self.prefix.as_str())
            && self.after.as_ref().is_none_or(|after| key > after)
            && self.until.as_ref().is_none_or(|until| key <= until)
    }

    fn validate(&self) -> Result<()> {
        validate_prefix(&self.prefix)?;
        for (field, bound) in [
            ("objects.range.after", &self.after),
            ("objects.range.until", &self.until),
        ] {
            if let Some(bound) = bound
                && !bound.as_str().starts_with(self.prefix.as_str())
            {
                return Err(plan_error(
                    field,
                    format!(
                        "key {} does not start with the prefix {}",
                        quote(bound.as_str()),
                        quote(&self.prefix)
                    ),
                ));
            }
        }
        if let (Some(after), Some(until)) = (&self.after, &self.until)
            && after >= until
        {
            return Err(plan_error(
                "objects.range.until",
                format!(
                    "{} is not after {}: the range (after, until] is empty",
                    quote(until.as_str()),
                    quote(after.as_str())
                ),
            ));
        }
        Ok(())
    }
}

fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.len() > ObjectKey::MAX_LEN {
        return Err(plan_error("objects", "prefix is longer than 1024 bytes"));
    }
    if prefix.contains('\0') {
        return Err(plan_error("objects", "prefix contains a NUL byte"));
    }
    Ok(())
}

impl ObjectSelection {
    /// Every object on the source: the empty prefix.
    pub fn all() -> ObjectSelection {
        ObjectSelection::Prefix(String::new())
    }

    /// Every object whose key starts with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> ObjectSelection {
        ObjectSelection::Prefix(prefix.into())
    }

    /// Exactly these keys.
    pub fn keys(keys: impl IntoIterator<Item = ObjectKey>) -> ObjectSelection {
        ObjectSelection::Keys(keys.into_iter().collect())
    }

    /// Every key that starts with `prefix` and lies in `(after, until]`: see [`KeyRange`].
    pub fn range(
        prefix: impl Into<String>,
        after: Option<ObjectKey>,
        until: Option<ObjectKey>,
    ) -> ObjectSelection {
        ObjectSelection::Range(KeyRange {
            prefix: prefix.into(),
            after,
            until,
        })
    }

    fn validate(&self) -> Result<()> {
        match self {
            ObjectSelection::Keys(keys) => {
                let mut seen = HashSet::with_capacity(keys.len());
                for key in keys {
                    if !seen.insert(key.as_str()) {
                        return Err(plan_error(
                            "objects",
                            format!("key {} is listed twice", quote(key.as_str())),
                        ));
                    }
                }
            }
            ObjectSelection::Prefix(prefix) => validate_prefix(prefix)?,
            ObjectSelection::Range(range) => range.validate()?,
        }
        Ok(())
    }
}

/// Tunables of a migration; every field has a default suited to most jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanOptions {
    /// How copies are checked (default [`VerifyMode::Checksum`]).
    pub verify: VerifyMode,
    /// When source copies are deleted (default [`CleanupPolicy::Never`]).
    pub cleanup: CleanupPolicy,
    /// Objects copied at the same time (default 16).
    pub concurrency: NonZeroUsize,
    /// Bandwidth limit of this job (default unlimited); with [`adaptive`](Self::adaptive),
    /// the ceiling of the adaptive rate.
    pub rate: Rate,
    /// How many bytes may pass at once, at the start, after a pause or after a recovery
    /// (default `None`: the throttle's default, bounded by the rate; see
    /// `ferry_throttle::Builder::burst`). Not zero.
    ///
    /// Checkpoint records carry it from format 6 on; a record of an older format loads with
    /// `None`.
    pub burst: Option<ByteSize>,
    /// Bytes read and written at a time (default 1 MiB); memory use is about
    /// `concurrency × chunk_size`, whatever the object sizes (SPEC I7).
    pub chunk_size: ByteSize,
    /// How failed steps are retried.
    pub retry: RetryPolicy,
    /// How often progress is saved.
    pub checkpoint: CheckpointInterval,
    /// Refused flips (a write raced the copy) before the key is fenced (default 3, SPEC I3).
    pub max_flip_attempts: u32,
    /// The longest the engine holds a hot key's fence (its fenced copy, target sync and
    /// flip; default 5 s). Past it the fence is lifted, writers go on to the source, and the
    /// object fails with a hot-key error, its source kept. Keep it at most the forwarding
    /// table's own fence timeout, which is how long a writer waits on a fence.
    #[serde(with = "serde_text")]
    pub fence_timeout: Duration,
    /// How many times an object is copied again because its source changed after its copy
    /// (a write that did not go through the forwarding table: another program writing the
    /// source directly) before the job gives up on it (default 3). The object is then
    /// recorded failed with [`FailureKind::SourceChanged`](crate::FailureKind::SourceChanged),
    /// its source kept; a `retry_failed` run moves it once the writers have stopped. `0`
    /// never copies again: the first change is recorded.
    ///
    /// Checkpoint records carry it from format 7 on; a record of an older format loads with
    /// the default.
    pub max_changes: u32,
    /// `Some`: the rate follows the target's health (`--rate auto`), between the adaptive
    /// rate's floor and [`rate`](Self::rate), its ceiling; `None` (the default): the rate is
    /// fixed at `rate`.
    ///
    /// Checkpoint records carry it from format 8 on; a record of an older format loads with
    /// `None`.
    pub adaptive: Option<AdaptiveRate>,
}

impl Default for PlanOptions {
    fn default() -> PlanOptions {
        PlanOptions {
            verify: VerifyMode::default(),
            cleanup: CleanupPolicy::default(),
            concurrency: NonZeroUsize::new(16).unwrap_or(NonZeroUsize::MIN),
            rate: Rate::Unlimited,
            burst: None,
            chunk_size: ByteSize::mib(1),
            retry: RetryPolicy::default(),
            checkpoint: CheckpointInterval::default(),
            max_flip_attempts: 3,
            fence_timeout: Duration::from_secs(5),
            max_changes: 3,
            adaptive: None,
        }
    }
}

impl PlanOptions {
    /// The rate as users write it: fixed, or `auto` with the rate as its ceiling.
    pub fn rate_setting(&self) -> RateSetting {
        match self.adaptive {
            Some(_) => RateSetting::Auto { ceiling: self.rate },
            None => RateSetting::Fixed(self.rate),
        }
    }

    /// Applies a rate setting: a fixed rate drops the adaptive options, `auto` keeps them
    /// (or takes the defaults) with its ceiling as the rate.
    pub fn set_rate_setting(&mut self, setting: RateSetting) {
        self.rate = setting.rate();
        self.adaptive = match setting {
            RateSetting::Fixed(_) => None,
            RateSetting::Auto { .. } => Some(self.adaptive.unwrap_or_default()),
        };
    }

    fn validate(&self) -> Result<()> {
        if self.burst.is_some_and(|burst| burst.as_u64() == 0) {
            return Err(plan_error(
                "options.burst",
                "must be at least 1 byte (leave it unset for the default)",
            ));
        }
        if self.chunk_size.as_u64() == 0 {
            return Err(plan_error("options.chunk_size", "must be at least 1 byte"));
        }
        if usize::try_from(self.chunk_size.as_u64()).is_err() {
            return Err(plan_error(
                "options.chunk_size",
                format!(
                    "{} does not fit in memory on this platform",
                    self.chunk_size
                ),
            ));
        }
        self.retry.validate()?;
        if self.checkpoint.objects == 0 {
            return Err(plan_error(
                "options.checkpoint.objects",
                "must be at least 1 (1 saves after every object)",
            ));
        }
        if self.checkpoint.every.is_zero() {
            return Err(plan_error("options.checkpoint.every", "must not be zero"));
        }
        if self.max_flip_attempts == 0 {
            return Err(plan_error(
                "options.max_flip_attempts",
                "must be at least 1 (the first flip counts)",
            ));
        }
        if self.fence_timeout.is_zero() {
            return Err(plan_error(
                "options.fence_timeout",
                "must not be zero: writers to a fenced key would fail at once",
            ));
        }
        if let Some(adaptive) = &self.adaptive {
            adaptive.validate()?;
        }
        Ok(())
    }
}

/// What a migration job should do: move `objects` from `source` to `target` with `options`.
///
/// Build it with [`MigrationPlan::new`] and the `with_*` methods, then call
/// [`MigrationPlan::validate`] (the engine does too before it starts a job).
///
/// ```
/// use ferry_types::{CleanupPolicy, MigrationPlan, NodeId, ObjectSelection, VerifyMode};
/// # fn main() -> Result<(), ferry_types::Error> {
/// let plan = MigrationPlan::new(NodeId::new("a")?, NodeId::new("b")?, ObjectSelection::all())
///     .with_verify(VerifyMode::Size)
///     .with_cleanup(CleanupPolicy::AfterVerify)
///     .with_rate("20MiB/s".parse()?);
/// plan.validate()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationPlan {
    /// The job's id; `None` lets the engine choose one. Starting a plan with the id of an
    /// unfinished job resumes that job.
    #[serde(default)]
    pub id: Option<JobId>,
    /// The node objects are moved from.
    pub source: NodeId,
    /// The node objects are moved to.
    pub target: NodeId,
    /// Which objects move.
    pub objects: ObjectSelection,
    /// Tunables.
    #[serde(default)]
    pub options: PlanOptions,
    /// What the job does with the objects: move them (the default), or only compare the
    /// two sides. Checkpoint records carry it from format 7 on; older ones load as
    /// [`JobKind::Migrate`].
    #[serde(default)]
    pub kind: JobKind,
}

/// What a job does with its objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobKind {
    /// COPY → VERIFY → FORWARD → CLEANUP: the objects move from source to target.
    #[default]
    Migrate,
    /// Compare only: each key of the selection is looked up on both sides and its size and
    /// content compared; nothing is written, forwarded or deleted. Differences are recorded
    /// as the job's failed objects, with the kinds
    /// [`FailureKind::MissingOnTarget`](crate::FailureKind::MissingOnTarget),
    /// [`FailureKind::ExtraOnTarget`](crate::FailureKind::ExtraOnTarget) and
    /// [`FailureKind::Differs`](crate::FailureKind::Differs).
    Check,
}

impl MigrationPlan {
    /// A plan with default options and no id.
    pub fn new(source: NodeId, target: NodeId, objects: ObjectSelection) -> MigrationPlan {
        MigrationPlan {
            id: None,
            source,
            target,
            objects,
            options: PlanOptions::default(),
            kind: JobKind::Migrate,
        }
    }

    /// Sets the job id.
    #[must_use]
    pub fn with_id(mut self, id: JobId) -> MigrationPlan {
        self.id = Some(id);
        self
    }

    /// Replaces all options.
    #[must_use]
    pub fn with_options(mut self, options: PlanOptions) -> MigrationPlan {
        self.options = options;
        self
    }

    /// Sets the verify mode.
    #[must_use]
    pub fn with_verify(mut self, verify: VerifyMode) -> MigrationPlan {
        self.options.verify = verify;
        self
    }

    /// Sets the cleanup policy.
    #[must_use]
    pub fn with_cleanup(mut self, cleanup: CleanupPolicy) -> MigrationPlan {
        self.options.cleanup = cleanup;
        self
    }

    /// Sets how many objects are copied at the same time.
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: NonZeroUsize) -> MigrationPlan {
        self.options.concurrency = concurrency;
        self
    }

    /// Sets the job's bandwidth limit.
    #[must_use]
    pub fn with_rate(mut self, rate: Rate) -> MigrationPlan {
        self.options.rate = rate;
        self
    }

    /// Makes the rate follow the target's health, with the plan's rate as its ceiling (see
    /// [`PlanOptions::adaptive`]).
    #[must_use]
    pub fn with_adaptive_rate(mut self, adaptive: AdaptiveRate) -> MigrationPlan {
        self.options.adaptive = Some(adaptive);
        self
    }

    /// Sets the burst: how many bytes may pass the job's throttle at once (see
    /// [`PlanOptions::burst`]).
    #[must_use]
    pub fn with_burst(mut self, burst: ByteSize) -> MigrationPlan {
        self.options.burst = Some(burst);
        self
    }

    /// Sets the chunk size.
    #[must_use]
    pub fn with_chunk_size(mut self, chunk_size: ByteSize) -> MigrationPlan {
        self.options.chunk_size = chunk_size;
        self
    }

    /// Sets the retry policy.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> MigrationPlan {
        self.options.retry = retry;
        self
    }

    /// Sets the checkpoint interval.
    #[must_use]
    pub fn with_checkpoint(mut self, checkpoint: CheckpointInterval) -> MigrationPlan {
        self.options.checkpoint = checkpoint;
        self
    }

    /// Sets how many flips may be refused before the key is fenced.
    #[must_use]
    pub fn with_max_flip_attempts(mut self, attempts: u32) -> MigrationPlan {
        self.options.max_flip_attempts = attempts;
        self
    }

    /// Sets how long writers wait on a fenced key.
    #[must_use]
    pub fn with_fence_timeout(mut self, timeout: Duration) -> MigrationPlan {
        self.options.fence_timeout = timeout;
        self
    }

    /// Sets how many times an object whose source changed after its copy is copied again
    /// (see [`PlanOptions::max_changes`]).
    #[must_use]
    pub fn with_max_changes(mut self, changes: u32) -> MigrationPlan {
        self.options.max_changes = changes;
        self
    }

    /// Sets what the job does (see [`JobKind`]).
    #[must_use]
    pub fn with_kind(mut self, kind: JobKind) -> MigrationPlan {
        self.kind = kind;
        self
    }

    /// Checks that the plan is consistent.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPlan`] naming the first offending field: `target` equal to `source`;
    /// `objects` listing a key twice, or a prefix that is too long or holds a NUL byte;
    /// `objects.range.after` or `objects.range.until` not starting with the range's prefix;
    /// `objects.range.until` not after `objects.range.after`; a
    /// zero `options.burst`, `options.chunk_size`, `options.max_flip_attempts`, `options.fence_timeout`,
    /// `options.checkpoint.objects`, `options.checkpoint.every`,
    /// `options.retry.max_attempts` or `options.retry.multiplier`; or
    /// `options.retry.max_backoff` below `initial_backoff`; a check job
    /// ([`JobKind::Check`]) with a cleanup policy other than `never`; an adaptive rate with a
    /// zero `options.adaptive.max_latency` or `options.adaptive.floor`.
    pub fn validate(&self) -> Result<()> {
        if self.source == self.target {
            return Err(plan_error(
                "target",
                format!(
                    "source and target are the same node {}",
                    quote(self.source.as_str())
                ),
            ));
        }
        self.objects.validate()?;
        if self.kind == JobKind::Check && self.options.cleanup != CleanupPolicy::Never {
            return Err(plan_error(
                "options.cleanup",
                "a check job deletes nothing: leave the cleanup policy at `never`",
            ));
        }
        self.options.validate()
    }
}

fn plan_error(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidPlan {
        field,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    fn full_plan() -> MigrationPlan {
        MigrationPlan::new(
            node("disk-a"),
            node("10.0.0.2:9000"),
            ObjectSelection::keys([
                ObjectKey::new("a/1").unwrap(),
                ObjectKey::new("b/ü 2").unwrap(),
            ]),
        )
        .with_id(JobId::new("job-7").unwrap())
        .with_verify(VerifyMode::Size)
        .with_cleanup(CleanupPolicy::AfterGrace(Duration::from_millis(1500)))
        .with_concurrency(NonZeroUsize::new(4).unwrap())
        .with_rate(Rate::bytes_per_sec(50 << 20).unwrap())
        .with_chunk_size(ByteSize::kib(256))
        .with_retry(RetryPolicy {
            max_attempts: 7,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(10),
            multiplier: 3,
            jitter: false,
        })
        .with_checkpoint(CheckpointInterval {
            objects: 10,
            every: Duration::from_millis(250),
        })
        .with_max_flip_attempts(5)
        .with_fence_timeout(Duration::from_secs(2))
    }

    #[test]
    fn defaults_match_the_spec() {
        let options = PlanOptions::default();
        assert_eq!(options.verify, VerifyMode::Checksum);
        assert_eq!(options.cleanup, CleanupPolicy::Never);
        assert_eq!(options.concurrency.get(), 16);
        assert_eq!(options.rate, Rate::Unlimited);
        assert_eq!(options.chunk_size, ByteSize::mib(1));
        assert_eq!(options.max_flip_attempts, 3);
        assert_eq!(options.fence_timeout, Duration::from_secs(5));
        assert_eq!(options.checkpoint.objects, 1000);
        assert_eq!(options.checkpoint.every, Duration::from_secs(1));
        let retry = options.retry;
        assert_eq!(
            (retry.max_attempts, retry.multiplier, retry.jitter),
            (5, 2, true)
        );
        assert_eq!(retry.initial_backoff, Duration::from_millis(100));
        assert_eq!(retry.max_backoff, Duration::from_secs(30));
    }

    #[test]
    fn full_plan_round_trips_through_json_and_postcard() {
        let plan = full_plan();
        plan.validate().unwrap();
        let json = serde_json::to_string_pretty(&plan).unwrap();
        for part in [
            "\"grace=1500ms\"",
            "\"50MiB/s\"",
            "\"256KiB\"",
            "\"size\"",
            "\"2s\"",
        ] {
            assert!(json.contains(part), "{part} missing from {json}");
        }
        assert_eq!(serde_json::from_str::<MigrationPlan>(&json).unwrap(), plan);
        let bin = postcard::to_allocvec(&plan).unwrap();
        assert_eq!(postcard::from_bytes::<MigrationPlan>(&bin).unwrap(), plan);

        let default_plan = MigrationPlan::new(node("a"), node("b"), ObjectSelection::all());
        let bin = postcard::to_allocvec(&default_plan).unwrap();
        assert_eq!(
            postcard::from_bytes::<MigrationPlan>(&bin).unwrap(),
            default_plan
        );
    }

    #[test]
    fn burst_round_trips_through_json_and_the_binary_encoding() {
        let plan = full_plan();
        let with_burst = plan.clone().with_burst(ByteSize::kib(64));
        with_burst.validate().unwrap();
        // JSON plans carry it as text or null, and may leave it out.
        let json = serde_json::to_string(&with_burst).unwrap();
        assert!(json.contains(r#""burst":"64KiB""#), "{json}");
        assert_eq!(
            serde_json::from_str::<MigrationPlan>(&json).unwrap(),
            with_burst
        );
        let json = serde_json::to_string(&plan).unwrap();
        assert!(json.contains(r#""burst":null"#), "{json}");
        let mut value = serde_json::to_value(&plan).unwrap();
        value["options"].as_object_mut().unwrap().remove("burst");
        assert_eq!(
            serde_json::from_value::<MigrationPlan>(value).unwrap(),
            plan
        );
        // Checkpoint records (postcard, format 6 on) carry it too, set or not.
        for plan in [&with_burst, &plan] {
            let bin = postcard::to_allocvec(plan).unwrap();
            assert_eq!(&postcard::from_bytes::<MigrationPlan>(&bin).unwrap(), plan);
        }
        assert_ne!(
            postcard::to_allocvec(&with_burst).unwrap(),
            postcard::to_allocvec(&plan).unwrap()
        );
    }

    #[test]
    fn json_plan_may_omit_options_but_not_misspell_them() {
        let plan: MigrationPlan = serde_json::from_str(
            r#"{"source": "a", "target": "b", "objects": {"prefix": "logs/"},
                "options": {"rate": "10MiB/s", "retry": {"max_attempts": 2}}}"#,
        )
        .unwrap();
        assert_eq!(plan.objects, ObjectSelection::prefix("logs/"));
        assert_eq!(plan.options.rate, "10MiB".parse().unwrap());
        assert_eq!(plan.options.retry.max_attempts, 2);
        assert_eq!(plan.options.retry.multiplier, 2);
        assert_eq!(plan.options.concurrency.get(), 16);
        assert_eq!(plan.id, None);

        let err = serde_json::from_str::<MigrationPlan>(
            r#"{"source": "a", "target": "b", "objects": {"prefix": ""},
                "options": {"concurrancy": 4}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("concurrancy"), "{err}");
        let err = serde_json::from_str::<MigrationPlan>(
            r#"{"source": "a", "target": "b", "objects": {"prefix": ""},
                "options": {"concurrency": 0}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("nonzero"), "{err}");
    }

    #[test]
    fn validate_names_the_offending_field() {
        let base = || MigrationPlan::new(node("a"), node("b"), ObjectSelection::all());
        let key = || ObjectKey::new("k").unwrap();
        let cases: Vec<(MigrationPlan, &str)> = vec![
            (
                MigrationPlan::new(node("a"), node("a"), ObjectSelection::all()),
                "target",
            ),
            (base().with_chunk_size(ByteSize::ZERO), "options.chunk_size"),
            (base().with_burst(ByteSize::ZERO), "options.burst"),
            (
                base().with_max_flip_attempts(0),
                "options.max_flip_attempts",
            ),
            (
                base().with_fence_timeout(Duration::ZERO),
                "options.fence_timeout",
            ),
            (
                base().with_retry(RetryPolicy {
                    max_attempts: 0,
                    ..RetryPolicy::default()
                }),
                "options.retry.max_attempts",
            ),
            (
                base().with_retry(RetryPolicy {
                    multiplier: 0,
                    ..RetryPolicy::default()
                }),
                "options.retry.multiplier",
            ),
            (
                base().with_retry(RetryPolicy {
                    max_backoff: Duration::from_millis(10),
                    ..RetryPolicy::default()
                }),
                "options.retry.max_backoff",
            ),
            (
                base().with_checkpoint(CheckpointInterval {
                    objects: 0,
                    ..CheckpointInterval::default()
                }),
                "options.checkpoint.objects",
            ),
            (
                base().with_checkpoint(CheckpointInterval {
                    every: Duration::ZERO,
                    ..CheckpointInterval::default()
                }),
                "options.checkpoint.every",
            ),
            (
                MigrationPlan::new(node("a"), node("b"), ObjectSelection::keys([key(), key()])),
                "objects",
            ),
            (
                MigrationPlan::new(node("a"), node("b"), ObjectSelection::prefix("a\0")),
                "objects",
            ),
        ];
        for (plan, want) in cases {
            match plan.validate() {
                Err(Error::InvalidPlan { field, reason }) => {
                    assert_eq!(field, want, "{reason}");
                    assert!(!reason.is_empty());
                }
                other => panic!("{want}: expected InvalidPlan, got {other:?}"),
            }
        }
        assert!(base().validate().is_ok());
        let err = MigrationPlan::new(node("a"), node("a"), ObjectSelection::all())
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid plan: target: source and target are the same node \"a\""
        );
    }

    fn k(key: &str) -> ObjectKey {
        ObjectKey::new(key).unwrap()
    }

    #[test]
    fn range_validate_checks_the_prefix_and_the_bounds() {
        let range = |prefix: &str, after: Option<&str>, until: Option<&str>| {
            MigrationPlan::new(
                node("a"),
                node("b"),
                ObjectSelection::range(prefix, after.map(k), until.map(k)),
            )
            .validate()
        };
        for ok in [
            range("", None, None),
            range("p/", None, None),
            range("p/", Some("p/3"), None),
            range("p/", None, Some("p/3")),
            range("p/", Some("p/3"), Some("p/6")),
            range("", Some("a"), Some("b")),
        ] {
            ok.unwrap();
        }
        let cases: Vec<(Result<()>, &str, &[&str])> = vec![
            (
                range(&"p".repeat(1025), None, None),
                "objects",
                &["longer than 1024 bytes"],
            ),
            (range("p\0", None, None), "objects", &["NUL"]),
            (
                range("p/", Some("q/1"), None),
                "objects.range.after",
                &["\"q/1\"", "\"p/\""],
            ),
            (
                range("p/", None, Some("p")),
                "objects.range.until",
                &["\"p\"", "\"p/\""],
            ),
            (
                range("p/", Some("p/6"), Some("p/3")),
                "objects.range.until",
                &["\"p/3\"", "\"p/6\""],
            ),
            (
                range("p/", Some("p/3"), Some("p/3")),
                "objects.range.until",
                &["\"p/3\" is not after \"p/3\""],
            ),
        ];
        for (result, want_field, want_parts) in cases {
            match result {
                Err(Error::InvalidPlan { field, reason }) => {
                    assert_eq!(field, want_field, "{reason}");
                    for part in want_parts {
                        assert!(reason.contains(part), "{part} missing from {reason}");
                    }
                }
                other => panic!("{want_field}: expected InvalidPlan, got {other:?}"),
            }
        }
    }

    #[test]
    fn range_contains_excludes_after_and_includes_until() {
        let bounded = KeyRange {
            prefix: "p/".into(),
            after: Some(k("p/3")),
            until: Some(k("p/6")),
        };
        let table = [
            ("p/2", false),
            ("p/3", false), // `after` itself is excluded
            ("p/30", true), // after "p/3" in byte order
            ("p/4", true),
            ("p/6", true), // `until` itself is included
            ("p/60", false),
            ("p/7", false),
            ("q/4", false),
            ("p", false),
        ];
        for (key, want) in table {
            assert_eq!(bounded.contains(&k(key)), want, "{key}");
        }
        let open = KeyRange {
            prefix: "p/".into(),
            after: None,
            until: None,
        };
        assert!(open.contains(&k("p/")));
        assert!(open.contains(&k("p/zzz")));
        assert!(!open.contains(&k("o/zzz")));
        let from = KeyRange {
            after: Some(k("p/3")),
            ..open.clone()
        };
        assert!(!from.contains(&k("p/3")) && from.contains(&k("p/zzz")));
        let to = KeyRange {
            until: Some(k("p/3")),
            ..open
        };
        assert!(to.contains(&k("p/")) && to.contains(&k("p/3")) && !to.contains(&k("p/31")));
    }

    #[test]
    fn range_variant_leaves_the_encoding_of_the_others_unchanged() {
        // Records are postcard-encoded by variant index: Keys is 0 and Prefix 1, as before
        // Range was appended.
        let prefix = postcard::to_allocvec(&ObjectSelection::prefix("ab")).unwrap();
        assert_eq!(prefix, [1, 2, b'a', b'b']);
        let keys = postcard::to_allocvec(&ObjectSelection::keys([k("ab")])).unwrap();
        assert_eq!(keys, [0, 1, 2, b'a', b'b']);
        let all = postcard::to_allocvec(&ObjectSelection::all()).unwrap();
        assert_eq!(
            postcard::from_bytes::<ObjectSelection>(&all).unwrap(),
            ObjectSelection::all()
        );

        let range = ObjectSelection::range("p/", Some(k("p/3")), None);
        let bin = postcard::to_allocvec(&range).unwrap();
        assert_eq!(bin[0], 2, "Range comes last");
        assert_eq!(
            postcard::from_bytes::<ObjectSelection>(&bin).unwrap(),
            range
        );
        let json = serde_json::to_string(&range).unwrap();
        assert_eq!(
            json,
            r#"{"range":{"prefix":"p/","after":"p/3","until":null}}"#
        );
        assert_eq!(
            serde_json::from_str::<ObjectSelection>(&json).unwrap(),
            range
        );
        let short: ObjectSelection =
            serde_json::from_str(r#"{"range":{"prefix":"p/","until":"p/6"}}"#).unwrap();
        assert_eq!(short, ObjectSelection::range("p/", None, Some(k("p/6"))));
        assert!(
            serde_json::from_str::<ObjectSelection>(r#"{"range":{"prefix":"p/","befor":"p/6"}}"#)
                .is_err()
        );
    }

    #[test]
    fn verify_mode_and_cleanup_policy_text_forms() {
        for mode in [VerifyMode::None, VerifyMode::Size, VerifyMode::Checksum] {
            assert_eq!(mode.to_string().parse::<VerifyMode>(), Ok(mode));
            assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{mode}\""));
        }
        assert_eq!("CHECKSUM".parse::<VerifyMode>(), Ok(VerifyMode::Checksum));
        let err = "md5".parse::<VerifyMode>().unwrap_err();
        assert!(matches!(err, Error::InvalidValue { .. }));
        assert_eq!(
            err.to_string(),
            "invalid verify mode \"md5\": expected none, size or checksum"
        );

        assert_eq!("never".parse::<CleanupPolicy>(), Ok(CleanupPolicy::Never));
        assert_eq!(
            "after-verify".parse::<CleanupPolicy>(),
            Ok(CleanupPolicy::AfterVerify)
        );
        assert_eq!(
            "grace=30s".parse::<CleanupPolicy>(),
            Ok(CleanupPolicy::AfterGrace(Duration::from_secs(30)))
        );
        assert_eq!(
            CleanupPolicy::AfterGrace(Duration::from_secs(60)).to_string(),
            "grace=1m"
        );
        let err = "grace=30".parse::<CleanupPolicy>().unwrap_err();
        assert!(matches!(err, Error::InvalidDuration { .. }), "{err:?}");
        let err = "sometimes".parse::<CleanupPolicy>().unwrap_err();
        assert!(err.to_string().contains("\"sometimes\""), "{err}");
        assert_eq!(
            serde_json::from_str::<CleanupPolicy>("\"grace=2h\"").unwrap(),
            CleanupPolicy::AfterGrace(Duration::from_secs(7200))
        );
        assert!(serde_json::from_str::<CleanupPolicy>("\"grace=2x\"").is_err());
    }

    #[test]
    fn backoff_grows_exponentially_then_caps() {
        let retry = RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        };
        let want_ms = [
            100, 100, 200, 400, 800, 1600, 3200, 6400, 12_800, 25_600, 30_000, 30_000,
        ];
        for (attempt, want) in want_ms.iter().enumerate() {
            assert_eq!(
                retry.backoff(attempt as u32, 0.9),
                Duration::from_millis(*want),
                "attempt {attempt}"
            );
        }
        let jittered = RetryPolicy::default();
        assert_eq!(jittered.backoff(3, 0.5), Duration::from_millis(200));
        assert_eq!(jittered.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(jittered.backoff(3, f64::NAN), Duration::ZERO);
        assert_eq!(jittered.backoff(3, 7.0), Duration::from_millis(400));
        assert_eq!(jittered.backoff(3, -1.0), Duration::ZERO);
    }

    #[test]
    fn should_retry_counts_the_first_attempt() {
        let retry = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert_eq!(
            (0..5).map(|n| retry.should_retry(n)).collect::<Vec<_>>(),
            [true, true, true, false, false]
        );
    }

    fn any_retry() -> impl Strategy<Value = RetryPolicy> {
        (
            1u32..10,
            0u64..=u64::MAX,
            0u64..=u64::MAX,
            0u32..=u32::MAX,
            any::<bool>(),
        )
            .prop_map(|(max_attempts, a, b, multiplier, jitter)| RetryPolicy {
                max_attempts,
                initial_backoff: Duration::from_nanos(a.min(b) % 1_000_000_000_000),
                max_backoff: Duration::from_nanos(a.max(b)),
                multiplier: multiplier % 5,
                jitter,
            })
    }

    proptest! {
        #[test]
        fn backoff_without_jitter_is_monotone_and_capped(
            retry in any_retry(),
            attempt in any::<u32>(),
            unit in any::<f64>(),
        ) {
            let retry = RetryPolicy { jitter: false, multiplier: retry.multiplier.max(1), ..retry };
            let now = retry.backoff(attempt, unit);
            let next = retry.backoff(attempt.saturating_add(1), unit);
            prop_assert!(now <= next, "{:?} then {:?}", now, next);
            prop_assert!(next <= retry.max_backoff);
            if retry.multiplier >= 2 && !retry.initial_backoff.is_zero() {
                prop_assert_eq!(retry.backoff(u32::MAX, unit), retry.max_backoff);
            }
        }

        #[test]
        fn backoff_with_jitter_never_exceeds_the_unjittered_wait(
            retry in any_retry(),
            attempt in any::<u32>(),
            unit in 0.0f64..1.0,
        ) {
            let plain = RetryPolicy { jitter: false, ..retry }.backoff(attempt, unit);
            let jittered = RetryPolicy { jitter: true, ..retry }.backoff(attempt, unit);
            prop_assert!(jittered <= plain);
            prop_assert!(jittered <= retry.max_backoff);
        }

        #[test]
        fn cleanup_policy_parse_of_display_is_identity(secs in any::<u64>(), nanos in 0u32..1_000_000_000, pick in 0u8..4) {
            let policy = match pick {
                0 => CleanupPolicy::Never,
                1 => CleanupPolicy::AfterVerify,
                2 => CleanupPolicy::AfterGrace(Duration::from_secs(secs)),
                _ => CleanupPolicy::AfterGrace(Duration::new(secs, nanos)),
            };
            prop_assert_eq!(policy.to_string().parse::<CleanupPolicy>(), Ok(policy));
            let json = serde_json::to_string(&policy).unwrap();
            prop_assert_eq!(serde_json::from_str::<CleanupPolicy>(&json).unwrap(), policy);
            let bin = postcard::to_allocvec(&policy).unwrap();
            prop_assert_eq!(postcard::from_bytes::<CleanupPolicy>(&bin).unwrap(), policy);
        }
    }
}
