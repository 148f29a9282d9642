//! Names: job ids, object keys and node ids.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::error::{Error, Result};

/// The name of a migration job: `[A-Za-z0-9._-]{1,128}`, not starting with `.`.
///
/// Job ids become file names in the checkpoint store, so anything that could escape a
/// directory or hide a file (`..`, `/`, a leading `.`) is refused before it touches a path.
///
/// ```
/// use ferry_types::JobId;
/// # fn main() -> Result<(), ferry_types::Error> {
/// let id = JobId::new("drain-node-7.2024-06")?;
/// assert_eq!(id.as_str(), "drain-node-7.2024-06");
/// assert!(JobId::new("../etc").is_err());
/// # Ok(()) }
/// ```
///
/// Serde writes it as a string and validates it again when reading.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(Arc<str>);

impl JobId {
    /// The longest job id, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validates `id` as a job id.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidJobId`] when `id` is empty, longer than [`JobId::MAX_LEN`] bytes,
    /// starts with `.` or holds a character outside `A-Z a-z 0-9 . _ -`.
    pub fn new(id: impl Into<String>) -> Result<JobId> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("must not be empty")
        } else if id.len() > Self::MAX_LEN {
            Some("longer than 128 bytes")
        } else if id.starts_with('.') {
            Some("must not start with '.'")
        } else if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            Some("only letters, digits, '.', '_' and '-' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidJobId { id, reason }),
            None => Ok(JobId(id.into())),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl FromStr for JobId {
    type Err = Error;

    fn from_str(s: &str) -> Result<JobId> {
        JobId::new(s)
    }
}

impl TryFrom<String> for JobId {
    type Error = Error;

    fn try_from(s: String) -> Result<JobId> {
        JobId::new(s)
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0.to_string()
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for JobId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The key of one object, as the storage system names it.
///
/// Any UTF-8 text is accepted except an empty key, one longer than [`ObjectKey::MAX_LEN`]
/// bytes (S3's limit) or one holding a NUL byte: slashes, spaces and non-ASCII letters are
/// fine. Stores apply their own, stricter rules on top (the directory store refuses absolute
/// keys and `..` or empty segments, so a key can never escape its root).
///
/// It is cheap to clone (a shared `Arc<str>`), and compares, orders and hashes exactly like
/// its `str`, so a `HashMap<ObjectKey, _>` or `BTreeMap<ObjectKey, _>` can be looked up with
/// a `&str`:
///
/// ```
/// use std::collections::HashMap;
/// use ferry_types::ObjectKey;
/// # fn main() -> Result<(), ferry_types::Error> {
/// let mut sizes = HashMap::new();
/// sizes.insert(ObjectKey::new("photos/2024/cat.jpg")?, 4096_u64);
/// assert_eq!(sizes.get("photos/2024/cat.jpg"), Some(&4096));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(Arc<str>);

impl ObjectKey {
    /// The longest key, in bytes (S3's limit).
    pub const MAX_LEN: usize = 1024;

    /// Validates `key` as an object key.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] when `key` is empty, longer than [`ObjectKey::MAX_LEN`] bytes or
    /// holds a NUL byte.
    pub fn new(key: impl AsRef<str>) -> Result<ObjectKey> {
        let key = key.as_ref();
        let reason = if key.is_empty() {
            Some("must not be empty")
        } else if key.len() > Self::MAX_LEN {
            Some("longer than 1024 bytes")
        } else if key.contains('\0') {
            Some("must not contain a NUL byte")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidKey {
                key: key.to_owned(),
                reason,
            }),
            None => Ok(ObjectKey(Arc::from(key))),
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl FromStr for ObjectKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<ObjectKey> {
        ObjectKey::new(s)
    }
}

impl TryFrom<&str> for ObjectKey {
    type Error = Error;

    fn try_from(s: &str) -> Result<ObjectKey> {
        ObjectKey::new(s)
    }
}

impl TryFrom<String> for ObjectKey {
    type Error = Error;

    fn try_from(s: String) -> Result<ObjectKey> {
        ObjectKey::new(s)
    }
}

impl AsRef<str> for ObjectKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ObjectKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for ObjectKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ObjectKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ObjectKey, D::Error> {
        deserializer.deserialize_str(ValidatingVisitor::new("an object key", |s| {
            ObjectKey::new(s)
        }))
    }
}

/// A serde visitor that reads a string and validates it with `make`.
pub(crate) struct ValidatingVisitor<T> {
    expecting: &'static str,
    make: fn(&str) -> Result<T>,
}

impl<T> ValidatingVisitor<T> {
    pub(crate) fn new(expecting: &'static str, make: fn(&str) -> Result<T>) -> Self {
        ValidatingVisitor { expecting, make }
    }
}

impl<T> Visitor<'_> for ValidatingVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.make)(v).map_err(E::custom)
    }
}

/// The name of a storage node: 1 to 31 bytes of `[A-Za-z0-9._:-]`, e.g. `disk-a` or
/// `10.0.0.7:9000`.
///
/// It is stored inline (a length and 31 bytes, no heap) and is `Copy`: a node id sits in
/// every forwarding-table entry and is copied on the read hot path, where an allocation or
/// a reference count per lookup would cost more than the lookup itself.
///
/// Equality, order and hash agree with [`NodeId::as_str`], so maps keyed by `NodeId` can be
/// looked up with a `&str`.
///
/// ```
/// use ferry_types::NodeId;
/// # fn main() -> Result<(), ferry_types::Error> {
/// let node = NodeId::new("10.0.0.7:9000")?;
/// let copy = node; // Copy
/// assert_eq!(copy.as_str(), "10.0.0.7:9000");
/// assert!(NodeId::new("a/b").is_err());
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NodeId {
    len: u8,
    /// Validated ASCII in `..len`, zeros after it.
    bytes: [u8; NodeId::MAX_LEN],
}

impl NodeId {
    /// The longest node id, in bytes.
    pub const MAX_LEN: usize = 31;

    /// Validates `id` as a node id.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidNodeId`] when `id` is empty, longer than [`NodeId::MAX_LEN`] bytes or
    /// holds a character outside `A-Z a-z 0-9 . _ : -`.
    pub fn new(id: &str) -> Result<NodeId> {
        let reason = if id.is_empty() {
            Some("must not be empty")
        } else if id.len() > Self::MAX_LEN {
            Some("longer than 31 bytes")
        } else if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            Some("only letters, digits, '.', '_', ':' and '-' are allowed")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(Error::InvalidNodeId {
                id: id.to_owned(),
                reason,
            });
        }
        let mut bytes = [0; Self::MAX_LEN];
        bytes[..id.len()].copy_from_slice(id.as_bytes());
        Ok(NodeId {
            // id.len() <= 31 was checked above.
            len: id.len() as u8,
            bytes,
        })
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        let bytes = &self.bytes[..usize::from(self.len)];
        // `NodeId::new` is the only constructor and stores validated ASCII, which is UTF-8.
        #[allow(clippy::expect_used)]
        std::str::from_utf8(bytes).expect("NodeId holds validated ASCII")
    }
}

