//! Checkpoint records in an object store, for [`ferry_checkpoint::LeasedStore`]: one object
//! per job under `<prefix>/jobs/<ID>`, changed only by conditional writes (`If-None-Match: *`
//! to create, `If-Match: <ETag>` to replace).

use std::sync::Arc;

use bytes::Bytes;
use ferry_checkpoint::{
    BoxFuture, Condition, Error, Result, SharedRecords, Tag, Versioned, Written,
};
use ferry_types::JobId;
use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use crate::adapter::open_url;

/// Job records in an object store, with conditional writes: pass it to
/// [`LeasedStore`](ferry_checkpoint::LeasedStore) to share jobs between machines.
///
/// S3 (and servers that implement `If-Match` / `If-None-Match` on PUT, as AWS S3 has since
/// 2024), GCS and Azure support conditional writes; `file://` does not (object_store's local
/// backend cannot replace a file conditionally), and is refused by the first write.
///
/// # Example
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use ferry_checkpoint::{CheckpointStore, LeasedStore};
/// use ferry_object_store::ObjectRecords;
/// use ferry_types::{JobId, MigrationPlan, NodeId, ObjectSelection};
///
/// let records = ObjectRecords::from_url("memory://ferry-state")?;
/// let store = LeasedStore::new(Arc::new(records));
/// let job = JobId::new("drain-7")?;
/// let plan = MigrationPlan::new(NodeId::new("a")?, NodeId::new("b")?, ObjectSelection::all());
/// store.create(&job, &plan).await?;
/// let lease = store.acquire(&job).await?.lease;
/// assert_eq!(lease.epoch(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ObjectRecords {
    store: Arc<dyn ObjectStore>,
    /// The URL, for messages.
    url: String,
}

impl ObjectRecords {
    /// The records under a URL's prefix: `s3://bucket/ferry-state` keeps job `x` in
    /// `s3://bucket/ferry-state/jobs/x`. The URL is read as
    /// [`ObjectStoreAdapter::from_url`](crate::ObjectStoreAdapter::from_url) reads it.
    ///
    /// # Errors
    /// The errors of [`ObjectStoreAdapter::from_url`](crate::ObjectStoreAdapter::from_url).
    pub fn from_url(url: &str) -> crate::Result<ObjectRecords> {
        Ok(ObjectRecords::new(open_url(url)?.store, url))
    }

    /// The records in a store built by hand; `url` names it in messages.
    pub fn new(store: Arc<dyn ObjectStore>, url: &str) -> ObjectRecords {
        ObjectRecords {
            store,
            url: url.trim_end_matches('/').to_owned(),
        }
    }

    fn path(job: &JobId) -> Path {
        Path::from_iter(["jobs", job.as_str()])
    }

    fn remote(&self, op: &'static str, job: Option<&JobId>, source: object_store::Error) -> Error {
        Error::Remote {
            op,
            place: match job {
                Some(job) => self.place(job),
                None => format!("{}/jobs/", self.url),
            },
            source: Box::new(source),
        }
    }
}

impl SharedRecords for ObjectRecords {
    fn place(&self, job: &JobId) -> String {
        format!("{}/jobs/{job}", self.url)
    }

    fn read<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<Option<Versioned>>> {
        Box::pin(async move {
            let got = match self.store.get(&Self::path(job)).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(self.remote("read", Some(job), e)),
            };
            let Some(tag) = got.meta.e_tag.clone() else {
                return Err(Error::Remote {
                    op: "read",
                    place: self.place(job),
                    source: "the store returned no ETag, which conditional writes need".into(),
                });
            };
            let bytes = got
                .bytes()
                .await
                .map_err(|e| self.remote("read", Some(job), e))?;
            Ok(Some((bytes.to_vec(), Tag(tag))))
        })
    }

    fn write<'a>(
        &'a self,
        job: &'a JobId,
        bytes: Vec<u8>,
        condition: Condition,
    ) -> BoxFuture<'a, Result<Written>> {
        Box::pin(async move {
            let mode = match condition {
                Condition::Absent => PutMode::Create,
                Condition::Matches(Tag(e_tag)) => PutMode::Update(UpdateVersion {
                    e_tag: Some(e_tag),
                    version: None,
                }),
            };
            let options = PutOptions {
                mode,
                ..PutOptions::default()
            };
            let payload = PutPayload::from(Bytes::from(bytes));
            match self
                .store
                .put_opts(&Self::path(job), payload, options)
                .await
            {
                Ok(result) => Ok(Written::Done(Tag(result.e_tag.unwrap_or_default()))),
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
                    | object_store::Error::NotFound { .. },
                ) => Ok(Written::Conflict),
                Err(e) => Err(self.remote("write", Some(job), e)),
            }
        })
    }

    fn remove<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let path = Self::path(job);
            match self.store.head(&path).await {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(self.remote("delete", Some(job), e)),
            }
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
                Err(e) => Err(self.remote("delete", Some(job), e)),
            }
        })
    }

    fn jobs(&self) -> BoxFuture<'_, Result<Vec<JobId>>> {
        Box::pin(async move {
            let prefix = Path::from("jobs");
            let listed: Vec<_> = self
                .store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(|e| self.remote("list", None, e))?;
            let mut jobs: Vec<JobId> = listed
                .iter()
                .filter_map(|meta| meta.location.filename())
                .filter_map(|name| JobId::new(name).ok())
                .collect();
            jobs.sort();
            jobs.dedup();
            Ok(jobs)
        })
    }
}
