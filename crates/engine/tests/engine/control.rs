//! Pause, resume, cancel and rate changes of a running job.

use std::num::NonZeroUsize;
use std::time::Duration;

use ferry_forwarding::{EntryState, Route, Table};
use ferry_store::MemStore;
use ferry_types::{ByteSize, CleanupPolicy, JobStatus, ObjectSelection, Rate};

use crate::util::*;

const N: usize = 60;

fn slow_plan(id: &str) -> ferry_types::MigrationPlan {
    plan(id, ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(4).unwrap())
        .with_rate(Rate::bytes_per_sec(512).unwrap())
        .with_chunk_size(ByteSize::b(16))
        .with_cleanup(CleanupPolicy::AfterVerify)
}

#[tokio::test(start_paused = true)]
async fn pause_stops_progress_and_resume_completes() {
    let source = filled(N);
    let target = MemStore::new();
    let table = Table::default();
    let engine = mem_engine(&source, &target, &table);
    let handle = engine.start(slow_plan("pause")).await.unwrap();
    let mut watch = handle.watch();
    while handle.snapshot().bytes_copied == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The barrier: pause returns once every copy is parked and the status is Paused.
    handle.pause().await;
    assert_eq!(handle.snapshot().status, JobStatus::Paused);
    let copied = handle.snapshot().bytes_copied;
    let done = handle.snapshot().done_objects;
    assert!(done < N as u64);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        handle.snapshot().bytes_copied,
        copied,
        "no byte moves while paused"
    );
    assert_eq!(handle.snapshot().status, JobStatus::Paused);
    handle.resume();
    watch
        .wait_for(|s| s.status == JobStatus::Running || s.status.is_finished())
        .await
        .unwrap();
    handle.set_rate(Rate::Unlimited);
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(snap.done_objects, N as u64);
    assert!(source.is_empty());
    for i in 0..N {
        assert_eq!(target.bytes(key(i).as_str()).unwrap(), content(i));
    }
}

#[tokio::test(start_paused = true)]
async fn i2_cancel_leaves_no_copying_entry_and_forwarded_objects_stay_readable() {
    let source = filled(N);
    let target = MemStore::new();
    let table = Table::default();
    let engine = mem_engine(&source, &target, &table);
    let handle = engine.start(slow_plan("cancel")).await.unwrap();
    while handle.snapshot().done_objects < 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = handle.cancel().await.unwrap();
    let snap = report.snapshot.clone().unwrap();
    assert_eq!(snap.status, JobStatus::Cancelled);
    assert!(
        !report.rolled_back.is_empty(),
        "copies were in flight: {report:?}"
    );
    for i in 0..N {
        let k = key(i);
        if let Some(entry) = table.get(k.as_str()) {
            assert_eq!(
                entry.state,
                EntryState::Forwarded,
                "{k} left {:?}",
                entry.state
            );
        }
        // I2: wherever the key routes, the object is there.
        let read = match table.route_read(k.as_str()) {
            Route::Source => source.bytes(k.as_str()),
            Route::Target(_) => target.bytes(k.as_str()),
        };
        assert_eq!(read.unwrap(), content(i), "{k}");
    }
    for k in &report.rolled_back {
        assert_eq!(table.route_read(k.as_str()), Route::Source);
    }
}

/// Objects waiting out their grace period do not hold copy slots: with one copy at a time
/// and an hour of grace, every object is copied and flipped long before the first grace
/// period ends (it used to copy one object per grace period), and the sources go after it.
#[tokio::test(start_paused = true)]
async fn grace_period_does_not_hold_copy_slots() {
    let source = filled(N);
    let target = MemStore::new();
    let table = Table::default();
    let engine = mem_engine(&source, &target, &table);
    let grace = Duration::from_secs(3600);
    let plan = plan("grace-slots", ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(1).unwrap())
        .with_cleanup(CleanupPolicy::AfterGrace(grace));
    let started = tokio::time::Instant::now();
    let handle = engine.start(plan).await.unwrap();
    let all_flipped =
        || (0..N).all(|i| matches!(table.route_read(key(i).as_str()), Route::Target(_)));
    while !all_flipped() {
        assert!(
            started.elapsed() < grace / 2,
            "copies waited for grace periods: {} of {N} flipped after {:?}",
            (0..N)
                .filter(|&i| matches!(table.route_read(key(i).as_str()), Route::Target(_)))
                .count(),
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(source.len(), N, "nothing cleaned before its grace period");
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert_eq!(snap.done_objects, N as u64);
    assert!(
        source.is_empty(),
        "every source cleaned after its grace period"
    );
    assert!(started.elapsed() >= grace);
}

/// Hole H of the engine-wing review: an entry expires a TTL after its flip, and a key's
/// cleanup (the commit hook, then the delete) runs at the first commit after its grace
/// period. Were the entry gone by then, reads and writes would go to the source before the
/// hook ran, and a write acknowledged through the flip would read back stale (I2, I3). Such
/// a plan is refused before anything moves; one the TTL covers runs.
#[tokio::test(start_paused = true)]
async fn i3_a_grace_period_the_forwarding_ttl_does_not_cover_is_refused() {
    let source = filled(3);
    let target = MemStore::new();
    let ttl = Duration::from_secs(60);
    let table = Table::new(ferry_forwarding::Config::default().with_default_ttl(ttl));
    let engine = mem_engine(&source, &target, &table);
    // 60 s of grace, plus the 50 ms checkpoint interval, outlives the 60 s TTL.
    let long = plan("ttl-too-short", ObjectSelection::all())
        .with_cleanup(CleanupPolicy::AfterGrace(Duration::from_secs(60)));
    let err = engine.start(long).await.unwrap_err();
    assert!(
        matches!(
            &err,
            ferry_engine::Error::Plan(ferry_types::Error::InvalidPlan {
                field: "options.cleanup",
                ..
            })
        ),
        "{err}"
    );
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("TTL"), "the message says why: {chain}");
    assert!(target.is_empty() && table.is_empty(), "nothing moved");
    let short = plan("ttl-covers", ObjectSelection::all())
        .with_cleanup(CleanupPolicy::AfterGrace(Duration::from_secs(50)));
    let snap = engine.start(short).await.unwrap().wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed);
    assert!(source.is_empty());
    assert_eq!(target.len(), 3);
}