impl Hash for NodeId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &NodeId) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NodeId {
    fn cmp(&self, other: &NodeId) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NodeId").field(&self.as_str()).finish()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for NodeId {
    type Err = Error;

    fn from_str(s: &str) -> Result<NodeId> {
        NodeId::new(s)
    }
}

impl TryFrom<&str> for NodeId {
    type Error = Error;

    fn try_from(s: &str) -> Result<NodeId> {
        NodeId::new(s)
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<NodeId, D::Error> {
        deserializer.deserialize_str(ValidatingVisitor::new("a node id", NodeId::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::hash_map::DefaultHasher;
    use std::collections::{BTreeMap, HashMap};

    fn hash_of<T: Hash + ?Sized>(value: &T) -> u64 {
        let mut hasher = DefaultHasher::new();
        value.hash(&mut hasher);
        hasher.finish()
    }

    #[test]
    fn job_id_rejections() {
        let long = "a".repeat(129);
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            (".", "start with '.'"),
            ("..", "start with '.'"),
            ("../x", "start with '.'"),
            (".a", "start with '.'"),
            (".hidden", "start with '.'"),
            ("a/b", "only letters"),
            ("a b", "only letters"),
            ("a\0b", "only letters"),
            ("a\\b", "only letters"),
            ("é", "only letters"),
            (&long, "longer than 128"),
        ];
        for &(id, part) in cases {
            let err = JobId::new(id).expect_err(id);
            let Error::InvalidJobId { id: got, reason } = &err else {
                panic!("{id:?}: wrong variant {err:?}");
            };
            assert_eq!(got, id);
            assert!(reason.contains(part), "{id:?}: {reason}");
        }
        assert!(JobId::new("a".repeat(128)).is_ok());
        assert!(JobId::new("a..b").is_ok());
        assert!(JobId::new("-x_1.2").is_ok());
    }

    #[test]
    fn job_id_deserialize_validates() {
        let id: JobId = serde_json::from_str("\"job-1\"").unwrap();
        assert_eq!(id.as_str(), "job-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"job-1\"");
        let err = serde_json::from_str::<JobId>("\"../x\"").unwrap_err();
        assert!(err.to_string().contains("invalid job id \"../x\""), "{err}");
        let bytes = postcard::to_allocvec(&"a/b").unwrap();
        assert!(postcard::from_bytes::<JobId>(&bytes).is_err());
    }

    #[test]
    fn object_key_accepts_any_utf8_but_nul_and_limits_length() {
        for key in [
            "a",
            "a/b/c",
            "with space",
            "ünïcödé/🐟",
            "../x",
            "/abs",
            "a//b",
        ] {
            assert_eq!(ObjectKey::new(key).unwrap().as_str(), key);
        }
        assert!(ObjectKey::new("k".repeat(ObjectKey::MAX_LEN)).is_ok());
        let cases = [
            (String::new(), "empty"),
            ("k".repeat(ObjectKey::MAX_LEN + 1), "longer than 1024"),
            ("a\0b".to_owned(), "NUL"),
        ];
        for (key, part) in cases {
            let err = ObjectKey::new(&key).expect_err(&key);
            let Error::InvalidKey { key: got, reason } = &err else {
                panic!("wrong variant {err:?}");
            };
            assert_eq!(*got, key);
            assert!(reason.contains(part), "{reason}");
        }
        assert!(serde_json::from_str::<ObjectKey>("\"\"").is_err());
        assert!(serde_json::from_str::<ObjectKey>("\"a\\u0000b\"").is_err());
    }

    #[test]
    fn object_key_can_be_looked_up_by_str() {
        let key = ObjectKey::new("photos/cat.jpg").unwrap();
        assert_eq!(hash_of(&key), hash_of("photos/cat.jpg"));
        let mut map = HashMap::new();
        map.insert(key.clone(), 1);
        assert_eq!(map.get("photos/cat.jpg"), Some(&1));
        let mut tree = BTreeMap::new();
        tree.insert(ObjectKey::new("b").unwrap(), 2);
        tree.insert(ObjectKey::new("a").unwrap(), 1);
        assert_eq!(tree.get("a"), Some(&1));
        assert_eq!(tree.keys().next().map(ObjectKey::as_str), Some("a"));
    }

    #[test]
    fn node_id_rejections() {
        for (id, part) in [
            ("", "empty"),
            ("a/b", "only letters"),
            ("a b", "only letters"),
            ("é", "only letters"),
            ("a\0", "only letters"),
            ("12345678901234567890123456789012", "longer than 31"),
        ] {
            let err = NodeId::new(id).expect_err(id);
            let Error::InvalidNodeId { reason, .. } = &err else {
                panic!("wrong variant {err:?}");
            };
            assert!(reason.contains(part), "{id:?}: {reason}");
        }
        let max = "1234567890123456789012345678901";
        assert_eq!(NodeId::new(max).unwrap().as_str(), max);
        assert!(serde_json::from_str::<NodeId>("\"a/b\"").is_err());
    }

    #[test]
    fn node_id_order_and_hash_agree_with_str() {
        let short = NodeId::new("b").unwrap();
        let long = NodeId::new("aaaa").unwrap();
        // Lexicographic, not by length.
        assert!(long < short);
        assert_eq!(hash_of(&short), hash_of("b"));
        let mut map = HashMap::new();
        map.insert(long, 1);
        assert_eq!(map.get("aaaa"), Some(&1));
        assert_eq!(format!("{short:?}"), "NodeId(\"b\")");
        assert_eq!(std::mem::size_of::<NodeId>(), 32);
    }

    fn valid_job_id() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
    }

    fn valid_node_id() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._:-]{1,31}"
    }

