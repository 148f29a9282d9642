//! A progress save of the file backend (write temp, rename, one `syncfs`; and with
//! `FileSync::Fsync`: fsync the file, fsync the directory) beside its peers in the same group:
//! a raw write+fsync of the same bytes (the enveloped record; SPEC §8 target: save ≤ 1.5× this)
//! and the raw write+fsync+rename+directory fsync. Also sled and redb saves (with their
//! features) and a load. Every save is handed its progress cloned outside the timed part.
//!
//! `cargo bench -p ferry-checkpoint --all-features --bench save -- --warm-up-time 1 --measurement-time 5`
// Benches stop on the first unexpected error: unwrap says where.
// criterion_group! defines a `pub fn` that cannot take a doc comment.
#![allow(clippy::unwrap_used, missing_docs)]

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferry_checkpoint::{
    CheckpointStore, FileStore, FileSync, JobRecord, Lease, Progress, envelope,
};
use ferry_types::{JobId, JobStatus, MigrationPlan, NodeId, ObjectKey, ObjectSelection};

fn plan() -> MigrationPlan {
    MigrationPlan::new(
        NodeId::new("disk-a").unwrap(),
        NodeId::new("disk-b").unwrap(),
        ObjectSelection::prefix("photos/"),
    )
}

/// A typical progress whose record encodes to about `size` bytes: a watermark, a few done
/// keys above it (bounded by concurrency), counters, and failed objects to fill up.
fn progress(size: usize) -> Progress {
    let mut p = Progress::default();
    p.advance_watermark(ObjectKey::new("photos/2024/06/img_000123.jpg").unwrap());
    for i in 0..8 {
        p.mark_done(
            ObjectKey::new(format!("photos/2024/06/img_{:06}.jpg", 130 + i)).unwrap(),
            65_536,
        );
    }
    p.done_objects = 123_456;
    p.done_bytes = 123_456 * 65_536;
    let mut i = 0;
    while encoded_len(&p) < size {
        p.mark_failed(
            ObjectKey::new(format!("photos/2024/05/img_{i:06}.jpg")).unwrap(),
            3,
            "connection reset by peer".into(),
            ferry_types::FailureKind::Transient,
        );
        i += 1;
    }
    p
}

/// The record a save of `p` writes, enveloped: the bytes on disk (the store's epoch and
/// generation aside, which take as many bytes).
fn encoded(p: &Progress) -> Vec<u8> {
    let job = JobId::new("bench").unwrap();
    let record = JobRecord {
        epoch: 1,
        generation: 1,
        job: job.clone(),
        plan: plan().with_id(job),
        status: JobStatus::Running,
        progress: p.clone(),
    };
    envelope::encode(&record).unwrap()
}

fn encoded_len(p: &Progress) -> usize {
    encoded(p).len()
}

fn raw_write_fsync(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

async fn setup(store: &dyn CheckpointStore) -> Lease {
    let job = JobId::new("bench").unwrap();
    store.create(&job, &plan()).await.unwrap();
    store.acquire(&job).await.unwrap().lease
}

fn bench_save(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, size) in [("1KiB", 1 << 10), ("64KiB", 64 << 10)] {
        let p = progress(size);
        let bytes_len = encoded_len(&p);
        let mut group = c.benchmark_group(format!("save/{name}"));
        group.throughput(Throughput::Bytes(bytes_len as u64));

        let store = FileStore::open(dir.path().join(format!("file-{name}"))).unwrap();
        let lease = rt.block_on(setup(&store));
        // The progress handed to `save` is cloned outside the timed part: `save` takes it by
        // value, and the clone is the caller's (the `Checkpointer` clones its own state once per
        // save; `progress_clone` below measures that).
        group.bench_function(BenchmarkId::new("file_store_save", bytes_len), |b| {
            b.iter_batched(
                || p.clone(),
                |progress| {
                    rt.block_on(store.save(&lease, JobStatus::Running, progress.into()))
                        .unwrap()
                },
                BatchSize::SmallInput,
            )
        });
        // The same save with the textbook barrier (fsync the file, fsync the directory)
        // instead of the default one `syncfs`.
        let fsync_store =
            FileStore::open_with(dir.path().join(format!("fsync-{name}")), FileSync::Fsync)
                .unwrap();
        let fsync_lease = rt.block_on(setup(&fsync_store));
        group.bench_function(BenchmarkId::new("file_store_save_fsync", bytes_len), |b| {
            b.iter_batched(
                || p.clone(),
                |progress| {
                    rt.block_on(fsync_store.save(&fsync_lease, JobStatus::Running, progress.into()))
                        .unwrap()
                },
                BatchSize::SmallInput,
            )
        });
        group.bench_function(BenchmarkId::new("progress_clone", bytes_len), |b| {
            b.iter(|| black_box(p.clone()))
        });

        let bytes = encoded(&p);
        let raw = dir.path().join(format!("raw-{name}"));
        group.bench_function(BenchmarkId::new("raw_write_fsync", bytes_len), |b| {
            b.iter(|| raw_write_fsync(&raw, black_box(&bytes)))
        });

        let (tmp, target) = (
            dir.path().join(format!("tmp-{name}")),
            dir.path().join(format!("target-{name}")),
        );
        group.bench_function(
            BenchmarkId::new("raw_write_fsync_rename_dirsync", bytes_len),
            |b| {
                b.iter(|| {
                    raw_write_fsync(&tmp, black_box(&bytes));
                    std::fs::rename(&tmp, &target).unwrap();
                    File::open(dir.path()).unwrap().sync_all().unwrap();
                })
            },
        );

        #[cfg(feature = "sled")]
        {
            let store =
                ferry_checkpoint::SledStore::open(dir.path().join(format!("sled-{name}"))).unwrap();
            let lease = rt.block_on(setup(&store));
            // The clone outside the timed part, as for the file store.
            group.bench_function(BenchmarkId::new("sled_store_save", bytes_len), |b| {
                b.iter_batched(
                    || p.clone(),
                    |progress| {
                        rt.block_on(store.save(&lease, JobStatus::Running, progress.into()))
                            .unwrap()
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        #[cfg(feature = "redb")]
        {
            let store =
                ferry_checkpoint::RedbStore::open(dir.path().join(format!("{name}.redb"))).unwrap();
            let lease = rt.block_on(setup(&store));
            // The clone outside the timed part, as for the file store.
            group.bench_function(BenchmarkId::new("redb_store_save", bytes_len), |b| {
                b.iter_batched(
                    || p.clone(),
                    |progress| {
                        rt.block_on(store.save(&lease, JobStatus::Running, progress.into()))
                            .unwrap()
                    },
                    BatchSize::SmallInput,
                )
            });
        }

        let job = JobId::new("bench").unwrap();
        let store: Arc<dyn CheckpointStore> = Arc::new(store);
        group.bench_function(BenchmarkId::new("file_store_load", bytes_len), |b| {
            b.iter(|| rt.block_on(store.load(&job)).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, bench_save);
criterion_main!(benches);
