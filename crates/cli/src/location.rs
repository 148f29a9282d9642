//! Where objects come from and go to: parsed from a command-line argument.
//!
//! A local directory (`path`, `./path`, `file:///path`) or a bucket in an object store
//! (`s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`, through
//! `ferry-object-store`, configured from the cloud's usual environment variables).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use ferry_object_store::BucketUrl;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A source or destination given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// A directory on this machine (`path`, `./path` or `file:///path`).
    Local(PathBuf),
    /// A bucket (and prefix) in an object store, as a URL without a trailing `/`:
    /// `s3://bucket/prefix`, `gs://…`, `az://…`.
    Bucket(String),
}

impl Location {
    /// How two bucket locations relate, by whole prefix segments (see
    /// [`BucketUrl::nesting`]): `Some(Equal)` the same place, `Some(Less)` `self` holds
    /// `other`, `Some(Greater)` `other` holds `self`, `None` apart.
    pub(crate) fn bucket_nesting(&self, other: &Location) -> Option<std::cmp::Ordering> {
        let (Location::Bucket(a), Location::Bucket(b)) = (self, other) else {
            return None;
        };
        BucketUrl::parse(a)
            .ok()?
            .nesting(&BucketUrl::parse(b).ok()?)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::Bucket(url) => f.write_str(url),
        }
    }
}

impl FromStr for Location {
    type Err = String;

    fn from_str(text: &str) -> Result<Location, String> {
        if text.is_empty() {
            return Err("an empty location: give a directory or a bucket URL".to_owned());
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Ok(Location::Local(PathBuf::from(text)));
        };
        let valid_scheme = !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !valid_scheme {
            // A colon in a plain name is a path, not a scheme.
            return Ok(Location::Local(PathBuf::from(text)));
        }
        let lower = scheme.to_ascii_lowercase();
        if lower == "file" {
            if rest.is_empty() {
                return Err("file:// needs a path, e.g. file:///srv/data".to_owned());
            }
            return Ok(Location::Local(PathBuf::from(rest)));
        }
        if lower == "memory" {
            return Err(
                "memory:// lives inside one process: ferry cannot migrate to or from it \
                 (give a directory or a bucket URL)"
                    .to_owned(),
            );
        }
        match BucketUrl::parse(text) {
            Ok(url) => Ok(Location::Bucket(url.to_string())),
            Err(ferry_object_store::Error::UnknownScheme { .. }) => Err(format!(
                "{scheme}:// is not a location ferry knows: give a directory, file:///dir, \
                 s3://bucket/prefix, gs://bucket/prefix or az://container/prefix"
            )),
            Err(err) => Err(err.to_string()),
        }
    }
}

// The job's sidecar keeps a location as one string: a local path as serde writes a path
// (an error for one that is not UTF-8), a bucket as its URL.
impl Serialize for Location {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Location::Local(path) => path.serialize(serializer),
            Location::Bucket(url) => url.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Location {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Location, D::Error> {
        let text = String::deserialize(deserializer)?;
        // Local paths are stored absolute, so they never look like a URL.
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use super::*;

    fn bucket(url: &str) -> Location {
        Location::Bucket(url.to_owned())
    }

    #[test]
    fn parses_paths_file_urls_and_buckets_and_refuses_other_schemes() {
        assert_eq!(
            "a/b".parse::<Location>(),
            Ok(Location::Local(PathBuf::from("a/b")))
        );
        assert_eq!(
            "file:///srv/x".parse::<Location>(),
            Ok(Location::Local(PathBuf::from("/srv/x")))
        );
        assert_eq!("s3://b/p/".parse::<Location>(), Ok(bucket("s3://b/p")));
        assert_eq!("S3://b".parse::<Location>(), Ok(bucket("s3://b")));
        assert_eq!("gs://b/x/y".parse::<Location>(), Ok(bucket("gs://b/x/y")));
        assert_eq!("az://c".parse::<Location>(), Ok(bucket("az://c")));
        let err = "s3://".parse::<Location>().unwrap_err();
        assert!(err.contains("has no bucket"), "{err}");
        let err = "az:///p".parse::<Location>().unwrap_err();
        assert!(err.contains("has no container"), "{err}");
        let err = "memory://x".parse::<Location>().unwrap_err();
        assert!(err.contains("inside one process"), "{err}");
        let err = "s3://b/x//y".parse::<Location>().unwrap_err();
        assert!(err.contains("empty, '.' or '..' segment"), "{err}");
        assert_eq!("s3a://b/x".parse::<Location>(), Ok(bucket("s3://b/x")));
        let err = "ftp://host/x".parse::<Location>().unwrap_err();
        assert!(err.contains("ftp:// is not a location"), "{err}");
        assert!("".parse::<Location>().is_err());
        assert_eq!(
            "weird name:// x".parse::<Location>(),
            Ok(Location::Local(PathBuf::from("weird name:// x")))
        );
    }

    #[test]
    fn bucket_locations_nest_by_whole_segments() {
        let nest = |a: &str, b: &str| bucket(a).bucket_nesting(&bucket(b));
        assert_eq!(nest("s3://b/p", "s3://b/p"), Some(Ordering::Equal));
        assert_eq!(nest("s3a://b/p", "s3://b/p"), Some(Ordering::Equal));
        assert_eq!(nest("s3://b", "s3://b/p/q"), Some(Ordering::Less));
        assert_eq!(nest("s3://b/p/q", "s3://b/p"), Some(Ordering::Greater));
        assert_eq!(nest("s3://b/p", "s3://b/pq"), None);
        assert_eq!(nest("s3://b/p", "s3://c/p"), None);
        assert_eq!(nest("s3://b/p", "gs://b/p"), None);
        assert_eq!(
            bucket("s3://b").bucket_nesting(&Location::Local("/b".into())),
            None
        );
    }

    #[test]
    fn a_location_survives_the_sidecar() {
        for loc in [Location::Local("/srv/data".into()), bucket("s3://b/p")] {
            let json = serde_json::to_string(&loc).unwrap();
            assert_eq!(serde_json::from_str::<Location>(&json).unwrap(), loc);
        }
    }
}
