//! Errors of `ferry-object-store` when a store is opened from a URL.
//!
//! Errors of the store's operations are [`ferry_store::Error`]s, like every other store's.

/// What can go wrong when an [`ObjectStoreAdapter`](crate::ObjectStoreAdapter) is built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL has no scheme this crate knows.
    #[error(
        "unknown scheme {scheme:?} in {url:?}: expected file://, memory://, s3://, gs:// or az://"
    )]
    UnknownScheme {
        /// The URL as given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The URL's scheme needs a cargo feature this build does not have.
    #[error("{url:?} needs ferry-object-store's cargo feature `{feature}`, which this build lacks")]
    FeatureDisabled {
        /// The URL as given.
        url: String,
        /// The feature to enable (`aws`, `gcp` or `azure`).
        feature: &'static str,
    },
    /// The URL is malformed.
    #[error("invalid store url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The local directory of a `file://` URL could not be created or opened.
    #[error("cannot open directory {path:?}")]
    Dir {
        /// The directory.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// object_store refused the configuration (a missing bucket, region or credential, a
    /// malformed setting in the environment).
    #[error("cannot build the store for {url:?}")]
    Build {
        /// The URL as given.
        url: String,
        /// The cause, from object_store.
        #[source]
        source: ferry_store::BoxError,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
