//! The checkpoint store conformance suite: each test names the invariant it checks. Every
//! backend runs it through `conformance!` — this crate's in `conformance.rs`, and
//! `ferry-object-store`'s leased store over a bucket, which includes this file by path.
#![allow(dead_code)]

pub(crate) use std::sync::Arc;

pub(crate) use anyhow::Result;
pub(crate) use ferry_checkpoint::{CheckpointStore, Error, Failure, Progress};
use ferry_types::{JobId, JobStatus, MigrationPlan, NodeId, ObjectKey, ObjectSelection};

fn id(s: &str) -> JobId {
    JobId::new(s).unwrap()
}

fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap()
}

fn plan() -> MigrationPlan {
    MigrationPlan::new(
        NodeId::new("src").unwrap(),
        NodeId::new("dst").unwrap(),
        ObjectSelection::prefix("data/"),
    )
}

fn progress(n: u64, tag: &str) -> Progress {
    let mut p = Progress::default();
    p.advance_watermark(key(&format!("data/{tag}/{n:08}")));
    p.mark_done(key(&format!("data/{tag}/{:08}", n + 2)), n);
    p.mark_failed(
        key(&format!("data/{tag}/f{n}")),
        2,
        format!("timeout {n}"),
        ferry_types::FailureKind::Transient,
    );
    p.done_objects = n;
    p.done_bytes = n * 4096;
    p
}

pub(crate) mod checks {
    use super::*;

    pub(crate) async fn round_trip(store: Arc<dyn CheckpointStore>) -> Result<()> {
        let job = id("job-1");
        let created = store.create(&job, &plan()).await?;
        assert_eq!((created.status, created.epoch), (JobStatus::Pending, 0));
        assert_eq!(created.plan.id.as_ref(), Some(&job));
        let loaded = store.load(&job).await?.expect("created");
        assert_eq!(loaded.record, created);
        assert!(loaded.warnings.is_empty());

        let acquired = store.acquire(&job).await?;
        assert_eq!(acquired.lease.epoch(), 1);
        assert_eq!(acquired.record.epoch, 1);
        let g = store
            .save(&acquired.lease, JobStatus::Running, progress(7, "a").into())
            .await?;
        assert!(g > acquired.record.generation);
        let loaded = store.load(&job).await?.expect("saved").record;
        assert_eq!(loaded.progress, progress(7, "a"));
        assert_eq!(
            (loaded.status, loaded.epoch, loaded.generation),
            (JobStatus::Running, 1, g)
        );
        assert_eq!(loaded.plan, created.plan);
        store.renew(&acquired.lease).await?;
        store.release(&acquired.lease).await?;
        Ok(())
    }

    pub(crate) async fn create_refuses_existing_job_and_foreign_plan_id(
        store: Arc<dyn CheckpointStore>,
    ) -> Result<()> {
        let job = id("job-1");
        store.create(&job, &plan()).await?;
        assert!(matches!(
            store.create(&job, &plan()).await,
            Err(Error::AlreadyExists { .. })
        ));
        let other = plan().with_id(id("other"));
        assert!(matches!(
            store.create(&id("job-2"), &other).await,
            Err(Error::PlanIdMismatch { .. })
        ));
        assert!(store.load(&id("job-2")).await?.is_none());
        Ok(())
    }

    pub(crate) async fn list_and_delete(store: Arc<dyn CheckpointStore>) -> Result<()> {
        assert!(store.list().await?.is_empty());
        for j in ["c", "a.2", "b-1"] {
            store.create(&id(j), &plan()).await?;
        }
        assert_eq!(store.list().await?, vec![id("a.2"), id("b-1"), id("c")]);
        assert!(store.delete(&id("b-1")).await?);
        assert!(!store.delete(&id("b-1")).await?);
        assert_eq!(store.list().await?, vec![id("a.2"), id("c")]);
        assert!(store.load(&id("b-1")).await?.is_none());
        // A deleted job can be created again.
        store.create(&id("b-1"), &plan()).await?;
        Ok(())
    }

    pub(crate) async fn i6_second_acquire_refused_while_held(
        store: Arc<dyn CheckpointStore>,
    ) -> Result<()> {
        let job = id("job-1");
        store.create(&job, &plan()).await?;
        let first = store.acquire(&job).await?;
        match store.acquire(&job).await {
            Err(Error::Locked { job: j, holder }) => {
                assert_eq!(j, job);
                assert!(
                    holder.contains(&std::process::id().to_string()),
                    "holder {holder:?} does not name this process"
                );
            }
            other => panic!("second acquire not refused: {other:?}"),
        }
        assert!(matches!(
            store.delete(&job).await,
            Err(Error::Locked { .. })
        ));
        store.release(&first.lease).await?;
        let second = store.acquire(&job).await?;
        assert_eq!(second.lease.epoch(), first.lease.epoch() + 1);
        assert_eq!(store.load(&job).await?.expect("exists").record.epoch, 2);
        Ok(())
    }

