//! The one error type of this crate.

use std::fmt;

/// Everything that can go wrong while building or parsing a Ferry value.
///
/// Each variant keeps the rejected text (or field) so callers can report it; the message quotes
/// it and says what would have been accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A job id is not `[A-Za-z0-9._-]{1,128}` or starts with `.`.
    #[error("invalid job id {}: {reason}", quote(.id))]
    InvalidJobId {
        /// The rejected id.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An object key is empty, longer than [`ObjectKey::MAX_LEN`](crate::ObjectKey::MAX_LEN)
    /// bytes or holds a NUL byte.
    #[error("invalid object key {}: {reason}", quote(.key))]
    InvalidKey {
        /// The rejected key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A node id is not 1 to 31 bytes of `[A-Za-z0-9._:-]`.
    #[error("invalid node id {}: {reason}", quote(.id))]
    InvalidNodeId {
        /// The rejected id.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A byte size could not be parsed.
    #[error("invalid size {}: {reason}", quote(.text))]
    InvalidSize {
        /// The rejected text.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A rate could not be parsed or is zero.
    #[error("invalid rate {}: {reason}", quote(.text))]
    InvalidRate {
        /// The rejected text.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A duration could not be parsed.
    #[error("invalid duration {}: {reason}", quote(.text))]
    InvalidDuration {
        /// The rejected text.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A checksum could not be parsed.
    #[error("invalid checksum {}: {reason}", quote(.text))]
    InvalidChecksum {
        /// The rejected text.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A keyword (verify mode, cleanup policy, status, ...) is not one of the known ones.
    #[error("invalid {what} {}: expected {expected}", quote(.text))]
    InvalidValue {
        /// What kind of value was expected, e.g. `"verify mode"`.
        what: &'static str,
        /// The rejected text.
        text: String,
        /// The accepted spellings.
        expected: &'static str,
    },
    /// A migration plan is inconsistent; `field` names the offending field, e.g.
    /// `"options.chunk_size"`.
    #[error("invalid plan: {field}: {reason}")]
    InvalidPlan {
        /// The dotted path of the offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Convenience alias used by every fallible function of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Quotes (and escapes) user text for an error message, cutting very long text short.
pub(crate) fn quote(text: &str) -> Quoted<'_> {
    Quoted(text)
}

/// Display adapter returned by [`quote`].
pub(crate) struct Quoted<'a>(&'a str);

const QUOTE_MAX_CHARS: usize = 80;

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        match text.char_indices().nth(QUOTE_MAX_CHARS) {
            None => write!(f, "{text:?}"),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &text[..cut], text.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lowercase_quote_the_text_and_have_no_trailing_period() {
        let errors = [
            Error::InvalidSize {
                text: "50XB".into(),
                reason: "unknown unit \"XB\"".into(),
            },
            Error::InvalidJobId {
                id: "../x".into(),
                reason: "must not start with '.'",
            },
            Error::InvalidPlan {
                field: "target",
                reason: "same as the source".into(),
            },
        ];
        for error in errors {
            let message = error.to_string();
            assert!(message.starts_with("invalid "), "{message}");
            assert!(!message.ends_with('.'), "{message}");
        }
        let message = Error::InvalidSize {
            text: "50XB".into(),
            reason: "bad".into(),
        }
        .to_string();
        assert_eq!(message, "invalid size \"50XB\": bad");
    }

    #[test]
    fn quote_cuts_long_text_and_reports_its_length() {
        let long = "a".repeat(2000);
        let quoted = quote(&long).to_string();
        assert!(quoted.len() < 120, "{quoted}");
        assert!(quoted.ends_with("(2000 bytes)"), "{quoted}");
        assert_eq!(quote("a\0b").to_string(), "\"a\\0b\"");
    }
}
