//! `MemoryStore`: records in a map, for tests and for embedding without persistence.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use ferry_types::JobId;
use parking_lot::Mutex;

use crate::error::Result;
use crate::kv::{Kv, KvStore};

/// A checkpoint store in memory: nothing survives the process.
///
/// Records still go through the [envelope](crate::envelope) (encoded on save, decoded and
/// checked on load), so code tested against it exercises the same encoding as the durable
/// stores. Clones share the same records and the same owners, like `Arc`s.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<KvStore<MemKv>>,
}

#[derive(Debug, Default)]
pub(crate) struct MemKv {
    records: Mutex<BTreeMap<JobId, Vec<u8>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore {
            inner: Arc::new(KvStore::new(MemKv::default())),
        }
    }

    /// The raw envelope bytes of `job`'s record, for tests and tools.
    pub fn raw(&self, job: &JobId) -> Option<Vec<u8>> {
        self.inner.kv().records.lock().get(job).cloned()
    }

    /// Replaces the raw bytes of `job`'s record (e.g. to test how corruption is reported).
    pub fn set_raw(&self, job: &JobId, bytes: Vec<u8>) {
        self.inner.kv().records.lock().insert(job.clone(), bytes);
    }
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore::new()
    }
}

impl Kv for MemKv {
    fn place(&self, job: &JobId) -> PathBuf {
        PathBuf::from(format!("memory/jobs/{job}"))
    }

    fn get(&self, job: &JobId) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send {
        let bytes = self.records.lock().get(job).cloned();
        async move { Ok(bytes) }
    }

    fn update<R, F>(&self, job: &JobId, f: F) -> impl Future<Output = Result<R>> + Send
    where
        R: Send + 'static,
        F: FnOnce(Option<&[u8]>) -> Result<(Option<Vec<u8>>, R)> + Send + 'static,
    {
        let result = {
            let mut records = self.records.lock();
            f(records.get(job).map(Vec::as_slice)).map(|(new, r)| {
                if let Some(new) = new {
                    records.insert(job.clone(), new);
                }
                r
            })
        };
        async move { result }
    }

    fn remove(&self, job: &JobId) -> impl Future<Output = Result<bool>> + Send {
        let removed = self.records.lock().remove(job).is_some();
        async move { Ok(removed) }
    }

    fn jobs(&self) -> impl Future<Output = Result<Vec<JobId>>> + Send {
        let jobs = self.records.lock().keys().cloned().collect();
        async move { Ok(jobs) }
    }
}

crate::delegate_store!(MemoryStore);
