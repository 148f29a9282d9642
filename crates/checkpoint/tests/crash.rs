//! Crash tests with real processes: the test binary re-executes itself as a child (the
//! pattern of sled's crash tests) that works on a `FileStore` and is killed with SIGKILL.
//!
//! `FERRY_CRASH_CYCLES` sets how many kill-and-reopen cycles run (default 8); `cargo xtask
//! crash` runs many.
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ferry_checkpoint::{CheckpointStore, Error, FileStore, Progress};
use ferry_types::{JobId, JobStatus, MigrationPlan, NodeId, ObjectKey, ObjectSelection};

const CHILD_MODE: &str = "FERRY_CHECKPOINT_CRASH_CHILD";
const CHILD_DIR: &str = "FERRY_CHECKPOINT_CRASH_DIR";

fn job() -> JobId {
    JobId::new("crash-job").unwrap()
}

fn progress(n: u64) -> Progress {
    let mut p = Progress::default();
    p.advance_watermark(ObjectKey::new(format!("obj/{n:010}")).unwrap());
    p.done_objects = n;
    p.done_bytes = n * 65_536;
    p
}

fn plan() -> MigrationPlan {
    MigrationPlan::new(
        NodeId::new("src").unwrap(),
        NodeId::new("dst").unwrap(),
        ObjectSelection::prefix("obj/"),
    )
}

/// The child's side. A no-op in a normal test run.
#[test]
fn child_process() -> Result<()> {
    let Ok(mode) = std::env::var(CHILD_MODE) else {
        return Ok(());
    };
    let dir = std::env::var(CHILD_DIR)?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(async move {
        let store = FileStore::open(&dir)?;
        let acquired = store.acquire(&job()).await?;
        let mut out = std::io::stdout().lock();
        match mode.as_str() {
            // Saves with increasing counters, printing each one after the save returned.
            "saver" => {
                let mut n = acquired.record.progress.done_objects;
                loop {
                    n += 1;
                    store
                        .save(&acquired.lease, JobStatus::Running, progress(n).into())
                        .await?;
                    writeln!(out, "saved {n}")?;
                    out.flush()?;
                }
            }
            // Holds the job until killed.
            "holder" => {
                writeln!(out, "held {}", std::process::id())?;
                out.flush()?;
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                Ok(())
            }
            other => bail!("unknown child mode {other}"),
        }
    })
}

fn spawn_child(mode: &str, dir: &Path) -> Result<Child> {
    Ok(Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_MODE, mode)
        .env(CHILD_DIR, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?)
}

/// The value after `tag` in a line of the child's output. libtest prints
/// `test child_process ... ` without a newline first, so a tag may start mid-line.
fn after<'a>(line: &'a str, tag: &str) -> Option<&'a str> {
    line.find(tag).map(|at| line[at + tag.len()..].trim())
}

fn cycles() -> u64 {
    std::env::var("FERRY_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i5_i6_sigkill_during_saves_leaves_a_readable_record_never_behind_the_last_acknowledged()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = FileStore::open(dir.path())?;
    store.create(&job(), &plan()).await?;
    let random = RandomState::new();
    let mut last_acked = 0;
    let mut last_epoch = 0;
    for cycle in 0..cycles() {
        let mut child = spawn_child("saver", dir.path())?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        // Kill after a random number of acknowledged saves, at a random moment after it.
        let r = random.hash_one(cycle);
        let kill_after = 1 + r % 40;
        let mut acked_now = None;
        for line in lines.by_ref() {
            let line = line?;
            if let Some(n) = after(&line, "saved ") {
                let n: u64 = n.parse()?;
                acked_now = Some(n);
                if n >= last_acked + kill_after {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_micros((r >> 32) % 3000));
        child.kill()?; // SIGKILL on Unix
        child.wait()?;
        // Saves acknowledged between our last read and the kill count too.
        for line in lines {
            if let Some(n) = after(&line?, "saved ") {
                acked_now = Some(n.parse()?);
            }
        }
        let acked_now = acked_now.context("the child saved nothing")?;

        // Reopen, as the next process would.
        let reopened = FileStore::open(dir.path())?;
        let loaded = reopened.load(&job()).await?.context("record gone")?;
        assert!(
            loaded.warnings.is_empty(),
            "cycle {cycle}: {:?}",
            loaded.warnings
        );
        let n = loaded.record.progress.done_objects;
        assert!(
            n == acked_now || n == acked_now + 1,
            "cycle {cycle}: record at {n}, last acknowledged save {acked_now}"
        );
        assert_eq!(
            loaded.record.progress,
            progress(n),
            "cycle {cycle}: a mixed record"
        );
        assert!(
            loaded.record.epoch > last_epoch,
            "cycle {cycle}: epoch did not grow"
        );
        // The dead child's lock went with it: acquire succeeds at once, no lease to wait out.
        let acquired = reopened.acquire(&job()).await?;
        reopened.release(&acquired.lease).await?;
        last_acked = n;
        last_epoch = acquired.lease.epoch();
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i6_live_holder_refuses_acquire_naming_its_pid_and_sigkill_frees_the_job() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = FileStore::open(dir.path())?;
    store.create(&job(), &plan()).await?;
    let mut child = spawn_child("holder", dir.path())?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let pid = loop {
        let line = lines
            .next()
            .context("child exited before holding the job")??;
        if let Some(pid) = after(&line, "held ") {
            break pid.to_owned();
        }
    };
    assert_eq!(pid, child.id().to_string());
    match store.acquire(&job()).await {
        Err(Error::Locked { holder, .. }) => {
            assert!(holder.contains(&format!("pid {pid}")), "{holder}");
        }
        other => panic!("acquire while a live process holds the job: {other:?}"),
    }
    child.kill()?;
    child.wait()?;
    let acquired = store.acquire(&job()).await?;
    assert_eq!(acquired.lease.epoch(), 2);
    Ok(())
}
