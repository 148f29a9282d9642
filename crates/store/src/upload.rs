//! Uploads in parts: how a large object is copied so that a crash costs at most one part.
//!
//! A copy with [`Store::put`](crate::Store::put) that stops at 90% of a 50 GiB object leaves
//! nothing usable: the next run copies it from zero. A store that can keep the parts of an
//! object it is still receiving (an S3 multipart upload, a directory's temp file) offers
//! [`create_upload`](crate::Store::create_upload) and its companions; the engine records the
//! upload's id and each finished part's [`PartTag`] in its checkpoint, and after a crash sends
//! only the parts not recorded, then completes the upload and verifies the whole object.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A store's name for an upload in progress (an S3 multipart upload id, the name of a
/// directory store's temp file): opaque to everyone else, kept in checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UploadId(String);

impl UploadId {
    /// An id as the store chose it.
    pub fn new(id: impl Into<String>) -> UploadId {
        UploadId(id.into())
    }

    /// Its text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a store answered for one finished part (an S3 part's ETag; a directory store's
/// length and BLAKE3 of the part); handed back to
/// [`complete_upload`](crate::Store::complete_upload) in part order. Opaque to everyone else,
/// kept in checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartTag(String);

impl PartTag {
    /// A tag as the store made it.
    pub fn new(tag: impl Into<String>) -> PartTag {
        PartTag(tag.into())
    }

    /// Its text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PartTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
