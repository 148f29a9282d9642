//! Errors of `ferry-throttle`.

use ferry_types::ByteSize;

/// What can go wrong when configuring a [`Throttle`](crate::Throttle).
///
/// Waiting for tokens never fails: [`Throttle::acquire`](crate::Throttle::acquire) only waits.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A burst of zero would never admit anything.
    #[error("invalid burst {burst}: the burst must be at least one byte")]
    ZeroBurst {
        /// The burst that was asked for.
        burst: ByteSize,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
