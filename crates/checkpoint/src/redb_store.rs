//! `RedbStore`: records in a redb table (feature `redb`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_types::JobId;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{Error, Result};
use crate::kv::{Kv, KvStore};

const JOBS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("jobs");

/// A checkpoint store in a [redb](https://docs.rs/redb) database file (feature `redb`).
///
/// Each job's record is one value (the [envelope](crate::envelope)) in the table `jobs`. A
/// save is one write transaction (read the record, check the epoch, write the new one)
/// committed with redb's default `Durability::Immediate`: redb's copy-on-write B-tree and
/// two-phase commit make the commit atomic and durable (fsync) before it returns. All redb
/// calls run on tokio's blocking threads. redb locks its file, so one process opens it at a
/// time; owners are tracked in memory and fenced by the epoch in the record.
#[derive(Debug, Clone)]
pub struct RedbStore {
    inner: Arc<KvStore<RedbKv>>,
}

#[derive(Debug)]
pub(crate) struct RedbKv {
    path: PathBuf,
    db: Arc<redb::Database>,
}

fn redb_error(path: &Path, e: impl Into<redb::Error>) -> Error {
    Error::Redb {
        path: path.to_path_buf(),
        source: Box::new(e.into()),
    }
}

impl RedbStore {
    /// Opens (creating it if needed) the redb database file `path`.
    ///
    /// # Errors
    /// [`Error::Redb`] when redb cannot open it (e.g. another process has it open).
    pub fn open(path: impl AsRef<Path>) -> Result<RedbStore> {
        let path = path.as_ref().to_path_buf();
        let db = redb::Database::create(&path).map_err(|e| redb_error(&path, e))?;
        let txn = db.begin_write().map_err(|e| redb_error(&path, e))?;
        txn.open_table(JOBS).map_err(|e| redb_error(&path, e))?;
        txn.commit().map_err(|e| redb_error(&path, e))?;
        Ok(RedbStore {
            inner: Arc::new(KvStore::new(RedbKv {
                path,
                db: Arc::new(db),
            })),
        })
    }
}

impl RedbKv {
    /// Runs `f` with the database on a blocking thread.
    fn blocking<T, F>(&self, f: F) -> impl Future<Output = Result<T>> + Send + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&redb::Database, &Path) -> Result<T> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let path = self.path.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&db, &path))
                .await
                .map_err(|e| Error::Task {
                    job: "-".to_owned(),
                    source: e,
                })?
        }
    }
}

impl Kv for RedbKv {
    fn place(&self, job: &JobId) -> PathBuf {
        self.path.join("jobs").join(job.as_str())
    }

    fn get(&self, job: &JobId) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send {
        let job = job.clone();
        self.blocking(move |db, path| {
            let txn = db.begin_read().map_err(|e| redb_error(path, e))?;
            let table = txn.open_table(JOBS).map_err(|e| redb_error(path, e))?;
            let value = table
                .get(job.as_str())
                .map_err(|e| redb_error(path, e))?
                .map(|v| v.value().to_vec());
            Ok(value)
        })
    }

    fn update<R, F>(&self, job: &JobId, f: F) -> impl Future<Output = Result<R>> + Send
    where
        R: Send + 'static,
        F: FnOnce(Option<&[u8]>) -> Result<(Option<Vec<u8>>, R)> + Send + 'static,
    {
        let job = job.clone();
        self.blocking(move |db, path| {
            let txn = db.begin_write().map_err(|e| redb_error(path, e))?;
            let r = {
                let mut table = txn.open_table(JOBS).map_err(|e| redb_error(path, e))?;
                let current = table
                    .get(job.as_str())
                    .map_err(|e| redb_error(path, e))?
                    .map(|v| v.value().to_vec());
                let (new, r) = f(current.as_deref())?;
                if let Some(new) = new {
                    table
                        .insert(job.as_str(), new.as_slice())
                        .map_err(|e| redb_error(path, e))?;
                }
                r
            };
            txn.commit().map_err(|e| redb_error(path, e))?;
            Ok(r)
        })
    }

    fn remove(&self, job: &JobId) -> impl Future<Output = Result<bool>> + Send {
        let job = job.clone();
        self.blocking(move |db, path| {
            let txn = db.begin_write().map_err(|e| redb_error(path, e))?;
            let removed = {
                let mut table = txn.open_table(JOBS).map_err(|e| redb_error(path, e))?;
                table
                    .remove(job.as_str())
                    .map_err(|e| redb_error(path, e))?
                    .is_some()
            };
            txn.commit().map_err(|e| redb_error(path, e))?;
            Ok(removed)
        })
    }

    fn jobs(&self) -> impl Future<Output = Result<Vec<JobId>>> + Send {
        self.blocking(move |db, path| {
            let txn = db.begin_read().map_err(|e| redb_error(path, e))?;
            let table = txn.open_table(JOBS).map_err(|e| redb_error(path, e))?;
            let mut jobs = Vec::new();
            for entry in table.iter().map_err(|e| redb_error(path, e))? {
                let (key, _) = entry.map_err(|e| redb_error(path, e))?;
                if let Ok(job) = JobId::new(key.value()) {
                    jobs.push(job);
                }
            }
            Ok(jobs)
        })
    }
}

crate::delegate_store!(RedbStore);
