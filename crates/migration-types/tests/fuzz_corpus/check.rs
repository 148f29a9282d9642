//! The check of the `parsers` fuzz target, shared with its stable replay
//! (`crates/migration-types/tests/fuzz_corpus.rs`): the fuzz target compiles this same file
//! with `#[path = "…"] mod check;`, so both run exactly the same assertions.
//!
//! Every parser of text that users type (CLI flags, config) or that comes back from a file
//! runs on the input: `ByteSize`, `Rate`, `JobId`, `NodeId`, `ObjectKey`, `parse_duration`,
//! `CleanupPolicy` and `VerifyMode`. Each must return a value or an error, never panic, and
//! a value must print (`Display`) to text that parses back to the same value.

use std::fmt::Display;
use std::str::FromStr;

use ferry_types::{
    ByteSize, CleanupPolicy, JobId, NodeId, ObjectKey, Rate, VerifyMode, format_duration,
    parse_duration,
};

/// Runs every parser on `input` (when it is UTF-8); panics on a violation.
pub(crate) fn check(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    round_trip::<ByteSize>(text);
    round_trip::<Rate>(text);
    round_trip::<JobId>(text);
    round_trip::<NodeId>(text);
    round_trip::<ObjectKey>(text);
    round_trip::<CleanupPolicy>(text);
    round_trip::<VerifyMode>(text);
    if let Ok(duration) = parse_duration(text) {
        let printed = format_duration(duration).to_string();
        let again = parse_duration(&printed)
            .unwrap_or_else(|e| panic!("{text:?} → {duration:?} prints {printed:?}: {e}"));
        assert_eq!(again, duration, "{text:?} → {printed:?}");
    }
    // The constructors agree with `FromStr`.
    assert_eq!(
        JobId::new(text).ok(),
        text.parse::<JobId>().ok(),
        "{text:?}"
    );
    assert_eq!(NodeId::new(text).ok(), text.parse().ok(), "{text:?}");
    assert_eq!(ObjectKey::new(text).ok(), text.parse().ok(), "{text:?}");
    // Names are taken as they are: no trimming, no normalisation.
    if let Ok(key) = ObjectKey::new(text) {
        assert_eq!(key.as_str(), text);
    }
    if let Ok(id) = JobId::new(text) {
        assert_eq!(id.as_str(), text);
        assert!(!id.as_str().starts_with('.') && !id.as_str().contains('/'));
    }
}

/// A parsed value prints to text that parses back to the same value, and that text is
/// stable (printing the re-parsed value gives the same text).
pub(crate) fn round_trip<T>(text: &str)
where
    T: FromStr + Display + PartialEq + std::fmt::Debug,
    T::Err: Display,
{
    let Ok(value) = text.parse::<T>() else {
        return;
    };
    let printed = value.to_string();
    let again = printed.parse::<T>().unwrap_or_else(|e| {
        panic!(
            "{}: {text:?} parses to {value:?}, which prints {printed:?}, which fails: {e}",
            std::any::type_name::<T>()
        )
    });
    assert_eq!(
        again,
        value,
        "{}: {text:?} → {printed:?}",
        std::any::type_name::<T>()
    );
    assert_eq!(again.to_string(), printed, "{}", std::any::type_name::<T>());
}
