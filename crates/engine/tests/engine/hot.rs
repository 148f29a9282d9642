//! Hot keys: a key written during every copy is fenced and flipped on its own (SPEC I3). The
//! fence holds every writer of the key, so it must be short: never held across a pause,
//! never stretched by the rate limit, never longer than the plan's `fence_timeout`.

use std::sync::Arc;
use std::time::Duration;

use ferry_checkpoint::CheckpointStore;
use ferry_engine::{Engine, Op};
use ferry_forwarding::{EntryState, Route, Table};
use ferry_store::{Fault, FaultyStore, MemStore};
use ferry_types::{
    ByteSize, CleanupPolicy, JobId, JobStatus, MigrationPlan, ObjectKey, ObjectSelection, Rate,
    VerifyMode,
};

use crate::util::*;

struct Hot {
    source: MemStore,
    target: FaultyStore<MemStore>,
    table: Table,
    checkpoints: Arc<dyn CheckpointStore>,
    key: ObjectKey,
}

/// One key of 64 bytes (four chunks of 16) on stores that report no checksum, so verify
/// re-reads the source and sees every write; each put on the target takes 10 ms, so a
/// writer every 3 ms gets in during every copy.
fn hot() -> Hot {
    let source = MemStore::with_chunk_size(16).without_checksums();
    let key = key(0);
    source.insert(key.clone(), vec![b'0'; 64]);
    let target = FaultyStore::new(MemStore::new().without_checksums());
    target.inject(
        Op::Put,
        ferry_store::Trigger::Always,
        Fault::Latency(Duration::from_millis(10)),
    );
    Hot {
        source,
        target,
        table: Table::default(),
        checkpoints: mem_checkpoints(),
        key,
    }
}

impl Hot {
    fn engine(&self) -> ferry_engine::Engine {
        engine(
            Arc::new(self.source.clone()),
            Arc::new(self.target.clone()),
            &self.table,
            Arc::clone(&self.checkpoints),
        )
    }

    fn plan(&self, id: &str) -> MigrationPlan {
        plan(id, ObjectSelection::keys([self.key.clone()]))
            .with_verify(VerifyMode::Checksum)
            .with_cleanup(CleanupPolicy::AfterVerify)
            .with_max_flip_attempts(2)
            .with_chunk_size(ByteSize::b(16))
    }

    /// One write through the table, as a client makes it; returns what it wrote.
    async fn write(&self, n: usize) -> Result<Vec<u8>, ferry_forwarding::Error> {
        let ticket = self.table.begin_write(self.key.as_str()).await?;
        let value = format!("write {n:>58}").into_bytes();
        match ticket.route() {
            Route::Source => self.source.insert(self.key.clone(), value.clone()),
            Route::Target(_) => self.target.inner().insert(self.key.clone(), value.clone()),
        };
        Ok(value)
    }

    /// Writes every 3 ms until the engine fences the key; returns the writes made.
    async fn write_until_fenced(&self) -> usize {
        for n in 1..10_000 {
            if self
                .table
                .get(self.key.as_str())
                .is_some_and(|info| info.state == EntryState::Fenced)
            {
                return n;
            }
            self.write(n).await.unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        panic!("the key was never fenced");
    }
}

/// Hole D of the engine-wing review: a pause that comes while a hot key is fenced must not
/// keep the fence up for the whole pause. The fenced copy runs to its flip; a writer that
/// arrives during the pause gets through (to the target) instead of timing out.
#[tokio::test(start_paused = true)]
async fn i3_a_pause_never_keeps_a_hot_key_fenced() {
    let hot = hot();
    let handle = hot.engine().start(hot.plan("hot-pause")).await.unwrap();
    let n = hot.write_until_fenced().await;
    handle.pause().await;
    let paused_at = tokio::time::Instant::now();
    // The table's fence timeout (5 s) is how long a writer waits on a fence.
    let value = hot
        .write(n)
        .await
        .expect("a writer gets through while the job is paused");
    assert!(paused_at.elapsed() < Duration::from_secs(1));
    assert_eq!(hot.table.route_read(hot.key.as_str()), Route::Target(b()));
    assert_eq!(handle.snapshot().status, JobStatus::Paused);
    handle.resume();
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed, "{snap:?}");
    assert_eq!(hot.target.inner().bytes(hot.key.as_str()).unwrap(), value);
    assert!(hot.source.is_empty());
}