/// Hole J of the engine-wing review: a drain left behind the keys created in its selection
/// after its listing had passed them (491 of the 545 objects left on a drained node). With a
/// cleanup policy, a job now lists its selection again once a pass has settled, until a pass
/// finds nothing new: when it completes, nothing of its selection is left on the source,
/// and every key a writer created meanwhile is on the target with what was written (I8).
#[tokio::test(start_paused = true)]
async fn i8_a_drain_leaves_no_key_created_during_it_on_the_source() {
    const N: usize = 200;
    let source = filled(N);
    let target = MemStore::new();
    let table = Table::default();
    let engine = mem_engine(&source, &target, &table);
    let plan = plan("drain-new-keys", ObjectSelection::all())
        .with_concurrency(NonZeroUsize::new(4).unwrap())
        .with_rate(Rate::bytes_per_sec(4096).unwrap())
        .with_chunk_size(ByteSize::b(64))
        .with_cleanup(CleanupPolicy::AfterVerify);
    let handle = engine.start(plan).await.unwrap();
    // A writer creates keys all through the move, between existing ones, so that many sort
    // behind the listing's position when they appear; it stops near the end.
    let mut created = Vec::new();
    let mut n = 0;
    while handle.snapshot().done_objects < (N as u64) * 9 / 10 {
        let key = ferry_types::ObjectKey::new(format!("obj/{:05}-new-{n}", (n * 37) % N)).unwrap();
        let value = format!("created {n}");
        {
            let ticket = table.begin_write(key.as_str()).await.unwrap();
            match ticket.route() {
                Route::Source => source.insert(key.clone(), value.clone()),
                Route::Target(_) => target.insert(key.clone(), value.clone()),
            };
        }
        created.push((key, value));
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(created.len() > 20, "the writer ran during the move");
    let snap = handle.wait().await.unwrap();
    assert_eq!(snap.status, JobStatus::Completed, "{snap:?}");
    let left: Vec<String> = (0..N)
        .map(key)
        .chain(created.iter().map(|(k, _)| k.clone()))
        .filter(|k| source.bytes(k.as_str()).is_some())
        .map(|k| k.as_str().to_owned())
        .collect();
    assert!(left.is_empty(), "left on the source: {left:?}");
    assert!(source.is_empty());
    for (key, value) in &created {
        assert_eq!(
            target.bytes(key.as_str()).unwrap(),
            value.as_bytes(),
            "{key:?}"
        );
        assert_eq!(table.route_read(key.as_str()), Route::Target(b()));
    }
    assert_eq!(snap.done_objects, (N + created.len()) as u64);
    assert_eq!(snap.total_objects, Some((N + created.len()) as u64));
    // The keys a re-listing found count in the total's bytes too.
    assert_eq!(snap.total_bytes, Some(snap.done_bytes));
}

/// A cancel rolls back the objects not yet flipped: their entries go (reads stay on the
/// source) and so do the copies the job wrote for them, so nothing it copied outlives it
/// unaccounted (SPEC I8; the copies were what a later resume wrongly forwarded, hole B).
#[tokio::test(start_paused = true)]
async fn i8_a_cancel_removes_the_copies_of_the_objects_it_rolls_back() {
    let source = slow_last_read(N);
    let target = MemStore::new();
    let table = Table::default();
    let engine = engine(
        std::sync::Arc::new(source.clone()),
        std::sync::Arc::new(target.clone()),
        &table,
        mem_checkpoints(),
    );
    // No commit comes before the cancel: every object is copied, none flipped.
    let plan = plan("cancel-copies", ObjectSelection::all())
        .with_cleanup(CleanupPolicy::AfterVerify)
        .with_checkpoint(ferry_types::CheckpointInterval {
            objects: 1000,
            every: Duration::from_secs(3600),
        });
    let handle = engine.start(plan).await.unwrap();
    while target.len() < N - 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let report = handle.cancel().await.unwrap();
    assert_eq!(report.rolled_back.len(), N, "{report:?}");
    assert!(
        target.is_empty(),
        "{} copies left on the target",
        target.len()
    );
    assert!(table.is_empty());
    assert_eq!(source.inner().len(), N);
}
