//! Parsing a store URL into a backend and a key prefix.

use std::path::PathBuf;

use object_store::path::Path;

use crate::error::{Error, Result};

/// Where a URL points.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// object_store's `InMemory`.
    Memory,
    /// A local directory (object_store's `LocalFileSystem` rooted there).
    File(PathBuf),
    /// An S3 bucket.
    S3 { bucket: String },
    /// A Google Cloud Storage bucket.
    Gcs { bucket: String },
    /// An Azure Blob Storage container.
    Azure { container: String },
}

/// A parsed store URL: the backend and the prefix applied to every key (`""` for none; never
/// with a leading or trailing `/`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub(crate) backend: Backend,
    pub(crate) prefix: String,
}

/// A bucket URL taken apart: `s3://bucket/pre/fix` (or `s3a://…`), `gs://bucket/…`,
/// `az://container/…`. The one parser of these URLs: the `ferry` command checks its
/// arguments with it, and [`ObjectStoreAdapter::from_url`](crate::ObjectStoreAdapter::from_url)
/// opens what it names.
///
/// # Example
/// ```
/// use ferry_object_store::BucketUrl;
///
/// let url = BucketUrl::parse("S3a://photos/2024/")?;
/// assert_eq!((url.scheme, url.bucket.as_str(), url.prefix.as_str()), ("s3", "photos", "2024"));
/// assert_eq!(url.to_string(), "s3://photos/2024");
/// let inner = BucketUrl::parse("s3://photos/2024/may")?;
/// assert_eq!(url.nesting(&inner), Some(std::cmp::Ordering::Less));
/// assert_eq!(url.nesting(&BucketUrl::parse("s3://photos/2024may")?), None);
/// # Ok::<(), ferry_object_store::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketUrl {
    /// `s3` (for `s3://` and `s3a://`), `gs` or `az`.
    pub scheme: &'static str,
    /// The bucket (the container, for `az://`).
    pub bucket: String,
    /// The key prefix: `""` for none, never with a leading or trailing `/`, and a valid
    /// object_store path (no empty, `.` or `..` segment, no control character).
    pub prefix: String,
}

impl BucketUrl {
    /// Parses a bucket URL; the scheme's case is ignored.
    ///
    /// # Errors
    /// [`Error::UnknownScheme`] for any other URL or a plain path, [`Error::InvalidUrl`] for
    /// a missing bucket or a malformed prefix.
    pub fn parse(url: &str) -> Result<BucketUrl> {
        let unknown = |scheme: &str| Error::UnknownScheme {
            url: url.to_owned(),
            scheme: scheme.to_owned(),
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(unknown(""));
        };
        let (scheme, what): (&'static str, _) = match scheme.to_ascii_lowercase().as_str() {
            "s3" | "s3a" => ("s3", "has no bucket: s3://bucket/prefix"),
            "gs" => ("gs", "has no bucket: gs://bucket/prefix"),
            "az" => ("az", "has no container: az://container/prefix"),
            _ => return Err(unknown(scheme)),
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::InvalidUrl {
                url: url.to_owned(),
                reason: what,
            });
        }
        Ok(BucketUrl {
            scheme,
            bucket: bucket.to_owned(),
            prefix: prefix_of(url, prefix)?,
        })
    }

    /// How two bucket URLs relate, by whole prefix segments: `Some(Equal)` the same place,
    /// `Some(Less)` `self` holds `other`, `Some(Greater)` `other` holds `self`, `None` apart
    /// (another scheme or bucket, or prefixes like `x` and `xy`).
    pub fn nesting(&self, other: &BucketUrl) -> Option<std::cmp::Ordering> {
        if self.scheme != other.scheme || self.bucket != other.bucket {
            return None;
        }
        let segments = |p: &str| -> Vec<String> {
            p.split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let (a, b) = (segments(&self.prefix), segments(&other.prefix));
        if b.starts_with(&a) {
            Some(a.len().cmp(&b.len()))
        } else if a.starts_with(&b) {
            Some(std::cmp::Ordering::Greater)
        } else {
            None
        }
    }
}

