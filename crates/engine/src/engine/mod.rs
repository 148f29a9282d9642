//! The job runner: [`Engine`], its builder and [`JobHandle`].
//!
//! An engine holds the storage nodes (`NodeId → Arc<dyn Store>`), the checkpoint store, the
//! forwarding table and a global throttle. [`Engine::start`] runs one migration plan as a job
//! on a background task and returns a [`JobHandle`] to watch, pause, throttle, cancel and
//! wait for it. See the crate docs for what is implemented so far.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_checkpoint::{CheckpointStore, Checkpointer};
use ferry_forwarding::Table;
use ferry_throttle::Throttle;
use ferry_types::{JobId, JobStatus, MigrationPlan, NodeId, ObjectSelection};

use crate::error::{Error, Result};
use crate::store::Store;

mod job;
mod pipeline;

pub use self::job::{CancelReport, JobHandle};

/// Runs migration jobs between the storage nodes it was built with.
///
/// Cheap to clone: clones share the nodes, the checkpoint store, the table and the throttle.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

#[derive(Debug)]
pub(crate) struct EngineInner {
    pub(crate) nodes: HashMap<NodeId, Arc<dyn Store>>,
    pub(crate) checkpoints: Arc<dyn CheckpointStore>,
    pub(crate) table: Table,
    pub(crate) global: Throttle,
}

/// Builds an [`Engine`]: [`Engine::builder`].
#[derive(Debug, Default)]
pub struct EngineBuilder {
    nodes: HashMap<NodeId, Arc<dyn Store>>,
    checkpoints: Option<Arc<dyn CheckpointStore>>,
    table: Option<Table>,
    global: Option<Throttle>,
}

impl EngineBuilder {
    /// Adds (or replaces) a storage node.
    #[must_use]
    pub fn node(mut self, id: NodeId, store: Arc<dyn Store>) -> Self {
        self.nodes.insert(id, store);
        self
    }

    /// The checkpoint store jobs are recorded in (required).
    #[must_use]
    pub fn checkpoint_store(mut self, store: Arc<dyn CheckpointStore>) -> Self {
        self.checkpoints = Some(store);
        self
    }

    /// The forwarding table the storage system routes through (default: a new table with the
    /// default configuration). The engine keeps a clone; clones share the table.
    #[must_use]
    pub fn forwarding(mut self, table: Table) -> Self {
        self.table = Some(table);
        self
    }

    /// The throttle every job's throttle sits within (default: unlimited).
    #[must_use]
    pub fn global_throttle(mut self, throttle: Throttle) -> Self {
        self.global = Some(throttle);
        self
    }

    /// Builds the engine.
    ///
    /// # Errors
    /// [`Error::MissingPart`] when no checkpoint store was given.
    pub fn build(self) -> Result<Engine> {
        let checkpoints = self.checkpoints.ok_or(Error::MissingPart {
            missing: "checkpoint_store",
        })?;
        Ok(Engine {
            inner: Arc::new(EngineInner {
                nodes: self.nodes,
                checkpoints,
                table: self.table.unwrap_or_default(),
                global: self.global.unwrap_or_else(Throttle::unlimited),
            }),
        })
    }
}

static NEXT_JOB: AtomicU64 = AtomicU64::new(1);

impl Engine {
    /// A builder with no node, no checkpoint store, a default table and no global limit.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// The forwarding table (a clone shares it): what the storage system routes reads and
    /// writes through while jobs run.
    pub fn forwarding(&self) -> &Table {
        &self.inner.table
    }

    /// The store of `node`, if the engine has one.
    pub fn node(&self, node: &NodeId) -> Option<&Arc<dyn Store>> {
        self.inner.nodes.get(node)
    }

    /// Starts (or resumes) the job of `plan` on a background task.
    ///
    /// The plan is validated and its nodes looked up. Without an id the job gets a fresh one.
    /// When the checkpoint store already has a record of that id that is not finished, the
    /// job resumes from its checkpoint: objects recorded done are not copied again (SPEC I4).
    /// The job's lease is acquired before anything moves (I6).
    ///
    /// # Errors
    /// [`Error::Plan`] for an invalid plan, [`Error::UnknownNode`] for a node the engine does
    /// not have, [`Error::JobFinished`] for the id of a finished job, [`Error::Checkpoint`]
    /// when the record cannot be created, loaded or acquired (e.g. another owner holds it),
    /// [`Error::Throttle`] when the job's throttle cannot be built.
    ///
    /// # Panics
    /// When called outside a tokio runtime (the job runs on a spawned task).
    ///
    /// # Cancel safety
    /// A dropped call may leave the job's record created and its lease held by this process.
    pub async fn start(&self, plan: MigrationPlan) -> Result<JobHandle> {
        plan.validate()?;
        let source = self.store_of(&plan.source)?;
        let target = self.store_of(&plan.target)?;
        let id = match &plan.id {
            Some(id) => id.clone(),
            None => fresh_job_id()?,
        };
        let plan = plan.with_id(id.clone());
        let store = &self.inner.checkpoints;
        let resumed = match store.load(&id).await? {
            None => {
                store.create(&id, &plan).await?;
                false
            }
            Some(loaded) => {
                let status = loaded.record.status;
                if status.is_terminal() || status == JobStatus::CompletedWithErrors {
                    return Err(Error::JobFinished { job: id, status });
                }
                true
            }
        };
        let acquired = store.acquire(&id).await?;
        let throttle = Throttle::builder()
            .rate(plan.options.rate)
            .chunk_size(plan.options.chunk_size)
            .within(&self.inner.global)
            .build()?;
        let progress = acquired.record.progress;
        let checkpointer = Checkpointer::new(
            Arc::clone(store),
            acquired.lease,
            progress.clone(),
            JobStatus::Running,
            plan.options.checkpoint,
        );
        let total_objects = match &plan.objects {
            ObjectSelection::Keys(keys) => Some(keys.len() as u64),
            _ => None,
        };
        let shared = job::JobShared::new(&plan, id, throttle, total_objects, &progress);
        let ctx = pipeline::JobCtx {
            engine: Arc::clone(&self.inner),
            plan,
            source,
            target,
            shared: Arc::clone(&shared),
            resumed,
        };
        let task = tokio::spawn(pipeline::run(Arc::new(ctx), checkpointer, progress));
        Ok(JobHandle::new(shared, task))
    }

    fn store_of(&self, node: &NodeId) -> Result<Arc<dyn Store>> {
        self.inner
            .nodes
            .get(node)
            .cloned()
            .ok_or_else(|| Error::UnknownNode { node: *node })
    }
}

fn fresh_job_id() -> Result<JobId> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = NEXT_JOB.fetch_add(1, Ordering::Relaxed);
    Ok(JobId::new(format!("job-{nanos}-{n}"))?)
}