/// Hole D, second half: under a rate limit a hot key's fenced copy would take as long as the
/// throttle makes it (here 64 bytes at 8 B/s: 8 s, longer than a writer waits). The fenced
/// copy does not wait for the throttle; its bytes are paid once the fence is lifted (as
/// debt the next bytes wait for), so the job's rate still holds.
#[tokio::test(start_paused = true)]
async fn i3_a_rate_limit_never_stretches_a_hot_keys_fence() {
    let hot = hot();
    let plan = hot
        .plan("hot-rate")
        .with_rate(Rate::bytes_per_sec(8).unwrap());
    let handle = hot.engine().start(plan).await.unwrap();
    let n = hot.write_until_fenced().await;
    let fenced_at = tokio::time::Instant::now();
    let value = hot
        .write(n)
        .await
        .expect("the fence lifts before a writer's wait runs out");
    assert!(fenced_at.elapsed() < Duration::from_secs(1));
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed, "{snap:?}");
    assert_eq!(hot.target.inner().bytes(hot.key.as_str()).unwrap(), value);
}

/// Hole F of the engine-wing review: `fence_timeout` bounds how long the engine holds a
/// fence. A fenced copy slower than it (each put takes 10 ms here, the timeout is 5 ms)
/// gives up: the fence is lifted, writers go on to the source, the source is kept, and the
/// object fails with a reason that says why.
#[tokio::test(start_paused = true)]
async fn i3_a_fence_is_never_held_longer_than_the_plans_fence_timeout() {
    let hot = hot();
    let plan = hot
        .plan("hot-timeout")
        .with_fence_timeout(Duration::from_millis(5));
    let handle = hot.engine().start(plan).await.unwrap();
    let n = hot.write_until_fenced().await;
    let fenced_at = tokio::time::Instant::now();
    let value = hot.write(n).await.expect("the fence is lifted");
    assert!(fenced_at.elapsed() <= Duration::from_millis(50));
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::CompletedWithErrors, "{snap:?}");
    assert_eq!(hot.table.route_read(hot.key.as_str()), Route::Source);
    assert_eq!(hot.source.bytes(hot.key.as_str()).unwrap(), value);
    let record = hot
        .checkpoints
        .load(&JobId::new("hot-timeout").unwrap())
        .await
        .unwrap()
        .unwrap()
        .record;
    let failure = &record.progress.failed[&hot.key];
    assert_eq!(failure.kind, ferry_types::FailureKind::HotKey);
    assert!(
        failure.last_error.contains("written too often to move"),
        "{failure:?}"
    );
}

/// A hot key's flip, made on its own under the fence, is journaled committed with its commit
/// batch like a batch's flip: when the commit hook then fails (the source kept, the object
/// failed, the target serving the key and taking its writes), a restart's `recover` forwards
/// the key again, so the write made through the flip is never read back as the stale
/// source (I3, hole A's rule on the hot-key path).
#[tokio::test(start_paused = true)]
async fn i3_a_hot_keys_flip_is_never_forgotten_when_its_commit_fails() {
    let hot = hot();
    let failing_engine = |table: &Table| {
        Engine::builder()
            .node(a(), Arc::new(hot.source.clone()))
            .node(b(), Arc::new(hot.target.clone()))
            .checkpoint_store(Arc::clone(&hot.checkpoints))
            .forwarding(table.clone())
            .commit_hook(|_, _| Box::pin(async { Err("the placement service is down".into()) }))
            .build()
            .unwrap()
    };
    let handle = failing_engine(&hot.table)
        .start(hot.plan("hot-hook"))
        .await
        .unwrap();
    hot.write_until_fenced().await;
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::CompletedWithErrors, "{snap:?}");
    assert_eq!(hot.table.route_read(hot.key.as_str()), Route::Target(b()));
    // A write through the flip: it lands on the target.
    let value = hot.write(9_999).await.unwrap();
    let record = hot
        .checkpoints
        .load(&JobId::new("hot-hook").unwrap())
        .await
        .unwrap()
        .unwrap()
        .record;
    assert_eq!(
        record.progress.failed[&hot.key].kind,
        ferry_types::FailureKind::CommitHook
    );
    assert!(
        record
            .progress
            .flips
            .get(&hot.key)
            .is_some_and(|f| f.committed),
        "{:?}",
        record.progress.flips
    );
    // A restarted process: a new table; `recover` forwards the committed flip again.
    let table = Table::default();
    failing_engine(&table).recover().await.unwrap();
    assert_eq!(table.route_read(hot.key.as_str()), Route::Target(b()));
    assert_eq!(hot.target.inner().bytes(hot.key.as_str()).unwrap(), value);
}
