//! The durability barrier of `DirStore`: one fsync per file and directory (in parallel)
//! against one `syncfs`, against no sync at all (the cost of writing and renaming alone).
//!
//! Each iteration puts 2,000 new objects of 64 KiB (20 directories of 100) and then syncs, as
//! one checkpoint batch of the engine would; deleting them afterwards is not measured. Throughput is in files: criterion prints the
//! files per second; the time per file is its inverse.
//!
//! A second group syncs one new 4 KiB file per barrier (a gateway's acknowledged PUT), on a
//! quiet disk and while another thread keeps writing 64 MiB files into the same file system
//! without syncing them (a build, a migration's copies): `syncfs` then waits for that writer's
//! data too; the file's and its directory's fsyncs wait for the journal commit.
//!
//! `cargo bench -p ferry-store --bench sync`
// Benches stop on the first unexpected error: unwrap says where.
// criterion_group! defines a `pub fn` that cannot take a doc comment.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use ferry_store::{DirStore, Store, SyncStrategy, body_from_bytes};
use ferry_types::ObjectKey;

const FILES: usize = 2_000;
const SIZE: usize = 64 << 10;

/// A runtime of two workers, and a directory on the disk of the target directory (not a tmpfs).
fn setup() -> (tokio::runtime::Runtime, tempfile::TempDir) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    (rt, dir)
}

fn sync(c: &mut Criterion) {
    let (rt, dir) = setup();
    let keys: Vec<ObjectKey> = (0..FILES)
        .map(|i| ObjectKey::new(format!("d{:02}/f{i:05}", i % 20)).unwrap())
        .collect();
    let data = Bytes::from(vec![0x5a; SIZE]);

    let mut group = c.benchmark_group("sync_2000_files_of_64KiB");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(FILES as u64));
    let cases = [
        ("per_file_fsync", Some(SyncStrategy::PerFileFsync)),
        ("syncfs", Some(SyncStrategy::Syncfs)),
        ("no_sync", None),
    ];
    for (name, strategy) in cases {
        let store = rt.block_on(async {
            let store = DirStore::open(dir.path().join(name)).await.unwrap();
            let store = store.with_sync_strategy(strategy.unwrap_or(SyncStrategy::Syncfs));
            // Start from a clean page cache for this store's tree.
            store.sync().await.unwrap();
            store
        });
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut measured = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        for key in &keys {
                            store
                                .put(key, body_from_bytes(data.clone(), SIZE))
                                .await
                                .unwrap();
                        }
                        if strategy.is_some() {
                            store.sync().await.unwrap();
                        }
                        measured += start.elapsed();
                        // Not measured: back to an empty, clean tree, so that every put makes
                        // a new file (as a migration's target does) and no case pays for the
                        // write-back of the previous one.
                        for key in &keys {
                            store.delete(key).await.unwrap();
                        }
                        write_back(&store).await;
                    }
                    measured
                })
            })
        });
    }
    group.finish();
}

async fn write_back(store: &DirStore) {
    let store = store.clone().with_sync_strategy(SyncStrategy::Syncfs);
    store.sync().await.unwrap();
}

/// One 4 KiB put and its barrier per iteration, per strategy; quiet, then with a writer.
fn sync_one_small_file(c: &mut Criterion) {
    let (rt, dir) = setup();
    let data = Bytes::from(vec![0x5a; 4096]);
    for disk in ["quiet", "busy"] {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = (disk == "busy").then(|| {
            let (stop, path) = (Arc::clone(&stop), dir.path().join("writer"));
            std::thread::spawn(move || {
                let chunk = vec![0xa5u8; 1 << 20];
                while !stop.load(Ordering::Relaxed) {
                    let mut file = std::fs::File::create(&path).unwrap();
                    for _ in 0..64 {
                        file.write_all(&chunk).unwrap();
                    }
                }
            })
        });
        let mut group = c.benchmark_group(format!("sync_one_4KiB_file_{disk}"));
        group.sample_size(30);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(5));
        for (name, strategy) in [
            ("per_file_fsync", SyncStrategy::PerFileFsync),
            ("syncfs", SyncStrategy::Syncfs),
        ] {
            let store = rt.block_on(async {
                DirStore::open(dir.path().join(disk).join(name))
                    .await
                    .unwrap()
                    .with_sync_strategy(strategy)
            });
            let mut n = 0u64;
            group.bench_function(name, |b| {
                b.iter(|| {
                    n += 1;
                    let key = ObjectKey::new(format!("k{}", n % 1000)).unwrap();
                    rt.block_on(async {
                        store
                            .put(&key, body_from_bytes(data.clone(), 4096))
                            .await
                            .unwrap();
                        store.sync().await.unwrap();
                    });
                })
            });
        }
        group.finish();
        stop.store(true, Ordering::Relaxed);
        if let Some(writer) = writer {
            writer.join().unwrap();
        }
    }
}

criterion_group!(benches, sync, sync_one_small_file);
criterion_main!(benches);
