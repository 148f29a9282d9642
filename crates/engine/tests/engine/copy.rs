//! One job from start to end: COPY → VERIFY → FORWARD → CLEANUP.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_engine::{Error, Op};
use ferry_forwarding::{Route, Table};
use ferry_store::{
    BoxFuture, BoxStream, Fault, FaultyStore, MemStore, MetaStream, Object, ObjectMeta, Store,
    Trigger, body_from_bytes,
};
use ferry_types::{CleanupPolicy, JobStatus, ObjectKey, ObjectSelection, RetryPolicy, VerifyMode};

use crate::util::*;

#[tokio::test]
async fn i1_all_objects_copied_and_sources_deleted_after_verify() {
    let source = filled(1000);
    let target = MemStore::new();
    let table = Table::default();
    let engine = mem_engine(&source, &target, &table);
    let plan = plan("i1-after-verify", ObjectSelection::all())
        .with_verify(VerifyMode::Checksum)
        .with_cleanup(CleanupPolicy::AfterVerify);
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(snap.done_objects, 1000);
    assert_eq!(snap.in_flight, 0);
    assert!(source.is_empty(), "sources are deleted after verify");
    for i in 0..1000 {
        assert_eq!(target.bytes(key(i).as_str()).unwrap(), content(i));
        assert_eq!(table.route_read(key(i).as_str()), Route::Target(b()));
    }
}

#[tokio::test]
async fn i1_sources_kept_under_cleanup_never() {
    let source = filled(200);
    let target = MemStore::new();
    let table = Table::default();
    let engine = mem_engine(&source, &target, &table);
    let plan = plan("i1-never", ObjectSelection::all())
        .with_verify(VerifyMode::Size)
        .with_cleanup(CleanupPolicy::Never);
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(source.len(), 200, "nothing deleted under Never");
    for i in 0..200 {
        assert_eq!(target.bytes(key(i).as_str()).unwrap(), content(i));
    }
}

#[tokio::test]
async fn a_prefix_moves_only_its_keys() {
    let source = filled(20);
    source.insert(ObjectKey::new("other/x").unwrap(), "x");
    let target = MemStore::new();
    let table = Table::default();
    let engine = mem_engine(&source, &target, &table);
    let plan = plan("prefix", ObjectSelection::prefix("obj/0000"))
        .with_cleanup(CleanupPolicy::AfterVerify);
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.done_objects, 10);
    assert_eq!(target.len(), 10);
    assert_eq!(source.len(), 11);
    assert!(target.bytes("other/x").is_none());
}

#[tokio::test]
async fn start_refuses_unknown_nodes_and_invalid_plans() {
    let table = Table::default();
    let engine = engine(
        Arc::new(MemStore::new()),
        Arc::new(MemStore::new()),
        &table,
        mem_checkpoints(),
    );
    let mut plan = plan("unknown", ObjectSelection::all());
    plan.target = ferry_types::NodeId::new("zzz").unwrap();
    let err = engine.start(plan).await.unwrap_err();
    assert!(
        matches!(&err, Error::UnknownNode { node } if node.as_str() == "zzz"),
        "{err}"
    );
    let bad = crate::util::plan("bad", ObjectSelection::all()).with_retry(RetryPolicy {
        max_attempts: 0,
        ..RetryPolicy::default()
    });
    let err = engine.start(bad).await.unwrap_err();
    assert!(matches!(err, Error::Plan(_)), "{err}");
}

#[tokio::test]
async fn i3_source_deleted_mid_job_is_skipped_and_absent_on_both_sides() {
    let source = filled(50);
    // Every get waits, so the deletion below lands while the job runs.
    let slow = FaultyStore::new(source.clone());
    slow.inject(
        Op::Get,
        Trigger::Always,
        Fault::Latency(Duration::from_millis(5)),
    );
    let target = MemStore::new();
    let table = Table::default();
    let engine = engine(
        Arc::new(slow),
        Arc::new(target.clone()),
        &table,
        mem_checkpoints(),
    );
    let plan = plan("vanish", ObjectSelection::keys((0..50).map(key)))
        .with_concurrency(NonZeroUsize::new(2).unwrap())
        .with_cleanup(CleanupPolicy::Never);
    let handle = engine.start(plan).await.unwrap();
    // The deleter goes through a write ticket, as the storage system must.
    let victim = key(40);
    {
        let ticket = table.try_begin_write(victim.as_str()).unwrap();
        assert_eq!(ticket.route(), Route::Source);
        source.delete(&victim).await.unwrap();
    }
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(snap.skipped_objects, 1);
    assert!(source.bytes(victim.as_str()).is_none());
    assert!(target.bytes(victim.as_str()).is_none(), "never resurrected");
    assert_eq!(table.route_read(victim.as_str()), Route::Source);
}

