//! Check jobs (`JobKind::Check`): both sides compared, nothing written, forwarded or deleted;
//! each difference recorded as a failed object of its kind; resumable (I4), throttled.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use ferry_checkpoint::{CheckpointStore, FileStore};
use ferry_engine::{Engine, Error, Op};
use ferry_forwarding::Table;
use ferry_store::{DirStore, FaultyStore, MemStore, Store};
use ferry_types::{
    FailureKind, JobId, JobKind, JobStatus, KeyRange, MigrationPlan, ObjectKey, ObjectSelection,
    Rate,
};

use crate::util::*;

fn check_plan(id: &str, objects: ObjectSelection) -> MigrationPlan {
    plan(id, objects).with_kind(JobKind::Check)
}

fn k(name: &str) -> ObjectKey {
    ObjectKey::new(name).unwrap()
}

/// The differences a job's record holds, by key.
async fn differences(
    checkpoints: &dyn CheckpointStore,
    id: &str,
) -> BTreeMap<ObjectKey, FailureKind> {
    let loaded = checkpoints
        .load(&JobId::new(id).unwrap())
        .await
        .unwrap()
        .unwrap();
    loaded
        .record
        .progress
        .failed
        .into_iter()
        .map(|(key, failure)| (key, failure.kind))
        .collect()
}

/// `n` objects as `util::fill` makes them.
fn tree(n: usize) -> BTreeMap<ObjectKey, Vec<u8>> {
    (0..n).map(|i| (key(i), content(i))).collect()
}

/// `tree(n)` but for four differences of every kind: `obj/00003` missing, `obj/99999`
/// extra, `obj/00005` of another size, `obj/00007` of the same size with other bytes.
fn differing_tree(n: usize) -> BTreeMap<ObjectKey, Vec<u8>> {
    let mut tree = tree(n);
    tree.remove(&key(3));
    tree.insert(k("obj/99999"), b"only on the target".to_vec());
    tree.insert(key(5), b"another size".to_vec());
    let same_size = tree.get_mut(&key(7)).unwrap();
    same_size[0] ^= 1;
    tree
}

/// `store` holding `tree`.
fn holding(store: MemStore, tree: BTreeMap<ObjectKey, Vec<u8>>) -> MemStore {
    for (key, bytes) in tree {
        store.insert(key, bytes);
    }
    store
}

/// A target holding `n` objects with the four differences of [`differing_tree`].
fn differing_target(n: usize, target: MemStore) -> MemStore {
    holding(target, differing_tree(n))
}

fn expected_differences() -> BTreeMap<ObjectKey, FailureKind> {
    BTreeMap::from([
        (key(3), FailureKind::MissingOnTarget),
        (key(5), FailureKind::Differs),
        (key(7), FailureKind::Differs),
        (k("obj/99999"), FailureKind::ExtraOnTarget),
    ])
}

#[tokio::test(start_paused = true)]
async fn equal_trees_check_completed_with_no_difference() {
    let (source, target) = (filled(20), filled(20));
    let checkpoints = mem_checkpoints();
    let engine = engine(
        Arc::new(source),
        Arc::new(target),
        &Table::default(),
        Arc::clone(&checkpoints),
    );
    let snap = engine
        .start(check_plan("eq", ObjectSelection::prefix("")))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!((snap.done_objects, snap.failed_objects), (20, 0));
    assert_eq!(snap.total_objects, Some(20));
    assert!(differences(&*checkpoints, "eq").await.is_empty());
}

/// Runs a check of `source` against `target` and returns its differences and snapshot.
async fn run_check(
    source: Arc<dyn Store>,
    target: Arc<dyn Store>,
    plan: MigrationPlan,
) -> (BTreeMap<ObjectKey, FailureKind>, ferry_types::JobSnapshot) {
    let checkpoints = mem_checkpoints();
    let table = Table::default();
    let engine = engine(source, target, &table, Arc::clone(&checkpoints));
    let id = plan.id.clone().unwrap();
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(table.len(), 0, "a check registers no forwarding entry");
    (differences(&*checkpoints, id.as_str()).await, snap)
}