impl std::fmt::Display for BucketUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// Parses `file:///abs/path`, a plain path, `memory://[prefix]`, `s3://bucket[/prefix]`,
/// `gs://bucket[/prefix]` and `az://container[/prefix]`.
pub(crate) fn parse(url: &str) -> Result<Parsed> {
    let invalid = |reason| Error::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    if url.is_empty() {
        return Err(invalid("is empty"));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        // A plain path: a local directory.
        let path = std::path::absolute(url).map_err(|_| invalid("is not a usable path"))?;
        return Ok(Parsed {
            backend: Backend::File(path),
            prefix: String::new(),
        });
    };
    let backend = match scheme.to_ascii_lowercase().as_str() {
        "memory" => {
            return Ok(Parsed {
                backend: Backend::Memory,
                prefix: prefix_of(url, rest)?,
            });
        }
        "file" => {
            if !rest.starts_with('/') {
                return Err(invalid("a file url needs an absolute path: file:///dir"));
            }
            return Ok(Parsed {
                backend: Backend::File(PathBuf::from(rest)),
                prefix: String::new(),
            });
        }
        _ => {
            let BucketUrl {
                scheme,
                bucket,
                prefix,
            } = BucketUrl::parse(url)?;
            match scheme {
                "s3" => (Backend::S3 { bucket }, prefix, "aws", cfg!(feature = "aws")),
                "gs" => (
                    Backend::Gcs { bucket },
                    prefix,
                    "gcp",
                    cfg!(feature = "gcp"),
                ),
                _ => (
                    Backend::Azure { container: bucket },
                    prefix,
                    "azure",
                    cfg!(feature = "azure"),
                ),
            }
        }
    };
    let (backend, prefix, feature, enabled) = backend;
    if !enabled {
        return Err(Error::FeatureDisabled {
            url: url.to_owned(),
            feature,
        });
    }
    Ok(Parsed { backend, prefix })
}

/// The key prefix of a URL's path: trimmed of `/`, and a valid object_store path (no empty,
/// `.` or `..` segments, no control characters).
fn prefix_of(url: &str, raw: &str) -> Result<String> {
    let trimmed = raw.trim_matches('/');
    match Path::parse(trimmed) {
        Ok(path) if path.as_ref() == trimmed => Ok(trimmed.to_owned()),
        _ => Err(Error::InvalidUrl {
            url: url.to_owned(),
            reason: "the prefix has an empty, '.' or '..' segment or a control character",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_backend_and_a_prefix() {
        let p = parse("memory://").unwrap();
        assert_eq!((p.backend, p.prefix.as_str()), (Backend::Memory, ""));
        let p = parse("memory:///a/b/").unwrap();
        assert_eq!(p.prefix, "a/b");
        let p = parse("file:///tmp/x").unwrap();
        assert_eq!(p.backend, Backend::File(PathBuf::from("/tmp/x")));
        let p = parse("/tmp/y").unwrap();
        assert_eq!(p.backend, Backend::File(PathBuf::from("/tmp/y")));
    }

    #[test]
    fn malformed_urls_are_refused_with_a_reason() {
        for url in [
            "",
            "file://relative/x",
            "memory://a//b",
            "memory://a/../b",
            "s3://",
            "gs:///x",
            "az://",
        ] {
            let err = parse(url).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidUrl { .. } | Error::FeatureDisabled { .. }
                ),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn cloud_urls_parse_bucket_and_prefix_when_their_feature_is_on() {
        for (url, feat) in [
            ("s3://bucket/pre/fix/", "aws"),
            ("gs://bucket/pre/fix", "gcp"),
            ("az://bucket/pre/fix", "azure"),
        ] {
            match parse(url) {
                Ok(p) => assert_eq!(p.prefix, "pre/fix"),
                Err(Error::FeatureDisabled { feature, .. }) => assert_eq!(feature, feat),
                Err(e) => panic!("{url}: {e}"),
            }
        }
    }
}