/// A target that, once the copy of `victim` has landed on it, deletes `victim` from `source`
/// through a write ticket (a program deleting the key while the job copies it), and records
/// at each delete of `victim` whether the table still had the key's entry.
#[derive(Debug)]
struct DeletedBehindTheCopy {
    inner: MemStore,
    source: MemStore,
    table: Table,
    victim: ObjectKey,
    entry_at_delete: std::sync::Mutex<Vec<bool>>,
}

impl Store for DeletedBehindTheCopy {
    fn head<'a>(
        &'a self,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, ferry_store::Result<Option<ObjectMeta>>> {
        self.inner.head(key)
    }

    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, ferry_store::Result<Object>> {
        self.inner.get(key)
    }

    fn put<'a>(
        &'a self,
        key: &'a ObjectKey,
        body: BoxStream<'a, ferry_store::Result<Bytes>>,
    ) -> BoxFuture<'a, ferry_store::Result<ObjectMeta>> {
        Box::pin(async move {
            let meta = self.inner.put(key, body).await?;
            if *key == self.victim {
                let ticket = self.table.begin_write(key.as_str()).await.unwrap();
                assert_eq!(ticket.route(), Route::Source);
                self.source.delete(key).await?;
            }
            Ok(meta)
        })
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, ferry_store::Result<bool>> {
        if *key == self.victim {
            let live = self.table.get(key.as_str()).is_some();
            self.entry_at_delete.lock().unwrap().push(live);
        }
        self.inner.delete(key)
    }

    fn list(&self, prefix: &str, start_after: Option<&ObjectKey>) -> MetaStream {
        self.inner.list(prefix, start_after)
    }

    fn sync(&self) -> BoxFuture<'_, ferry_store::Result<()>> {
        self.inner.sync()
    }
}