#[tokio::test(start_paused = true)]
async fn every_kind_of_difference_is_found_and_named_from_reported_checksums() {
    let source = FaultyStore::new(filled(10));
    let target = FaultyStore::new(differing_target(10, MemStore::new()));
    let (source, target) = (Arc::new(source), Arc::new(target));
    let (found, snap) = run_check(
        Arc::clone(&source) as Arc<dyn Store>,
        Arc::clone(&target) as Arc<dyn Store>,
        check_plan("kinds", ObjectSelection::prefix("")),
    )
    .await;
    assert_eq!(found, expected_differences());
    assert_eq!(snap.status, JobStatus::CompletedWithErrors);
    assert_eq!((snap.done_objects, snap.failed_objects), (7, 4));
    // MemStore reports BLAKE3: the checksums decide, no content is read.
    assert_eq!((source.calls(Op::Get), target.calls(Op::Get)), (0, 0));
    // Nothing written or deleted on either side.
    for store in [&source, &target] {
        assert_eq!(store.calls(Op::Put) + store.calls(Op::Delete), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn every_kind_of_difference_is_found_from_content_when_no_checksum_is_reported() {
    let source = FaultyStore::new(fill(MemStore::with_chunk_size(16).without_checksums(), 10));
    let target = FaultyStore::new(differing_target(10, MemStore::new().without_checksums()));
    let (source, target) = (Arc::new(source), Arc::new(target));
    let (found, snap) = run_check(
        Arc::clone(&source) as Arc<dyn Store>,
        Arc::clone(&target) as Arc<dyn Store>,
        check_plan("content", ObjectSelection::prefix("")),
    )
    .await;
    assert_eq!(found, expected_differences());
    assert_eq!(snap.failed_objects, 4);
    // Read on both sides: the 8 keys of equal size (obj/00007 is told by its bytes alone).
    assert_eq!((source.calls(Op::Get), target.calls(Op::Get)), (8, 8));
}

#[tokio::test]
async fn directories_are_compared_by_content() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (source, target) = (
        DirStore::open(src.path()).await.unwrap(),
        DirStore::open(dst.path()).await.unwrap(),
    );
    for (root, tree) in [(src.path(), tree(10)), (dst.path(), differing_tree(10))] {
        for (key, bytes) in tree {
            let path = root.join(key.as_str());
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
    }
    let (found, snap) = run_check(
        Arc::new(source),
        Arc::new(target),
        check_plan("dirs", ObjectSelection::prefix("")),
    )
    .await;
    assert_eq!(found, expected_differences());
    assert_eq!(snap.status, JobStatus::CompletedWithErrors);
}

#[tokio::test(start_paused = true)]
async fn a_range_or_prefix_selection_is_respected_on_both_sides() {
    let source = filled(10);
    let target = differing_target(10, MemStore::new());
    target.insert(k("other/extra"), b"outside the prefix".to_vec());
    let range = KeyRange {
        prefix: "obj/".to_owned(),
        after: Some(key(3)),
        until: Some(key(7)),
    };
    let (found, _) = run_check(
        Arc::new(source.clone()),
        Arc::new(target.clone()),
        check_plan("range", ObjectSelection::Range(range)),
    )
    .await;
    assert_eq!(
        found,
        BTreeMap::from([
            (key(5), FailureKind::Differs),
            (key(7), FailureKind::Differs)
        ])
    );
    let (found, snap) = run_check(
        Arc::new(source),
        Arc::new(target),
        check_plan("prefix", ObjectSelection::prefix("obj/0000")),
    )
    .await;
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(snap.done_objects, 7);
}

#[tokio::test(start_paused = true)]
async fn explicit_keys_are_looked_up_on_both_sides() {
    let source = filled(10);
    let target = differing_target(10, MemStore::new());
    let keys = vec![key(1), key(3), k("obj/99999"), k("absent/everywhere")];
    let (found, snap) = run_check(
        Arc::new(source),
        Arc::new(target),
        check_plan("keys", ObjectSelection::Keys(keys)),
    )
    .await;
    assert_eq!(
        found,
        BTreeMap::from([
            (key(3), FailureKind::MissingOnTarget),
            (k("obj/99999"), FailureKind::ExtraOnTarget),
        ])
    );
    // Absent on both sides: skipped (done, nothing to compare).
    assert_eq!((snap.done_objects, snap.skipped_objects), (2, 1));
}

/// A check of `N` keys (no checksums, so each compare reads both sides) slowed so that it
/// can be stopped between any two keys; the source counts its reads.
const N: usize = 60;

fn stoppable() -> (Arc<FaultyStore<MemStore>>, Arc<dyn Store>, MigrationPlan) {
    let source = FaultyStore::new(fill(MemStore::with_chunk_size(16).without_checksums(), N));
    let target = differing_target(N, MemStore::new().without_checksums());
    let plan = slowed(check_plan("stop", ObjectSelection::prefix("")))
        .with_concurrency(NonZeroUsize::new(4).unwrap());
    (Arc::new(source), Arc::new(target), plan)
}

async fn stop_midway_then_resume(crash: bool) {
    let (source, target, plan) = stoppable();
    // A file store opened anew for each engine, as by a new process after a crash.
    let dir = tempfile::tempdir().unwrap();
    let open = || -> Arc<dyn CheckpointStore> { Arc::new(FileStore::open(dir.path()).unwrap()) };
    let build = || {
        engine(
            Arc::clone(&source) as Arc<dyn Store>,
            Arc::clone(&target),
            &Table::default(),
            open(),
        )
    };
    let first = build();
    if crash {
        crash_when_done(&first, plan.clone(), N as u64 / 2).await;
    } else {
        let handle = first.start(plan.clone()).await.unwrap();
        let mut watch = handle.watch();
        watch
            .wait_for(|s| s.done_objects >= N as u64 / 2)
            .await
            .unwrap();
        first.shutdown().await;
        assert!(matches!(handle.wait().await, Err(Error::ShutDown { .. })));
    }
    let read_before = source.calls(Op::Get);
    assert!(
        read_before < N as u64,
        "stopped midway: {read_before} reads"
    );
    drop(first);
    let second = build();
    let handle = if crash {
        second.start(plan).await.unwrap()
    } else {
        second.recover().await.unwrap().pop().unwrap()
    };
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::CompletedWithErrors);
    assert_eq!(differences(&*open(), "stop").await, expected_differences());
    // I4: done + failed covers every key once; no key compared again but those in flight
    // when the job stopped (at most `concurrency`).
    assert_eq!(snap.done_objects + snap.failed_objects, N as u64 + 1);
    assert_eq!(snap.total_objects, Some(N as u64 + 1));
    let reads = source.calls(Op::Get);
    // The source has N keys, of which two are told apart without reading (obj/00003 is
    // missing on the target, obj/00005 differs in size).
    let once = N as u64 - 2;
    assert!(
        reads >= once && reads <= once + 4,
        "{reads} source reads for {once} keys read once (4 in flight at most)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_check_shut_down_midway_resumes_after_its_watermark() {
    stop_midway_then_resume(false).await;
}

#[tokio::test(start_paused = true)]
async fn a_check_crashed_midway_resumes_after_its_watermark() {
    stop_midway_then_resume(true).await;
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_check_stops_and_a_paused_one_resumes() {
    let (source, target, plan) = stoppable();
    let engine = engine(
        source as Arc<dyn Store>,
        target,
        &Table::default(),
        mem_checkpoints(),
    );
    let handle = engine.start(plan.clone()).await.unwrap();
    handle.pause().await;
    let paused = handle.snapshot();
    assert_eq!(paused.status, JobStatus::Paused);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        handle.snapshot().done_objects,
        paused.done_objects,
        "nothing is compared while paused"
    );
    handle.resume();
    let mut watch = handle.watch();
    watch.wait_for(|s| s.done_objects >= 10).await.unwrap();
    let report = handle.cancel().await.unwrap();
    let snap = report.snapshot.unwrap();
    assert_eq!(snap.status, JobStatus::Cancelled);
    assert!(snap.done_objects < N as u64);
}

#[tokio::test(start_paused = true)]
async fn the_throttle_paces_the_bytes_a_check_reads() {
    // 10 objects of 1000 bytes on each side, no checksums: 20,000 bytes read at 1000 B/s.
    let (source, target) = (
        MemStore::with_chunk_size(100).without_checksums(),
        MemStore::with_chunk_size(100).without_checksums(),
    );
    for i in 0..10 {
        source.insert(key(i), vec![i as u8; 1000]);
        target.insert(key(i), vec![i as u8; 1000]);
    }
    let plan = check_plan("rate", ObjectSelection::prefix(""))
        .with_rate(Rate::bytes_per_sec(1000).unwrap())
        .with_chunk_size(ferry_types::ByteSize::b(100));
    let started = tokio::time::Instant::now();
    let (found, snap) = run_check(Arc::new(source), Arc::new(target), plan).await;
    let took = started.elapsed();
    assert!(found.is_empty());
    assert_eq!(snap.bytes_copied, 20_000);
    // Burst: rate × 100 ms (100 bytes) at most.
    assert!(
        took >= Duration::from_millis(19_900) && took <= Duration::from_secs(21),
        "20,000 bytes at 1000 B/s took {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_failed_compares_only_the_differences_again() {
    let source = filled(10);
    let target = differing_target(10, MemStore::new());
    let checkpoints = mem_checkpoints();
    let faulty_target = Arc::new(FaultyStore::new(target.clone()));
    let engine: Engine = engine(
        Arc::new(source.clone()),
        Arc::clone(&faulty_target) as Arc<dyn Store>,
        &Table::default(),
        Arc::clone(&checkpoints),
    );
    let plan = check_plan("again", ObjectSelection::prefix(""));
    let snap = engine.start(plan).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.failed_objects, 4);
    // Two differences mended; the other two stay.
    target.insert(key(3), content(3));
    Store::delete(&target, &k("obj/99999")).await.unwrap();
    let heads = faulty_target.calls(Op::Head);
    let id = JobId::new("again").unwrap();
    let snap = engine
        .retry_failed(&id)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(snap.status, JobStatus::CompletedWithErrors);
    assert_eq!(snap.failed_objects, 2);
    assert_eq!(
        faulty_target.calls(Op::Head) - heads,
        4,
        "the 4 differences only"
    );
    assert_eq!(
        differences(&*checkpoints, "again").await,
        BTreeMap::from([
            (key(5), FailureKind::Differs),
            (key(7), FailureKind::Differs)
        ])
    );
}

#[tokio::test]
async fn a_check_plan_with_a_cleanup_policy_is_refused() {
    let engine = mem_engine(&filled(1), &MemStore::new(), &Table::default());
    let plan = check_plan("clean", ObjectSelection::prefix(""))
        .with_cleanup(ferry_types::CleanupPolicy::AfterVerify);
    assert!(matches!(engine.start(plan).await, Err(Error::Plan(_))));
}

#[tokio::test(start_paused = true)]
async fn a_checksum_on_one_side_only_is_not_comparable_and_the_contents_are_read() {
    let source = FaultyStore::new(filled(10));
    let target = FaultyStore::new(differing_target(10, MemStore::new().without_checksums()));
    let (source, target) = (Arc::new(source), Arc::new(target));
    let (found, _) = run_check(
        Arc::clone(&source) as Arc<dyn Store>,
        Arc::clone(&target) as Arc<dyn Store>,
        check_plan("one-side", ObjectSelection::prefix("")),
    )
    .await;
    assert_eq!(found, expected_differences());
    assert_eq!((source.calls(Op::Get), target.calls(Op::Get)), (8, 8));
}
