//! What a store reports about one object: its size, version and checksum.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize, Serializer};

use ferry_types::{Error, ObjectKey};

/// An opaque version token of an object on one store: an ETag, a generation number, an
/// mtime-and-inode pair, whatever the store uses to tell one write from the next.
///
/// Ferry only compares versions for equality: before deleting a source copy it re-reads the
/// source's version and refuses to delete when it differs from the one it copied (SPEC I1).
/// Versions from different stores are not comparable. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(Arc<str>);

impl Version {
    /// Wraps a store's version token.
    pub fn new(token: impl Into<String>) -> Version {
        Version(Arc::from(token.into()))
    }

    /// The token as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl From<&str> for Version {
    fn from(token: &str) -> Version {
        Version(Arc::from(token))
    }
}

impl From<String> for Version {
    fn from(token: String) -> Version {
        Version::new(token)
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Version, D::Error> {
        String::deserialize(deserializer).map(Version::from)
    }
}

/// A content checksum.
///
/// Text form: `blake3:<64 hex digits>` or `crc32c:<8 hex digits>`, lowercase when printed,
/// either case when parsed.
///
/// ```
/// use ferry_store::Checksum;
/// # fn main() -> Result<(), ferry_types::Error> {
/// let sum: Checksum = "crc32c:e3069283".parse()?;
/// assert_eq!(sum, Checksum::Crc32c(0xe306_9283));
/// assert_eq!(sum.to_string(), "crc32c:e3069283");
/// assert_eq!(sum.algorithm(), "crc32c");
/// # Ok(()) }
/// ```
///
/// Serde writes the text form in human-readable formats and a compact tagged form in binary
/// ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Checksum {
    /// A BLAKE3 hash (32 bytes).
    Blake3([u8; 32]),
    /// A CRC-32C (Castagnoli) checksum.
    Crc32c(u32),
}

impl Checksum {
    /// The algorithm's name as it appears in the text form: `"blake3"` or `"crc32c"`.
    pub const fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Blake3(_) => "blake3",
            Checksum::Crc32c(_) => "crc32c",
        }
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.algorithm())?;
        match self {
            Checksum::Blake3(bytes) => bytes.iter().try_for_each(|b| write!(f, "{b:02x}")),
            Checksum::Crc32c(crc) => write!(f, "{crc:08x}"),
        }
    }
}

impl FromStr for Checksum {
    type Err = Error;

    fn from_str(text: &str) -> Result<Checksum, Error> {
        let invalid = |reason: String| Error::InvalidChecksum {
            text: text.to_owned(),
            reason,
        };
        let Some((algorithm, hex)) = text.split_once(':') else {
            return Err(invalid(
                "expected <algorithm>:<hex>, e.g. crc32c:e3069283".into(),
            ));
        };
        let want_digits = if algorithm.eq_ignore_ascii_case("blake3") {
            64
        } else if algorithm.eq_ignore_ascii_case("crc32c") {
            8
        } else {
            return Err(invalid(format!(
                "unknown algorithm {} (use blake3 or crc32c)",
                quote(algorithm)
            )));
        };
        if hex.len() != want_digits || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "expected {want_digits} hex digits after \"{}:\"",
                algorithm.to_ascii_lowercase()
            )));
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks(2)) {
            *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
        }
        Ok(if want_digits == 64 {
            Checksum::Blake3(bytes)
        } else {
            Checksum::Crc32c(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        })
    }
}

/// `text` in double quotes, escaped as `{:?}` escapes it.
fn quote(text: &str) -> String {
    format!("{text:?}")
}

/// The value of one ASCII hex digit (already checked to be one).
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// The binary serde form of [`Checksum`].
#[derive(Serialize, Deserialize)]
enum ChecksumRepr {
    Blake3([u8; 32]),
    Crc32c(u32),
}

impl Serialize for Checksum {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            match *self {
                Checksum::Blake3(bytes) => ChecksumRepr::Blake3(bytes),
                Checksum::Crc32c(crc) => ChecksumRepr::Crc32c(crc),
            }
            .serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Checksum {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Checksum, D::Error> {
        if deserializer.is_human_readable() {
            let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            Ok(match ChecksumRepr::deserialize(deserializer)? {
                ChecksumRepr::Blake3(bytes) => Checksum::Blake3(bytes),
                ChecksumRepr::Crc32c(crc) => Checksum::Crc32c(crc),
            })
        }
    }
}

/// What a store knows about one object.
///
/// Two metas are equal when they describe the same content of the same key: key, size,
/// version and checksum. When it was written ([`modified`](Self::modified)) is not compared:
/// a store may only estimate it in a put's answer and tell it exactly in a later `head`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// The object's key.
    pub key: ObjectKey,
    /// Its size in bytes.
    pub size: u64,
    /// The store's version token for this content.
    pub version: Version,
    /// Its checksum, when the store knows one without reading the object.
    pub checksum: Option<Checksum>,
    /// When this content was written, when the store says (a file's mtime, an object's
    /// `Last-Modified`); informational: [`version`](Self::version) is what identifies it.
    #[serde(default)]
    pub modified: Option<SystemTime>,
}

