//! `FaultyStore`: scheduled errors, latency, broken bodies and power cuts.

use std::time::Duration;

use bytes::Bytes;
use ferry_store::{Error, ErrorKind, Op};
use ferry_store::{Fault, FaultyStore, MemStore, Store, Trigger, body_from_bytes};
use futures_util::TryStreamExt;

use crate::util::{key, keys, put, read};

#[tokio::test]
async fn power_cut_loses_exactly_the_unsynced_changes() {
    let store = FaultyStore::new(MemStore::new());
    put(&store, "a", b"a1").await;
    put(&store, "b", b"b1").await;
    store.sync().await.unwrap();
    assert_eq!(store.unsynced().await, 0);
    put(&store, "a", b"a2").await; // overwritten, not synced
    put(&store, "a", b"a3").await;
    put(&store, "c", b"c1").await; // new, not synced
    store.delete(&key("b")).await.unwrap(); // deleted, not synced
    assert_eq!(store.unsynced().await, 3);
    assert_eq!(store.power_cut().await.unwrap(), 3);
    assert_eq!(read(&store, "a").await.unwrap(), b"a1");
    assert_eq!(read(&store, "b").await.unwrap(), b"b1");
    assert_eq!(read(&store, "c").await, None);
    assert_eq!(keys(&store, "", None).await, ["a", "b"]);
    // After a sync, the changes survive a cut.
    put(&store, "c", b"c2").await;
    store.sync().await.unwrap();
    assert_eq!(store.power_cut().await.unwrap(), 0);
    assert_eq!(read(&store, "c").await.unwrap(), b"c2");
}

#[cfg(unix)]
#[tokio::test]
async fn power_cut_on_a_dir_store_restores_the_last_barrier() {
    let dir = tempfile::tempdir().unwrap();
    let inner = ferry_store::DirStore::open(dir.path()).await.unwrap();
    let store = FaultyStore::new(inner);
    put(&store, "x/synced", b"s").await;
    store.sync().await.unwrap();
    put(&store, "x/synced", b"changed").await;
    put(&store, "x/unsynced", b"u").await;
    store.power_cut().await.unwrap();
    assert_eq!(keys(&store, "", None).await, ["x/synced"]);
    assert_eq!(read(&store, "x/synced").await.unwrap(), b"s");
}

#[tokio::test]
async fn a_failed_sync_keeps_the_changes_at_risk() {
    let store = FaultyStore::new(MemStore::new());
    store.inject(Op::Sync, Trigger::Call(1), Fault::Transient);
    put(&store, "k", b"v").await;
    assert!(store.sync().await.unwrap_err().is_transient());
    assert_eq!(store.power_cut().await.unwrap(), 1);
    assert_eq!(read(&store, "k").await, None);
}