    proptest! {
        #[test]
        fn job_id_parse_of_display_is_identity(text in valid_job_id()) {
            let id = JobId::new(text.clone()).unwrap();
            prop_assert_eq!(id.as_str(), text.as_str());
            prop_assert_eq!(id.to_string().parse::<JobId>().unwrap(), id.clone());
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<JobId>(&json).unwrap(), id.clone());
            let bin = postcard::to_allocvec(&id).unwrap();
            prop_assert_eq!(postcard::from_bytes::<JobId>(&bin).unwrap(), id);
        }

        #[test]
        fn job_id_accepts_exactly_the_documented_alphabet(text in "\\PC{0,8}") {
            let valid = !text.is_empty()
                && !text.starts_with('.')
                && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            prop_assert_eq!(JobId::new(text).is_ok(), valid);
        }

        #[test]
        fn node_id_parse_of_display_is_identity(text in valid_node_id()) {
            let id = NodeId::new(&text).unwrap();
            prop_assert_eq!(id.as_str(), text.as_str());
            prop_assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<NodeId>(&json).unwrap(), id);
            let bin = postcard::to_allocvec(&id).unwrap();
            prop_assert_eq!(postcard::from_bytes::<NodeId>(&bin).unwrap(), id);
        }

        #[test]
        fn node_id_equality_and_order_match_str(a in valid_node_id(), b in valid_node_id()) {
            let (x, y) = (NodeId::new(&a).unwrap(), NodeId::new(&b).unwrap());
            prop_assert_eq!(x == y, a == b);
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
        }

        #[test]
        fn object_key_round_trips_through_serde(text in "[^\u{0}]{1,64}") {
            let key = ObjectKey::new(&text).unwrap();
            let json = serde_json::to_string(&key).unwrap();
            prop_assert_eq!(serde_json::from_str::<ObjectKey>(&json).unwrap(), key.clone());
            let bin = postcard::to_allocvec(&key).unwrap();
            prop_assert_eq!(postcard::from_bytes::<ObjectKey>(&bin).unwrap(), key);
        }
    }
}