    pub(crate) async fn i6_stale_epoch_save_refused(store: Arc<dyn CheckpointStore>) -> Result<()> {
        let job = id("job-1");
        store.create(&job, &plan()).await?;
        let old = store.acquire(&job).await?.lease;
        store
            .save(&old, JobStatus::Running, progress(1, "a").into())
            .await?;
        store.release(&old).await?;
        // Released: not an owner any more.
        assert!(matches!(
            store
                .save(&old, JobStatus::Running, progress(2, "a").into())
                .await,
            Err(Error::NotOwner { .. })
        ));
        let new = store.acquire(&job).await?.lease;
        match store
            .save(&old, JobStatus::Running, progress(3, "a").into())
            .await
        {
            Err(Error::StaleEpoch {
                epoch: 1,
                current: 2,
                ..
            }) => {}
            other => panic!("stale save not refused: {other:?}"),
        }
        assert!(matches!(
            store.renew(&old).await,
            Err(Error::StaleEpoch { .. })
        ));
        assert!(store.release(&old).await.is_err());
        // The stale saves left no trace.
        assert_eq!(
            store.load(&job).await?.expect("exists").record.progress,
            progress(1, "a")
        );
        store
            .save(&new, JobStatus::Running, progress(4, "a").into())
            .await?;
        assert_eq!(
            store.load(&job).await?.expect("exists").record.progress,
            progress(4, "a")
        );
        Ok(())
    }

    pub(crate) async fn acquire_of_missing_job_is_not_found(
        store: Arc<dyn CheckpointStore>,
    ) -> Result<()> {
        assert!(matches!(
            store.acquire(&id("nope")).await,
            Err(Error::NotFound { .. })
        ));
        // The failed acquire left nothing held: after creating it, it can be acquired.
        store.create(&id("nope"), &plan()).await?;
        store.acquire(&id("nope")).await?;
        Ok(())
    }

    pub(crate) async fn status_changes_follow_the_lifecycle(
        store: Arc<dyn CheckpointStore>,
    ) -> Result<()> {
        let job = id("job-1");
        store.create(&job, &plan()).await?;
        let lease = store.acquire(&job).await?.lease;
        assert!(matches!(
            store
                .save(&lease, JobStatus::Completed, Progress::default().into())
                .await,
            Err(Error::InvalidTransition {
                from: JobStatus::Pending,
                to: JobStatus::Completed,
                ..
            })
        ));
        for status in [
            JobStatus::Running,
            JobStatus::Running,
            JobStatus::Paused,
            JobStatus::Running,
            JobStatus::Completing,
            JobStatus::Completed,
        ] {
            store
                .save(&lease, status, Progress::default().into())
                .await?;
        }
        assert_eq!(
            store.load(&job).await?.expect("exists").record.status,
            JobStatus::Completed
        );
        Ok(())
    }