#[tokio::test]
async fn i3_a_copy_of_a_key_deleted_during_it_goes_before_the_key_s_entry() {
    let source = filled(10);
    let table = Table::default();
    let target = Arc::new(DeletedBehindTheCopy {
        inner: MemStore::new(),
        source: source.clone(),
        table: table.clone(),
        victim: key(3),
        entry_at_delete: std::sync::Mutex::new(Vec::new()),
    });
    let engine = engine(
        Arc::new(source.clone()),
        Arc::clone(&target) as Arc<dyn Store>,
        &table,
        mem_checkpoints(),
    );
    let plan = plan("behind", ObjectSelection::all()).with_cleanup(CleanupPolicy::AfterVerify);
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!((snap.skipped_objects, snap.failed_objects), (1, 0));
    assert!(
        target.inner.bytes(key(3).as_str()).is_none(),
        "never resurrected"
    );
    assert_eq!(table.route_read(key(3).as_str()), Route::Source);
    // While the copy was on the target, the entry kept reads that fall back to the target
    // (for keys moved and cleaned up) away from it.
    assert_eq!(*target.entry_at_delete.lock().unwrap(), vec![true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i3_no_acknowledged_write_is_lost_while_keys_move() {
    const N: usize = 40;
    let a_store = filled(N);
    let b_store = MemStore::new();
    let slow_a = FaultyStore::new(a_store.clone());
    slow_a.inject(
        Op::Get,
        Trigger::Always,
        Fault::Latency(Duration::from_millis(2)),
    );
    let table = Table::default();
    let engine = engine(
        Arc::new(slow_a),
        Arc::new(b_store.clone()),
        &table,
        mem_checkpoints(),
    );
    let plan = plan("writer", ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(4).unwrap())
        .with_cleanup(CleanupPolicy::Never)
        .with_max_flip_attempts(2);
    let handle = engine.start(plan).await.unwrap();
    let writer = {
        let (table, a_store, b_store) = (table.clone(), a_store.clone(), b_store.clone());
        tokio::spawn(async move {
            let mut last = vec![None; N];
            for round in 0..30u32 {
                for (i, slot) in last.iter_mut().enumerate().take(N) {
                    let k = key(i);
                    let value = Bytes::from(format!("write {round} of {i}"));
                    let ticket = table.begin_write(k.as_str()).await.unwrap();
                    let store: &dyn Store = match ticket.route() {
                        Route::Source => &a_store,
                        Route::Target(node) => {
                            assert_eq!(node, b());
                            &b_store
                        }
                    };
                    store
                        .put(&k, body_from_bytes(value.clone(), 4))
                        .await
                        .unwrap();
                    drop(ticket); // acknowledged
                    *slot = Some(value);
                }
                tokio::task::yield_now().await;
            }
            last
        })
    };
    let last = writer.await.unwrap();
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    let stats = table.stats();
    assert!(
        stats.flips_refused > 0,
        "the writer overlapped copies: {stats:?}"
    );
    for (i, value) in last.into_iter().enumerate() {
        let k = key(i);
        let read = match table.route_read(k.as_str()) {
            Route::Source => a_store.bytes(k.as_str()),
            Route::Target(_) => b_store.bytes(k.as_str()),
        };
        assert_eq!(
            read, value,
            "last acknowledged write of {k} is readable where routed"
        );
    }
}

#[tokio::test]
async fn transient_faults_are_retried_and_the_job_completes() {
    let source = filled(30);
    let faulty = FaultyStore::with_seed(MemStore::new(), 7);
    faulty.inject(Op::Put, Trigger::Call(3), Fault::Transient);
    faulty.inject(Op::Put, Trigger::Call(10), Fault::Transient);
    let faulty_source = FaultyStore::new(source.clone());
    faulty_source.inject(Op::Get, Trigger::Call(5), Fault::FailGetAfter { after: 3 });
    let table = Table::default();
    let engine = engine(
        Arc::new(faulty_source),
        Arc::new(faulty.clone()),
        &table,
        mem_checkpoints(),
    );
    let plan = plan("transient", ObjectSelection::all())
        .with_verify(VerifyMode::Checksum)
        .with_cleanup(CleanupPolicy::AfterVerify);
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(snap.done_objects, 30);
    assert_eq!(snap.failed_objects, 0);
    for i in 0..30 {
        assert_eq!(faulty.inner().bytes(key(i).as_str()).unwrap(), content(i));
    }
    assert!(source.is_empty());
}

#[tokio::test]
async fn i1_a_permanent_fault_fails_the_object_and_keeps_its_source() {
    let source = filled(10);
    let faulty = FaultyStore::new(MemStore::new());
    faulty.inject(Op::Put, Trigger::Call(1), Fault::Permanent);
    let table = Table::default();
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(faulty.clone()),
        &table,
        mem_checkpoints(),
    );
    let plan = plan("permanent", ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(1).unwrap())
        .with_cleanup(CleanupPolicy::AfterVerify);
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::CompletedWithErrors);
    assert_eq!(snap.failed_objects, 1);
    assert_eq!(snap.done_objects, 9);
    // The failed one is the first key (the first put): still on the source, read there.
    assert_eq!(source.bytes(key(0).as_str()).unwrap(), content(0));
    assert!(faulty.inner().bytes(key(0).as_str()).is_none());
    assert_eq!(table.route_read(key(0).as_str()), Route::Source);
    assert_eq!(source.len(), 1);
}

/// Objects of 8 MiB and more are re-read by two tasks at verify (the two sides hash on two
/// cores). A byte corrupted on the copy's read of the source is still caught there (I1):
/// the copy runs again and the target ends with the source's bytes; a corrupted re-read of
/// the target fails that attempt too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i1_large_objects_verified_by_two_tasks_catch_a_corrupted_read() {
    const SIZE: usize = 9 << 20;
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let big = ObjectKey::new("big/one").unwrap();
    let source = MemStore::new().without_checksums();
    source.insert(big.clone(), data.clone());
    let faulty_source = FaultyStore::new(source.clone());
    faulty_source.inject(Op::Get, Trigger::Call(1), Fault::CorruptGet { at: 5 << 20 });
    let target = FaultyStore::new(MemStore::new().without_checksums());
    // The first get of the target is the verify's re-read of the second attempt's copy.
    target.inject(Op::Get, Trigger::Call(1), Fault::CorruptGet { at: 7 << 20 });
    let table = Table::default();
    let engine = engine(
        Arc::new(faulty_source),
        Arc::new(target.clone()),
        &table,
        mem_checkpoints(),
    );
    let plan = plan("big-verify", ObjectSelection::all())
        .with_verify(VerifyMode::Checksum)
        .with_cleanup(CleanupPolicy::AfterVerify);
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(snap.done_objects, 1);
    assert_eq!(snap.failed_objects, 0);
    assert_eq!(target.inner().bytes("big/one").unwrap(), data);
    assert!(source.is_empty(), "the source went after a verified copy");
    // First attempt: corrupted copy (source read 1), caught by the source re-read (2);
    // second: copy (3), target re-read corrupted (4); third: copy (5) and clean re-reads.
    assert!(target.calls(Op::Get) >= 2, "the target was re-read");
}

