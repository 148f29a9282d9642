//! `SledStore`: records in a sled 0.34.7 tree (feature `sled`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_types::JobId;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::kv::{Kv, KvStore};

/// A checkpoint store in a [sled](https://docs.rs/sled/0.34.7) database (feature `sled`).
///
/// Each job's record is one value (the [envelope](crate::envelope)) in the tree `jobs`; a
/// save is one insert followed by `flush_async().await`, so it is durable when it returns.
/// sled locks its directory, so one process opens it at a time; owners are tracked in
/// memory and fenced by the epoch in the record.
///
/// # Durability caveats of sled 0.34
/// - sled 0.34 is a beta: its on-disk format may change in a later release without an
///   upgrade path (migrating means exporting and re-importing), and the 0.34 line no longer
///   gets fixes; the 1.0 alphas are a rewrite with another format.
/// - Without a flush, writes are only durable after sled's periodic flush (every 500 ms by
///   default); this store flushes before each save returns, so that window does not apply.
/// - sled's crash safety rests on its own log and checksums and was tested by its authors,
///   not on the rename-and-fsync protocol of [`FileStore`](crate::FileStore); there are open
///   reports of high space use and of corruption after crashes for 0.34.
///
/// Pick [`FileStore`](crate::FileStore) unless the process already embeds a sled database
/// and the checkpoints should live in it.
#[derive(Debug, Clone)]
pub struct SledStore {
    inner: Arc<KvStore<SledKv>>,
}

#[derive(Debug)]
pub(crate) struct SledKv {
    path: PathBuf,
    tree: sled::Tree,
    /// Makes read-modify-write atomic between the saves of this process.
    write: Mutex<()>,
}

impl SledStore {
    /// Opens (creating it if needed) the sled database in the directory `path`.
    ///
    /// # Errors
    /// [`Error::Sled`] when sled cannot open it (e.g. another process has it open).
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore> {
        let path = path.as_ref().to_path_buf();
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(16 << 20)
            .open()
            .map_err(|e| sled_error(&path, e))?;
        SledStore::with_db(&db, path)
    }

    /// A store in the tree `jobs` of an open database, for a process that already has one.
    ///
    /// # Errors
    /// [`Error::Sled`] when the tree cannot be opened.
    pub fn with_db(db: &sled::Db, path: PathBuf) -> Result<SledStore> {
        let tree = db.open_tree("jobs").map_err(|e| sled_error(&path, e))?;
        Ok(SledStore {
            inner: Arc::new(KvStore::new(SledKv {
                path,
                tree,
                write: Mutex::new(()),
            })),
        })
    }
}

fn sled_error(path: &Path, source: sled::Error) -> Error {
    Error::Sled {
        path: path.to_path_buf(),
        source,
    }
}

impl SledKv {
    fn flush(&self) -> impl Future<Output = Result<()>> + Send + use<> {
        let tree = self.tree.clone();
        let path = self.path.clone();
        async move {
            tree.flush_async().await.map_err(|e| sled_error(&path, e))?;
            Ok(())
        }
    }
}

impl Kv for SledKv {
    fn place(&self, job: &JobId) -> PathBuf {
        self.path.join("jobs").join(job.as_str())
    }

    fn get(&self, job: &JobId) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send {
        let result = self
            .tree
            .get(job.as_str())
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| sled_error(&self.path, e));
        async move { result }
    }

    fn update<R, F>(&self, job: &JobId, f: F) -> impl Future<Output = Result<R>> + Send
    where
        R: Send + 'static,
        F: FnOnce(Option<&[u8]>) -> Result<(Option<Vec<u8>>, R)> + Send + 'static,
    {
        let result = (|| {
            let _write = self.write.lock();
            let current = self
                .tree
                .get(job.as_str())
                .map_err(|e| sled_error(&self.path, e))?;
            let (new, r) = f(current.as_deref())?;
            if let Some(new) = new {
                self.tree
                    .insert(job.as_str(), new)
                    .map_err(|e| sled_error(&self.path, e))?;
            }
            Ok(r)
        })();
        let flush = self.flush();
        async move {
            let r = result?;
            flush.await?;
            Ok(r)
        }
    }

    fn remove(&self, job: &JobId) -> impl Future<Output = Result<bool>> + Send {
        let result = {
            let _write = self.write.lock();
            self.tree
                .remove(job.as_str())
                .map(|old| old.is_some())
                .map_err(|e| sled_error(&self.path, e))
        };
        let flush = self.flush();
        async move {
            let removed = result?;
            flush.await?;
            Ok(removed)
        }
    }

    fn jobs(&self) -> impl Future<Output = Result<Vec<JobId>>> + Send {
        let result = self
            .tree
            .iter()
            .keys()
            .filter_map(|k| match k {
                Ok(k) => std::str::from_utf8(&k)
                    .ok()
                    .and_then(|s| JobId::new(s).ok())
                    .map(Ok),
                Err(e) => Some(Err(sled_error(&self.path, e))),
            })
            .collect::<Result<Vec<_>>>();
        async move { result }
    }
}

crate::delegate_store!(SledStore);
