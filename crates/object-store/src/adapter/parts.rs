//! Uploads in parts that outlive the process: object_store's [`MultipartStore`] (S3, GCS,
//! Azure, `InMemory`), whose upload ids and part ETags the engine keeps in its checkpoint.

use std::sync::Arc;

use bytes::Bytes;
use ferry_store::{BoxStream, Error, ObjectMeta, Op, PartTag, Result, UploadId};
use ferry_types::ObjectKey;
use futures_util::StreamExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use super::{ObjectStoreAdapter, classify, op_error};
use ferry_store::ErrorKind;

/// The backend's multipart API, and the prefix the adapter's store puts before every path
/// (object_store's `PrefixStore` has no multipart API of its own).
#[derive(Clone)]
pub(crate) struct Multipart {
    pub(super) store: Arc<dyn MultipartStore>,
    pub(super) prefix: Option<Path>,
}

impl std::fmt::Debug for Multipart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Multipart")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// `err`, with "not found" (S3's `NoSuchUpload`) naming the upload: its parts must be sent
/// again under a new one.
fn upload_error(key: &ObjectKey, upload: &UploadId, err: object_store::Error) -> Error {
    if classify(&err) == ErrorKind::NotFound {
        return Error::UploadNotFound {
            key: key.clone(),
            upload: upload.as_str().to_owned(),
        };
    }
    op_error(Op::Put, Some(key), err)
}

impl ObjectStoreAdapter {
    /// The backend's path of `key`, prefix included.
    fn full_path(&self, multipart: &Multipart, key: &ObjectKey) -> Result<Path> {
        let path = self.path(key)?;
        Ok(match &multipart.prefix {
            Some(prefix) => prefix.parts().chain(path.parts()).collect(),
            None => path,
        })
    }

    pub(super) async fn create_upload_inner(&self, key: &ObjectKey) -> Result<Option<UploadId>> {
        let Some(multipart) = &self.multipart else {
            return Ok(None);
        };
        let path = self.full_path(multipart, key)?;
        let id = multipart
            .store
            .create_multipart(&path)
            .await
            .map_err(|e| op_error(Op::Put, Some(key), e))?;
        Ok(Some(UploadId::new(id)))
    }

    pub(super) async fn put_part_inner(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        part: u32,
        mut body: BoxStream<'_, Result<Bytes>>,
    ) -> Result<PartTag> {
        let Some(multipart) = &self.multipart else {
            return Err(ferry_store::Error::UploadNotFound {
                key: key.clone(),
                upload: upload.as_str().to_owned(),
            });
        };
        let path = self.full_path(multipart, key)?;
        // The part is sent in one request: its chunks are held (a part, at most the size the
        // engine chose, I7), not copied.
        let mut chunks = Vec::new();
        while let Some(chunk) = body.next().await {
            chunks.push(chunk?);
        }
        let payload: PutPayload = chunks.into_iter().collect();
        let index = part.checked_sub(1).ok_or_else(|| Error::Permanent {
            op: Op::Put,
            key: Some(key.clone()),
            source: "parts are numbered from 1".into(),
        })?;
        let id = multipart
            .store
            .put_part(&path, &upload.as_str().to_owned(), index as usize, payload)
            .await
            .map_err(|e| upload_error(key, upload, e))?;
        Ok(PartTag::new(id.content_id))
    }

    pub(super) async fn complete_upload_inner(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        parts: &[PartTag],
    ) -> Result<ObjectMeta> {
        let Some(multipart) = &self.multipart else {
            return Err(ferry_store::Error::UploadNotFound {
                key: key.clone(),
                upload: upload.as_str().to_owned(),
            });
        };
        let path = self.full_path(multipart, key)?;
        let parts = parts
            .iter()
            .map(|tag| PartId {
                content_id: tag.as_str().to_owned(),
            })
            .collect();
        multipart
            .store
            .complete_multipart(&path, &upload.as_str().to_owned(), parts)
            .await
            .map_err(|e| upload_error(key, upload, e))?;
        // What the backend stored, as `head` gives it (a multipart ETag, the size).
        let relative = self.path(key)?;
        let meta = self
            .store
            .head(&relative)
            .await
            .map_err(|e| op_error(Op::Put, Some(key), e))?;
        Ok(super::convert_meta(key.clone(), &meta))
    }

    pub(super) async fn abort_upload_inner(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
    ) -> Result<()> {
        let Some(multipart) = &self.multipart else {
            return Ok(());
        };
        let path = self.full_path(multipart, key)?;
        match multipart
            .store
            .abort_multipart(&path, &upload.as_str().to_owned())
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if classify(&e) == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(op_error(Op::Delete, Some(key), e)),
        }
    }
}