    pub(crate) async fn i5_concurrent_saves_last_one_wins_never_a_mix(
        store: Arc<dyn CheckpointStore>,
    ) -> Result<()> {
        let job = id("job-1");
        store.create(&job, &plan()).await?;
        let acquired = store.acquire(&job).await?;
        let lease = Arc::new(acquired.lease);
        let mut tasks = Vec::new();
        for tag in ["a", "b"] {
            let (store, lease) = (Arc::clone(&store), Arc::clone(&lease));
            tasks.push(tokio::spawn(async move {
                let mut saved = Vec::new();
                for n in 0..20 {
                    let p = progress(n, tag);
                    let g = store
                        .save(&lease, JobStatus::Running, p.clone().into())
                        .await?;
                    saved.push((g, p));
                }
                anyhow::Ok(saved)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        all.sort_by_key(|(g, _)| *g);
        let generations: Vec<u64> = all.iter().map(|(g, _)| *g).collect();
        let first = acquired.record.generation + 1;
        assert_eq!(
            generations,
            (first..first + 40).collect::<Vec<_>>(),
            "every save got its own generation"
        );
        let loaded = store.load(&job).await?.expect("exists").record;
        let (last_g, last_p) = all.last().expect("40 saves");
        assert_eq!(loaded.generation, *last_g);
        assert_eq!(&loaded.progress, last_p, "the newest save wins, whole");
        Ok(())
    }

    pub(crate) async fn large_failed_object_list_round_trips(
        store: Arc<dyn CheckpointStore>,
    ) -> Result<()> {
        let job = id("job-1");
        store.create(&job, &plan()).await?;
        let lease = store.acquire(&job).await?.lease;
        let mut p = progress(5, "a");
        for i in 0..100_000 {
            p.failed.insert(
                key(&format!("data/big/{i:08}")),
                Failure {
                    attempts: 5,
                    last_error: format!("connection reset by peer ({i})"),
                    kind: ferry_types::FailureKind::Transient,
                },
            );
        }
        store
            .save(&lease, JobStatus::Running, p.clone().into())
            .await?;
        let loaded = store.load(&job).await?.expect("exists").record;
        assert_eq!(loaded.progress.failed.len(), 100_001);
        assert_eq!(loaded.progress, p);
        Ok(())
    }

    pub(crate) async fn save_with_options_replaces_the_plan_options_only(
        store: Arc<dyn CheckpointStore>,
    ) -> Result<()> {
        let job = id("job-1");
        let created = store.create(&job, &plan()).await?;
        let lease = store.acquire(&job).await?.lease;
        let mut options = created.plan.options.clone();
        options.rate = "64KiB/s".parse()?;
        let g = store
            .save_with_options(
                &lease,
                JobStatus::Running,
                progress(3, "a").into(),
                &options,
            )
            .await?;
        let loaded = store.load(&job).await?.expect("saved").record;
        assert_eq!(loaded.generation, g);
        assert_eq!(loaded.progress, progress(3, "a"));
        assert_eq!(loaded.plan.options, options);
        let rest = |plan: &MigrationPlan| {
            (
                plan.id.clone(),
                plan.source,
                plan.target,
                plan.objects.clone(),
            )
        };
        assert_eq!(rest(&loaded.plan), rest(&created.plan));
        // A plain save keeps the options saved last.
        store
            .save(&lease, JobStatus::Paused, progress(4, "a").into())
            .await?;
        let loaded = store.load(&job).await?.expect("saved").record;
        assert_eq!(loaded.plan.options, options);
        // So does a new owner.
        store.release(&lease).await?;
        assert_eq!(store.acquire(&job).await?.record.plan.options, options);
        Ok(())
    }

    pub(crate) async fn the_plans_burst_survives_saves_and_a_new_owner(
        store: Arc<dyn CheckpointStore>,
    ) -> Result<()> {
        let job = id("job-1");
        let burst = ferry_types::ByteSize::kib(64);
        let created = store.create(&job, &plan().with_burst(burst)).await?;
        assert_eq!(created.plan.options.burst, Some(burst));
        let loaded = store.load(&job).await?.expect("created").record;
        assert_eq!(loaded.plan.options.burst, Some(burst));
        let lease = store.acquire(&job).await?.lease;
        store
            .save(&lease, JobStatus::Running, progress(1, "a").into())
            .await?;
        let mut options = created.plan.options.clone();
        options.rate = "64KiB/s".parse()?;
        store
            .save_with_options(
                &lease,
                JobStatus::Running,
                progress(2, "a").into(),
                &options,
            )
            .await?;
        store.release(&lease).await?;
        let acquired = store.acquire(&job).await?;
        assert_eq!(acquired.record.plan.options, options);
        assert_eq!(acquired.record.plan.options.burst, Some(burst));
        Ok(())
    }

    pub(crate) async fn job_ids_are_validated_before_storage(
        store: Arc<dyn CheckpointStore>,
    ) -> Result<()> {
        // Every method takes a `JobId`, which cannot hold a path: these never reach a store.
        for bad in ["../escape", "a/b", ".hidden", "", "nul\0", &"x".repeat(129)] {
            assert!(JobId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(store.list().await?.is_empty());
        Ok(())
    }
}

macro_rules! conformance {
    ($backend:ident, |$dir:ident| $make:expr) => {
        mod $backend {
            use $crate::suite::{Arc, CheckpointStore, Result, checks};

            fn store() -> (Arc<dyn CheckpointStore>, tempfile::TempDir) {
                let $dir = tempfile::tempdir().unwrap();
                let store: Arc<dyn CheckpointStore> = Arc::new($make);
                (store, $dir)
            }

            $crate::suite::conformance!(@tests
                round_trip,
                create_refuses_existing_job_and_foreign_plan_id,
                list_and_delete,
                i6_second_acquire_refused_while_held,
                i6_stale_epoch_save_refused,
                acquire_of_missing_job_is_not_found,
                status_changes_follow_the_lifecycle,
                i5_concurrent_saves_last_one_wins_never_a_mix,
                large_failed_object_list_round_trips,
                save_with_options_replaces_the_plan_options_only,
                the_plans_burst_survives_saves_and_a_new_owner,
                job_ids_are_validated_before_storage,
            );
        }
    };
    (@tests $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() -> Result<()> {
                let (store, _dir) = store();
                checks::$test(store).await
            }
        )*
    };
}

pub(crate) use conformance;