/// The source's second read of a large object runs beside its copy, and a target that
/// reports the BLAKE3 of what it stored is held to that read (the stream is not hashed
/// then). A byte corrupted on either read of the source fails that attempt's verify like any
/// mismatch, nothing is deleted on it, and the next attempt moves the object whole (I1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i1_a_corrupted_read_of_a_large_object_fails_only_that_attempt() {
    // Read 1 is the copy's, read 2 the second read started beside it.
    for (call, target) in [
        (1, MemStore::new()),
        (2, MemStore::new()),
        (2, MemStore::new().without_checksums()),
    ] {
        const SIZE: usize = 9 << 20;
        let data: Vec<u8> = (0..SIZE).map(|i| (i % 249) as u8).collect();
        let big = ObjectKey::new("big/two").unwrap();
        let source = MemStore::new().without_checksums();
        source.insert(big.clone(), data.clone());
        let faulty_source = FaultyStore::new(source.clone());
        faulty_source.inject(
            Op::Get,
            Trigger::Call(call),
            Fault::CorruptGet { at: 3 << 20 },
        );
        let table = Table::default();
        let engine = engine(
            Arc::new(faulty_source.clone()),
            Arc::new(target.clone()),
            &table,
            mem_checkpoints(),
        );
        let plan = plan("big-second-read", ObjectSelection::all())
            .with_verify(VerifyMode::Checksum)
            .with_cleanup(CleanupPolicy::AfterVerify);
        let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
        assert_eq!(snap.status, JobStatus::Completed, "read {call} corrupted");
        assert_eq!(snap.failed_objects, 0);
        assert!(
            target.bytes("big/two").unwrap() == data,
            "read {call}: whole"
        );
        assert!(source.is_empty(), "the source went after a verified copy");
        // The corrupted read failed the first attempt: the object was read again after it.
        assert!(
            faulty_source.calls(Op::Get) >= 4,
            "read {call}: copied twice"
        );
    }
}

/// Regression (found by the crash loop): a key written through the table during every copy,
/// on stores that report no checksum (so verify re-reads the source). The re-read finds the
/// new content; that is a write, not a verify error: the copy runs again and counts as a
/// refused flip, so the key is fenced after `max_flip_attempts` and finishes with the last
/// acknowledged write on the target (I3), instead of failing after the retries.
#[tokio::test(start_paused = true)]
async fn i3_a_key_written_during_every_copy_is_fenced_not_failed() {
    let source = MemStore::with_chunk_size(16).without_checksums();
    let hot = key(0);
    source.insert(hot.clone(), "v0");
    let target = FaultyStore::new(MemStore::new().without_checksums());
    // Every copy's put takes a while, so the writer below gets in before each verify.
    target.inject(
        Op::Put,
        Trigger::Always,
        Fault::Latency(Duration::from_millis(10)),
    );
    let table = Table::default();
    let engine = engine(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        &table,
        mem_checkpoints(),
    );
    let plan = plan("hot-written", ObjectSelection::keys([hot.clone()]))
        .with_verify(VerifyMode::Checksum)
        .with_cleanup(CleanupPolicy::AfterVerify)
        .with_max_flip_attempts(3);
    let handle = engine.start(plan).await.unwrap();
    let mut watch = handle.watch();
    let mut last = String::from("v0");
    let mut n = 0;
    while !watch.borrow_and_update().status.is_finished() {
        n += 1;
        let ticket = table.begin_write(hot.as_str()).await.unwrap();
        let value = format!("v{n}");
        match ticket.route() {
            Route::Source => source.insert(hot.clone(), value.clone()),
            Route::Target(_) => target.inner().insert(hot.clone(), value.clone()),
        };
        drop(ticket);
        last = value;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed, "{snap:?}");
    assert_eq!(snap.failed_objects, 0);
    assert!(n > 5, "the writer ran during the copies ({n} writes)");
    assert_eq!(table.route_read(hot.as_str()), Route::Target(b()));
    assert_eq!(
        target.inner().bytes(hot.as_str()).unwrap(),
        last.as_bytes(),
        "the last acknowledged write is what the target serves"
    );
}