#[tokio::test]
async fn scheduled_errors_fire_on_the_nth_call_with_their_classification() {
    let store = FaultyStore::new(MemStore::new());
    store
        .inject(Op::Put, Trigger::Call(2), Fault::Transient)
        .inject(Op::Get, Trigger::Call(1), Fault::Permanent)
        .inject(Op::Delete, Trigger::Always, Fault::Permanent)
        .inject(Op::List, Trigger::Call(1), Fault::Transient);
    put(&store, "a", b"1").await;
    let body = body_from_bytes(Bytes::from_static(b"2"), 1);
    let err = store.put(&key("a"), body).await.unwrap_err();
    assert!(
        matches!(&err, Error::Transient { op: Op::Put, key: Some(k), .. } if k.as_str() == "a")
    );
    assert!(err.is_transient());
    assert_eq!(
        read(store.inner(), "a").await.unwrap(),
        b"1",
        "the failed put did nothing"
    );
    put(&store, "a", b"3").await;
    let err = store.get(&key("a")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert_eq!(read(&store, "a").await.unwrap(), b"3", "second get is fine");
    for _ in 0..2 {
        let err = store.delete(&key("a")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
    }
    let listed: Result<Vec<_>, _> = store.list("", None).try_collect().await;
    assert!(listed.unwrap_err().is_transient());
    assert_eq!(keys(&store, "", None).await, ["a"]);
    assert_eq!(store.calls(Op::Put), 3);
    assert_eq!(store.calls(Op::Delete), 2);
    store.clear_faults();
    assert!(store.delete(&key("a")).await.unwrap());
}

#[tokio::test]
async fn random_faults_are_deterministic_for_a_seed() {
    async fn pattern(seed: u64) -> Vec<bool> {
        let store = FaultyStore::with_seed(MemStore::new(), seed);
        store.inject(
            Op::Head,
            Trigger::Random { probability: 0.3 },
            Fault::Transient,
        );
        let mut out = Vec::new();
        for _ in 0..200 {
            out.push(store.head(&key("k")).await.is_err());
        }
        out
    }
    let a = pattern(7).await;
    assert_eq!(a, pattern(7).await);
    assert_ne!(a, pattern(8).await);
    let failures = a.iter().filter(|&&f| f).count();
    assert!((30..90).contains(&failures), "{failures} of 200 at p = 0.3");
}

#[tokio::test(start_paused = true)]
async fn latency_is_injected_on_tokio_time() {
    let store = FaultyStore::new(MemStore::new());
    store.inject(
        Op::Head,
        Trigger::Call(2),
        Fault::Latency(Duration::from_secs(30)),
    );
    let start = tokio::time::Instant::now();
    store.head(&key("k")).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    store.head(&key("k")).await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(30));
}

async fn faulty_with_object(fault: Fault) -> FaultyStore<MemStore> {
    let store = FaultyStore::new(MemStore::with_chunk_size(4));
    put(&store, "obj", b"0123456789").await;
    store.inject(Op::Get, Trigger::Call(1), fault);
    store
}

#[tokio::test]
async fn a_truncated_body_is_detected_and_never_stored_short() {
    let store = faulty_with_object(Fault::TruncateGet { after: 6 }).await;
    let object = store.get(&key("obj")).await.unwrap();
    assert_eq!(object.meta.size, 10);
    let target = MemStore::new();
    put(&target, "obj", b"previous").await;
    let err = target
        .put(&key("obj"), object.checked_body())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Truncated {
                expected: 10,
                got: 6,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_transient());
    assert_eq!(
        target.bytes("obj").unwrap(),
        &b"previous"[..],
        "no short object"
    );
    // The raw body ends quietly: that is the fault.
    let store = faulty_with_object(Fault::TruncateGet { after: 6 }).await;
    let raw: Vec<Bytes> = store
        .get(&key("obj"))
        .await
        .unwrap()
        .body
        .try_collect()
        .await
        .unwrap();
    assert_eq!(raw.concat(), b"012345");
}

#[tokio::test]
async fn a_body_failing_mid_stream_fails_the_copy() {
    let store = faulty_with_object(Fault::FailGetAfter { after: 5 }).await;
    let object = store.get(&key("obj")).await.unwrap();
    let target = MemStore::new();
    let err = target
        .put(&key("obj"), object.checked_body())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transient { op: Op::Get, .. }), "{err}");
    assert!(target.is_empty());
    assert_eq!(
        read(&store, "obj").await.unwrap(),
        b"0123456789",
        "next get is fine"
    );
}

#[tokio::test]
async fn a_corrupted_body_differs_in_one_byte() {
    let store = faulty_with_object(Fault::CorruptGet { at: 5 }).await;
    let got: Vec<Bytes> = store
        .get(&key("obj"))
        .await
        .unwrap()
        .checked_body()
        .try_collect()
        .await
        .unwrap();
    let got = got.concat();
    let want = b"0123456789";
    let diff: Vec<usize> = (0..10).filter(|&i| got[i] != want[i]).collect();
    assert_eq!(diff, [5]);
    assert_eq!(
        store.inner().bytes("obj").unwrap(),
        &want[..],
        "the stored object is intact"
    );
}