impl PartialEq for ObjectMeta {
    fn eq(&self, other: &ObjectMeta) -> bool {
        (&self.key, self.size, &self.version, &self.checksum)
            == (&other.key, other.size, &other.version, &other.checksum)
    }
}

impl Eq for ObjectMeta {}

/// What [`Store::delete_if`](crate::Store::delete_if) found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeleteIf {
    /// The object had the version asked for, and is deleted.
    Deleted,
    /// There was no such object.
    Absent,
    /// The object has another version (this one): it is kept.
    Changed(ObjectMeta),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn checksum_text_form() {
        let blake = Checksum::Blake3([0xab; 32]);
        assert_eq!(blake.to_string(), format!("blake3:{}", "ab".repeat(32)));
        assert_eq!(blake.algorithm(), "blake3");
        assert_eq!(Checksum::Crc32c(0x1f).to_string(), "crc32c:0000001f");
        assert_eq!(
            "CRC32C:E3069283".parse::<Checksum>(),
            Ok(Checksum::Crc32c(0xe306_9283))
        );
        let mut bytes = [0u8; 32];
        bytes[0] = 0x01;
        bytes[31] = 0xfe;
        let text = format!("blake3:01{}fe", "00".repeat(30));
        assert_eq!(text.parse::<Checksum>(), Ok(Checksum::Blake3(bytes)));
    }

    #[test]
    fn invalid_checksums_name_the_text() {
        for (text, part) in [
            ("", "expected <algorithm>:<hex>"),
            ("e3069283", "expected <algorithm>:<hex>"),
            ("md5:e3069283", "unknown algorithm \"md5\""),
            ("crc32c:e306928", "expected 8 hex digits"),
            ("crc32c:e30692834", "expected 8 hex digits"),
            ("crc32c:g3069283", "expected 8 hex digits"),
            ("crc32c:+3069283", "expected 8 hex digits"),
            ("blake3:00", "expected 64 hex digits"),
        ] {
            let err = text.parse::<Checksum>().expect_err(text);
            let Error::InvalidChecksum { reason, .. } = &err else {
                panic!("wrong variant {err:?}");
            };
            assert!(reason.contains(part), "{text}: {reason}");
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
        }
    }

    #[test]
    fn object_meta_round_trips_through_json_and_postcard() {
        let meta = ObjectMeta {
            key: ObjectKey::new("a/b").unwrap(),
            size: 42,
            version: Version::new("\"etag-1\""),
            checksum: Some(Checksum::Crc32c(7)),
            modified: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_234)),
        };
        let json = serde_json::to_string(&meta).unwrap();
        assert!(json.contains("\"crc32c:00000007\""), "{json}");
        let back = serde_json::from_str::<ObjectMeta>(&json).unwrap();
        assert_eq!((&back, back.modified), (&meta, meta.modified));
        let bin = postcard::to_allocvec(&meta).unwrap();
        let back = postcard::from_bytes::<ObjectMeta>(&bin).unwrap();
        assert_eq!((&back, back.modified), (&meta, meta.modified));
        assert_eq!(meta.version.as_str(), "\"etag-1\"");
    }

    fn any_checksum() -> impl Strategy<Value = Checksum> {
        prop_oneof![
            any::<[u8; 32]>().prop_map(Checksum::Blake3),
            any::<u32>().prop_map(Checksum::Crc32c),
        ]
    }

    proptest! {
        #[test]
        fn checksum_parse_of_display_is_identity(sum in any_checksum(), upper in any::<bool>()) {
            let mut text = sum.to_string();
            if upper {
                text = text.to_ascii_uppercase();
            }
            prop_assert_eq!(text.parse::<Checksum>(), Ok(sum));
            let json = serde_json::to_string(&sum).unwrap();
            prop_assert_eq!(serde_json::from_str::<Checksum>(&json).unwrap(), sum);
            let bin = postcard::to_allocvec(&sum).unwrap();
            prop_assert_eq!(postcard::from_bytes::<Checksum>(&bin).unwrap(), sum);
        }
    }
}
