//! End-to-end tests of the `ferry` binary: each command, each exit code, the bad inputs of
//! issue #6, Ctrl-C and kill -9 followed by resume, and the control socket; `ferry check` in
//! [`check`].
//!
//! Nothing sleeps to let things happen: a test reads the child's JSON lines until a marker, or
//! polls a condition with a bounded deadline.
// Tests stop on the first unexpected error: unwrap and expect say where.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use ferry_object_store::test_server::S3Server;
use serde_json::Value;

mod auto;
mod check;
mod metrics;
mod parts;
mod serve;

/// A scratch directory with a state directory, and the `ferry` command bound to it.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn state(&self) -> PathBuf {
        self.path("state")
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::cargo_bin("ferry").expect("the ferry binary is built");
        cmd.env("FERRY_STATE", self.state())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("ferry runs")
    }

    /// Starts `ferry` with piped output; its stdout lines arrive on the returned channel.
    fn spawn(&self, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
        let mut child = self
            .cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ferry starts");
        let stdout = child.stdout.take().expect("piped stdout");
        (child, line_channel(stdout))
    }
}

/// The lines of `pipe`, read by a thread of their own, on a channel.
fn line_channel(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `ferry` exited with `code` and said `needle` on stderr.
fn assert_fails(out: &Output, code_wanted: i32, needle: &str) {
    assert_eq!(code(out), code_wanted, "{}", text(out));
    assert!(stderr(out).contains(needle), "{}", text(out));
}

/// Reads JSON lines until one satisfies `pred`, within `limit`.
fn wait_line(rx: &mpsc::Receiver<String>, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no matching line from ferry within {limit:?}: {e}"));
        if let Ok(value) = serde_json::from_str::<Value>(&line)
            && pred(&value)
        {
            return value;
        }
    }
}

/// Polls `cond` until it holds, within `limit`.
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for ferry") {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferry did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {sig} failed");
}

fn write(path: &Path, data: &[u8]) {
    fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    fs::write(path, data).expect("write");
}

/// Deterministic pseudo-random bytes.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A tree as users have it: nested folders, empty files, spaces, unicode, leading dashes,
/// dotfiles, a deep path, a large file, and a symlink (to a file) and a dangling one.
fn real_tree(root: &Path) {
    write(&root.join("docs/readme.txt"), b"hello");
    write(&root.join("docs/empty"), b"");
    write(&root.join("with space/a file.txt"), &bytes(1, 1000));
    write(&root.join("ünïcødé/日本語.txt"), &bytes(2, 2000));
    write(&root.join("-leading/-dash.txt"), b"dash");
    write(&root.join(".hidden/.dotfile"), b"dot");
    let deep: String = (0..40).map(|i| format!("d{i}/")).collect();
    write(&root.join(format!("{deep}deep.bin")), &bytes(3, 100));
    write(&root.join("large.bin"), &bytes(4, 3 << 20));
    symlink(root.join("docs/readme.txt"), root.join("link-to-readme")).expect("symlink");
    symlink("/nonexistent/target", root.join("docs/dangling")).expect("symlink");
}

/// `n` files of `size` bytes.
fn flat_tree(root: &Path, n: usize, size: usize) {
    for i in 0..n {
        write(
            &root.join(format!("f/{i:04}.bin")),
            &bytes(i as u64 + 10, size),
        );
    }
}

/// The regular files under `root`, relative path → content; symlinks and temp files listed
/// separately.
fn regular_files(root: &Path) -> (BTreeMap<String, Vec<u8>>, Vec<String>) {
    let mut files = BTreeMap::new();
    let mut others = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let ty = entry.file_type().expect("file type");
            let rel = entry
                .path()
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() && !rel.contains(".ferry-tmp-") {
                files.insert(rel, fs::read(entry.path()).expect("read"));
            } else {
                others.push(rel);
            }
        }
    }
    (files, others)
}

/// DST holds exactly SRC's regular files, byte for byte, and nothing else (no symlink, no
/// temp or partial file).
fn assert_same_files(src: &Path, dst: &Path) {
    let (want, _) = regular_files(src);
    let (got, others) = regular_files(dst);
    assert!(others.is_empty(), "unexpected entries in DST: {others:?}");
    let want_keys: Vec<_> = want.keys().collect();
    let got_keys: Vec<_> = got.keys().collect();
    assert_eq!(got_keys, want_keys, "DST's files differ from SRC's");
    for (key, data) in &want {
        assert!(got[key] == *data, "content of {key} differs");
    }
}

fn status_json(env: &Env, id: &str) -> Value {
    let out = env.run(&["status", id, "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

#[test]
fn migrate_copies_a_real_tree_and_skips_symlinks_with_a_notice() {
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    real_tree(&src);
    let out = env.run(&[
        "migrate",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--id",
        "tree",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_same_files(&src, &dst);
    let err = stderr(&out);
    assert!(
        err.contains("skipping link-to-readme: symbolic link"),
        "{err}"
    );
    assert!(
        err.contains("skipping docs/dangling: symbolic link"),
        "{err}"
    );
    let status = status_json(&env, "tree");
    assert_eq!(status["status"], "completed");
    assert_eq!(status["done_objects"], 8);
    assert_eq!(status["not_regular_skipped"], 2);
    assert_eq!(status["failed_objects"], 0);
    // The source is untouched under the default cleanup policy (never).
    assert!(src.join("large.bin").exists());
}

#[test]
fn migrate_with_cleanup_after_verify_moves_files_and_json_output_is_lines_of_json() {
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    flat_tree(&src, 20, 1000);
    write(&src.join("keep/other.txt"), b"not in the prefix");
    let copy = env.path("copy");
    flat_tree(&copy, 20, 1000);
    let out = env.run(&[
        "migrate",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--prefix",
        "f/",
        "--cleanup",
        "after-verify",
        "--verify",
        "size",
        "--checkpoint",
        "redb",
        "--json",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .collect();
    assert_eq!(lines.first().expect("a first line")["event"], "started");
    let done = lines.last().expect("a last line");
    assert_eq!(done["event"], "done");
    assert_eq!(done["status"], "completed");
    assert_eq!(done["done_objects"], 20);
    // Moved: in DST, gone from SRC (only the file outside the prefix is left).
    assert_same_files(&copy, &dst);
    let (left, _) = regular_files(&src);
    assert_eq!(left.keys().collect::<Vec<_>>(), ["keep/other.txt"]);
}

#[test]
fn plan_reports_objects_bytes_and_time_and_touches_neither_side() {
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    real_tree(&src);
    let out = env.run(&[
        "plan",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--rate",
        "1MiB",
        "--json",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan --json is JSON");
    assert_eq!(plan["objects"], 8);
    let total: u64 = regular_files(&src).0.values().map(|v| v.len() as u64).sum();
    assert_eq!(plan["bytes"], total);
    let secs = plan["seconds_at_rate"]
        .as_f64()
        .expect("seconds at the rate");
    assert!((secs - total as f64 / 1048576.0).abs() < 0.01, "{secs}");
    assert_eq!(plan["skipped"].as_array().expect("skipped").len(), 2);
    assert!(!dst.exists(), "plan created DST");
    // Human form.
    let out = env.run(&[
        "plan",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--rate",
        "1MiB",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("would move 8 objects"),
        "{}",
        text(&out)
    );
    // No job was recorded.
    let out = env.run(&["list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

#[test]
fn list_status_forget_keep_and_remove_finished_jobs() {
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    flat_tree(&src, 3, 10);
    for id in ["one", "two"] {
        let out = env.run(&[
            "migrate",
            src.to_str().unwrap(),
            env.path(id).to_str().unwrap(),
            "--id",
            id,
            "-q",
        ]);
        assert_eq!(code(&out), 0, "{}", text(&out));
        assert!(out.stdout.is_empty(), "--quiet printed: {}", text(&out));
    }
    let _ = dst;
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("one") && listing.contains("two") && listing.contains("completed"),
        "{listing}"
    );
    let out = env.run(&["status", "--json"]);
    let all: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(all.as_array().expect("an array").len(), 2);
    let out = env.run(&["status", "one"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("status:    completed"),
        "{}",
        text(&out)
    );
    // Resuming a completed job does nothing and says so.
    let out = env.run(&["resume", "one"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already completed"),
        "{}",
        text(&out)
    );
    // Cancelling a completed job is an error.
    let out = env.run(&["cancel", "one"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let out = env.run(&["forget", "one"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = env.run(&["status", "one"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(stderr(&out).contains("no job one"), "{}", text(&out));
    let out = env.run(&["list", "--json"]);
    let rows: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(rows.as_array().expect("array").len(), 1);
    // The files stay where they are.
    assert!(env.path("one/f/0000.bin").exists());
}

#[test]
fn bad_inputs_are_clear_errors_with_the_right_exit_code() {
    let env = Env::new();
    let src = env.path("src");
    flat_tree(&src, 2, 10);
    let s = src.to_str().unwrap();
    let inside = src.join("sub");
    let parent = env.path("");
    let same = format!("{s}/../src/x/..");
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["migrate", s, s], 2, "same directory"),
        (
            vec!["migrate", s, inside.to_str().unwrap()],
            2,
            "is inside the source",
        ),
        (vec!["migrate", s, &same], 2, "same directory"),
        (
            vec!["migrate", s, parent.to_str().unwrap()],
            2,
            "is inside the destination",
        ),
        (
            vec!["migrate", "/nonexistent/ferry-src", "/tmp/x"],
            1,
            "cannot open the source directory /nonexistent/ferry-src",
        ),
        (
            vec!["migrate", "ftp://host/p", "/tmp/x"],
            2,
            "ftp:// is not a location ferry knows",
        ),
        (
            vec!["migrate", s, "/tmp/x", "--rate", "fast"],
            2,
            "invalid value",
        ),
        (
            vec!["migrate", s, "/tmp/x", "--verify", "maybe"],
            2,
            "none, size or checksum",
        ),
        (
            vec!["migrate", s, "/tmp/x", "--id", "../evil"],
            2,
            "invalid job id",
        ),
        (vec!["migrate"], 2, "required"),
        (vec!["frobnicate"], 2, "unrecognized subcommand"),
        (vec!["resume", "ghost"], 1, "no job ghost"),
        (vec!["status", "ghost"], 1, "no job ghost"),
        (vec!["cancel", "ghost"], 1, "no job ghost"),
        (vec!["forget", "ghost"], 1, "no job ghost"),
        (vec!["retry-failed", "ghost"], 1, "no job ghost"),
        (vec!["pause", "ghost"], 1, "no job ghost"),
        (vec!["set-rate", "ghost", "1MiB"], 1, "no job ghost"),
    ];
    for (args, want, needle) in cases {
        let out = env.run(&args);
        assert_eq!(code(&out), want, "{args:?}: {}", text(&out));
        assert!(
            stderr(&out).contains(needle),
            "{args:?} should say {needle:?}: {}",
            text(&out)
        );
        assert!(!stderr(&out).contains("panicked"), "{args:?} panicked");
    }
    // The state directory inside SRC is refused too.
    let out = env
        .cmd()
        .args([
            "migrate",
            s,
            env.path("dst").to_str().unwrap(),
            "--state",
            src.join("st").to_str().unwrap(),
        ])
        .output()
        .expect("runs");
    assert_eq!(code(&out), 2, "{}", text(&out));
    // A job id used twice.
    let dst = env.path("dst");
    let out = env.run(&["migrate", s, dst.to_str().unwrap(), "--id", "dup", "-q"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = env.run(&[
        "migrate",
        s,
        env.path("dst2").to_str().unwrap(),
        "--id",
        "dup",
    ]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(stderr(&out).contains("already exists"), "{}", text(&out));
}

#[test]
fn a_corrupt_checkpoint_or_state_file_is_an_error_naming_the_file() {
    let env = Env::new();
    let src = env.path("src");
    flat_tree(&src, 2, 10);
    let out = env.run(&[
        "migrate",
        src.to_str().unwrap(),
        env.path("dst").to_str().unwrap(),
        "--id",
        "c1",
        "-q",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let ckpt_dir = env.state().join("checkpoints");
    let mut corrupted = Vec::new();
    for entry in fs::read_dir(&ckpt_dir).expect("checkpoints dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("c1.") && name.ends_with(".ckpt") {
            let mut data = fs::read(&path).expect("read");
            let last = data.len() - 1;
            data[last] ^= 0xff;
            fs::write(&path, data).expect("write");
            corrupted.push(path);
        }
    }
    assert!(
        !corrupted.is_empty(),
        "no checkpoint file found in {}",
        ckpt_dir.display()
    );
    for args in [vec!["status", "c1"], vec!["resume", "c1"]] {
        let out = env.run(&args);
        assert_eq!(code(&out), 1, "{args:?}: {}", text(&out));
        let err = stderr(&out);
        assert!(err.contains("corrupt"), "{err}");
        assert!(
            corrupted
                .iter()
                .any(|p| err.contains(&p.display().to_string())),
            "the message names no file: {err}"
        );
    }
    // A corrupt sidecar is named too.
    let sidecar = env.state().join("jobs/c1.json");
    fs::write(&sidecar, b"{ not json").expect("write");
    let out = env.run(&["status", "c1"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        stderr(&out).contains(&sidecar.display().to_string()),
        "{}",
        text(&out)
    );
    // forget still clears it.
    let out = env.run(&["forget", "c1"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
}

/// Runs ferry as an unprivileged user when the tests run as root (root reads any file).
fn unprivileged(env: &Env, args: &[&str]) -> Output {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .expect("id");
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        return env.run(args);
    }
    let bin = assert_cmd::cargo::cargo_bin("ferry");
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin)
        .args(args)
        .env("FERRY_STATE", env.state())
        .env("HOME", env.path(""))
        .output()
        .expect("setpriv runs")
}

#[test]
fn an_unreadable_file_fails_that_object_exit_3_then_retry_failed_finishes() {
    let env = Env::new();
    fs::set_permissions(env.path(""), fs::Permissions::from_mode(0o777)).expect("chmod");
    let (src, dst) = (env.path("src"), env.path("dst"));
    flat_tree(&src, 5, 100);
    write(&src.join("secret.txt"), b"top secret");
    let secret = src.join("secret.txt");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).expect("chmod");
    for dir in [env.path("src"), env.path("src/f")] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    fs::create_dir_all(env.state()).expect("state");
    fs::create_dir_all(&dst).expect("dst");
    chown_all(&env, &[env.state(), dst.clone()]);
    let out = unprivileged(
        &env,
        &[
            "migrate",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
            "--id",
            "perm",
        ],
    );
    assert_eq!(code(&out), 3, "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("secret.txt"), "{err}");
    assert!(err.contains("retry-failed perm"), "{err}");
    // The hint comes from the failure's kind (`permission_denied`).
    assert!(err.contains("fix the permissions"), "{err}");
    assert!(!dst.join("secret.txt").exists());
    assert!(dst.join("f/0004.bin").exists());
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = unprivileged(&env, &["retry-failed", "perm"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_same_files(&src, &dst);
}

/// Gives the paths to the unprivileged user when running as root.
fn chown_all(_env: &Env, paths: &[PathBuf]) {
    for path in paths {
        let _ = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(path)
            .status();
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_nothing_partial_is_left() {
    let env = Env::new();
    let src = env.path("src");
    flat_tree(&src, 6, 400 << 10);
    let mnt = env.path("small");
    fs::create_dir_all(&mnt).expect("mkdir");
    let bin = assert_cmd::cargo::cargo_bin("ferry");
    // A 1 MiB tmpfs in a private mount namespace (no root needed: a user namespace).
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs '{m}' && '{b}' migrate '{s}' '{m}/dst' --id full; rc=$?; \
         echo LEFT; find '{m}' -name '.ferry-tmp-*'; exit $rc",
        m = mnt.display(),
        b = bin.display(),
        s = src.display()
    );
    let out = Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .env("FERRY_STATE", env.state())
        .output()
        .expect("unshare runs");
    let rc = code(&out);
    assert!(rc == 3 || rc == 1, "exit code {rc}: {}", text(&out));
    let err = stderr(&out);
    // The hint comes from the failures' kind (`disk_full`), not from the error's text.
    assert!(err.contains("the destination's disk is full"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let left = stdout.split("LEFT").nth(1).unwrap_or("");
    assert!(left.trim().is_empty(), "temp files left: {left}");
}

#[test]
fn sigint_pauses_saves_prints_the_resume_command_then_resume_finishes() {
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    flat_tree(&src, 64, 64 << 10);
    let (mut child, rx) = env.spawn(&[
        "migrate",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--id",
        "int",
        "--rate",
        "256KiB",
        "--json",
    ]);
    wait_line(&rx, Duration::from_secs(30), |v| v["event"] == "started");
    signal(&child, "-INT");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), 130);
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err).expect("read");
    assert!(err.contains("paused and saved"), "{err}");
    assert!(
        err.contains(&format!(
            "ferry --state {} resume int",
            env.state().display()
        )),
        "{err}"
    );
    assert_eq!(status_json(&env, "int")["status"], "paused");
    let out = env.run(&["resume", "int", "--rate", "unlimited", "-q"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_same_files(&src, &dst);
    assert_eq!(status_json(&env, "int")["status"], "completed");
    assert_eq!(status_json(&env, "int")["done_objects"], 64);
}

#[test]
fn kill_9_mid_copy_then_resume_leaves_exactly_the_source_files() {
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    flat_tree(&src, 48, 64 << 10);
    write(&src.join("big/large.bin"), &bytes(99, 3 << 20));
    let (mut child, rx) = env.spawn(&[
        "migrate",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--id",
        "k9",
        "--rate",
        "512KiB",
        "--concurrency",
        "4",
        "--json",
    ]);
    // Kill once some bytes are copied but the job is far from done.
    wait_line(&rx, Duration::from_secs(30), |v| {
        v["event"] == "progress" && v["bytes_copied"].as_u64().unwrap_or(0) > 0
    });
    signal(&child, "-KILL");
    let _ = wait_exit(&mut child, Duration::from_secs(10));
    let (partial, _) = regular_files(&dst);
    assert!(partial.len() < 49, "the job finished before the kill");
    let out = env.run(&["resume", "k9", "--rate", "unlimited", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_same_files(&src, &dst);
    assert_eq!(status_json(&env, "k9")["status"], "completed");
}

#[test]
fn the_control_socket_pauses_throttles_reports_and_resumes_a_running_job() {
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    flat_tree(&src, 64, 64 << 10);
    let (mut child, rx) = env.spawn(&[
        "migrate",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--id",
        "live",
        "--rate",
        "256KiB",
        "--json",
    ]);
    let started = wait_line(&rx, Duration::from_secs(30), |v| v["event"] == "started");
    let socket = PathBuf::from(started["socket"].as_str().expect("socket path"));
    let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(socket.parent().expect("run dir")), 0o700);

    let status = status_json(&env, "live");
    assert_eq!(status["live"], true, "{status}");
    assert_eq!(status["status"], "running", "{status}");

    let out = env.run(&["pause", "live"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(status_json(&env, "live")["status"], "paused");
    wait_line(&rx, Duration::from_secs(10), |v| v["event"] == "paused");
    // While paused, nothing moves.
    let before = status_json(&env, "live")["snapshot"]["bytes_copied"].clone();
    let out = env.run(&["set-rate", "live", "unlimited"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let status = status_json(&env, "live");
    assert_eq!(
        status["snapshot"]["effective_rate"], "unlimited",
        "{status}"
    );
    assert_eq!(
        status["snapshot"]["bytes_copied"], before,
        "bytes moved while paused"
    );

    let out = env.run(&["resume", "live"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed in its running process"));
    assert_eq!(wait_exit(&mut child, Duration::from_secs(60)), 0);
    assert_same_files(&src, &dst);
    assert!(!socket.exists(), "the socket outlived its job");
    let out = env.run(&["pause", "live"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(stderr(&out).contains("is not running"), "{}", text(&out));
}

#[test]
fn cancel_of_a_stopped_job_and_of_a_live_one() {
    let env = Env::new();
    let src = env.path("src");
    flat_tree(&src, 32, 64 << 10);
    // A stopped (interrupted) job.
    let (mut child, rx) = env.spawn(&[
        "migrate",
        src.to_str().unwrap(),
        env.path("d1").to_str().unwrap(),
        "--id",
        "c-stop",
        "--rate",
        "128KiB",
        "--json",
    ]);
    wait_line(&rx, Duration::from_secs(30), |v| v["event"] == "started");
    signal(&child, "-INT");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), 130);
    let out = env.run(&["cancel", "c-stop"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(status_json(&env, "c-stop")["status"], "cancelled");
    let out = env.run(&["resume", "c-stop"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(stderr(&out).contains("already cancelled"), "{}", text(&out));
    // A live job, cancelled from another process: it exits 1 and says so.
    let (mut child, rx) = env.spawn(&[
        "migrate",
        src.to_str().unwrap(),
        env.path("d2").to_str().unwrap(),
        "--id",
        "c-live",
        "--rate",
        "128KiB",
        "--json",
    ]);
    wait_line(&rx, Duration::from_secs(30), |v| v["event"] == "started");
    let out = env.run(&["cancel", "c-live"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), 1);
    wait_until(
        Duration::from_secs(10),
        "the record to say cancelled",
        || status_json(&env, "c-live")["status"] == "cancelled",
    );
}

#[test]
fn sled_checkpoints_work_end_to_end() {
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    flat_tree(&src, 5, 100);
    let out = env.run(&[
        "migrate",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--id",
        "s",
        "--checkpoint",
        "sled",
        "-q",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_same_files(&src, &dst);
    assert_eq!(status_json(&env, "s")["checkpoint"], "sled");
    assert_eq!(status_json(&env, "s")["status"], "completed");
}

#[test]
fn demo_runs_and_its_summary_checks_reads_and_writes() {
    let env = Env::new();
    let out = env.run(&["demo", "--objects", "2000", "--seconds", "2", "--json"]);
    let summary: Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .expect("a summary line"),
    )
    .unwrap_or_else(|e| panic!("summary is JSON: {e}\n{}", text(&out)));
    assert!(
        summary["reads_served"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    assert!(
        summary["writes_accepted"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    assert_eq!(
        summary["objects_moved"], summary["objects_expected"],
        "{summary}"
    );
    // The verdict is computed by checking (I2: no failed read, I3: no lost write, no
    // resurrection), and the exit code follows it.
    assert_eq!(summary["failed_reads"], 0, "{summary}");
    assert_eq!(summary["lost_writes"], 0, "{summary}");
    assert_eq!(summary["resurrected_deletes"], 0, "{summary}");
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(code(&out), 0, "{}", text(&out));
}

/// `ferry` pointed at the in-process S3 server: its `AWS_*` variables, and none of the
/// machine's own.
fn s3_cmd(env: &Env, server: &S3Server) -> Command {
    let mut cmd = env.cmd();
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(name);
        }
    }
    cmd.envs(server.env());
    cmd
}

#[test]
fn s3_urls_dir_to_bucket_to_bucket_to_dir_and_plan_over_a_bucket() {
    let env = Env::new();
    let server = S3Server::start(&["one", "two"]).expect("the S3 test server starts");
    let (src, back) = (env.path("src"), env.path("back"));
    real_tree(&src);
    let run = |args: &[&str]| {
        let out = s3_cmd(&env, &server)
            .args(args)
            .output()
            .expect("ferry runs");
        assert_eq!(code(&out), 0, "{args:?}: {}", text(&out));
        out
    };
    // dir → bucket (the symlinks skipped as for a directory), bucket → bucket, bucket → dir.
    run(&[
        "migrate",
        src.to_str().unwrap(),
        "s3://one/data",
        "--id",
        "up",
    ]);
    let out = run(&["plan", "s3://one/data", "s3://two/copy", "--json"]);
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan --json is JSON");
    assert_eq!(plan["objects"], 8, "{plan}");
    assert_eq!(plan["source"], "s3://one/data");
    run(&[
        "migrate",
        "s3://one/data",
        "s3://two/copy/",
        "--id",
        "across",
    ]);
    run(&[
        "migrate",
        "s3://two/copy",
        back.to_str().unwrap(),
        "--id",
        "down",
    ]);
    assert_same_files(&src, &back);
    for id in ["up", "across", "down"] {
        let status = status_json(&env, id);
        assert_eq!(status["status"], "completed", "{id}: {status}");
        assert_eq!(status["done_objects"], 8, "{id}: {status}");
        assert_eq!(status["failed_objects"], 0, "{id}: {status}");
    }
    assert_eq!(status_json(&env, "across")["target"], "s3://two/copy");
}

#[test]
fn s3_bad_urls_and_wrong_credentials_are_clear_errors() {
    let env = Env::new();
    let server = S3Server::start(&["one"]).expect("the S3 test server starts");
    let src = env.path("src");
    flat_tree(&src, 3, 100);
    let run = |args: &[&str], secret: &str| {
        s3_cmd(&env, &server)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .args(args)
            .output()
            .expect("ferry runs")
    };
    let good = ferry_object_store::test_server::SECRET_KEY;
    let out = run(&["migrate", src.to_str().unwrap(), "s3://one/x"], "wrong");
    assert_eq!(code(&out), 1, "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cannot list the destination s3://one/x"),
        "{err}"
    );
    assert!(err.contains("AWS_SECRET_ACCESS_KEY"), "{err}");
    // Refused before any job is recorded.
    assert!(
        env.run(&["list", "--json"]).stdout.len() <= 3,
        "no job recorded"
    );
    let out = run(&["migrate", "s3://one/x", "s3://one/x/y"], good);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        stderr(&out).contains("is inside the source s3://one/x"),
        "{}",
        text(&out)
    );
    let out = run(&["migrate", "s3://one/x", "s3a://one/x/"], good);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(stderr(&out).contains("the same place"), "{}", text(&out));
    let out = run(&["migrate", "memory://x", src.to_str().unwrap()], good);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        stderr(&out).contains("inside one process"),
        "{}",
        text(&out)
    );
    let out = run(&["migrate", "s3://nobucket/x", src.to_str().unwrap()], good);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        stderr(&out).contains("cannot list the source s3://nobucket/x"),
        "{}",
        text(&out)
    );
}

/// `ferry worker` (through the S3 server's variables) with its stderr lines on a channel.
fn spawn_worker(env: &Env, server: &S3Server, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = s3_cmd(env, server)
        .arg("worker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry starts");
    let stderr = child.stderr.take().expect("piped stderr");
    (child, line_channel(stderr))
}

/// Runs `cmd` to its end, killed (and the test failed) if it takes longer than `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry starts");
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let _ = wait_exit(&mut child, limit);
    Output {
        status: child.wait().expect("ferry exited"),
        stdout: stdout.join().expect("stdout read"),
        stderr: stderr.join().expect("stderr read"),
    }
}

/// Reads lines until one contains `needle`, within `limit`; every line read is kept in `seen`.
fn wait_text(rx: &mpsc::Receiver<String>, limit: Duration, needle: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return;
                }
            }
            Err(e) => panic!("no line with {needle:?} within {limit:?} ({e}); seen: {seen:#?}"),
        }
    }
}

/// Submits a 40 × 200 KiB tree in two ranges at 1 MiB/s per range, so a range runs for
/// seconds: long enough to stop or kill its worker in the middle.
fn submit_slow_job(env: &Env, server: &S3Server, id: &str) -> (PathBuf, PathBuf) {
    let (src, dst) = (env.path("src"), env.path("dst"));
    flat_tree(&src, 40, 200 << 10);
    let out = s3_cmd(env, server)
        .args(["submit", src.to_str().unwrap(), dst.to_str().unwrap()])
        .args(["--state", "s3://state/ferry", "--id", id, "--ranges", "2"])
        .args(["--rate", "1MiB", "--concurrency", "4"])
        .output()
        .expect("ferry runs");
    assert_eq!(code(&out), 0, "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("40 objects"), "{said}");
    assert!(said.contains("2 ranges"), "{said}");
    assert!(
        said.contains("ferry worker --state s3://state/ferry"),
        "{said}"
    );
    (src, dst)
}

/// A slow job submitted, and its first worker (`a`, lease 3 s) in the middle of its first
/// range: running it, with at least `copied` files in DST.
struct MidRange {
    env: Env,
    server: S3Server,
    src: PathBuf,
    dst: PathBuf,
    a: Child,
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

const WORKER_STATE: [&str; 4] = ["--state", "s3://state/ferry", "--lease", "3s"];

fn worker_mid_range(id: &str, copied: usize) -> MidRange {
    let env = Env::new();
    let server = S3Server::start(&["state"]).expect("the S3 test server starts");
    let (src, dst) = submit_slow_job(&env, &server, id);
    let (a, rx) = spawn_worker(&env, &server, &WORKER_STATE);
    let mut seen = Vec::new();
    let first = format!("running range {id}.r000");
    wait_text(&rx, Duration::from_secs(30), &first, &mut seen);
    wait_until(Duration::from_secs(30), "a's first copies", || {
        regular_files(&dst).0.len() >= copied
    });
    MidRange {
        env,
        server,
        src,
        dst,
        a,
        rx,
        seen,
    }
}

#[test]
fn i6_a_killed_workers_range_is_taken_over_when_its_lease_runs_out() {
    let MidRange {
        env,
        server,
        src,
        dst,
        mut a,
        ..
    } = worker_mid_range("shared", 4);
    let state = WORKER_STATE;
    signal(&a, "-KILL");
    let _ = wait_exit(&mut a, Duration::from_secs(10));
    assert!(
        regular_files(&dst).0.len() < 40,
        "worker a finished before the kill"
    );

    // Worker b runs the free range, waits for a's lease to run out, then takes it over.
    let mut b = s3_cmd(&env, &server);
    b.arg("worker").args(state);
    let out = output_within(b, Duration::from_secs(60));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("took the job over from pid {}", a.id())),
        "{err}"
    );
    assert!(err.contains("running range shared.r001"), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("every range is finished: 40 objects done"),
        "{}",
        text(&out)
    );
    assert_same_files(&src, &dst);

    // Nothing is left to do, for any worker.
    let out = s3_cmd(&env, &server)
        .args(["worker", "--state", "s3://state/ferry", "--id", "shared"])
        .output()
        .expect("ferry runs");
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(!stderr(&out).contains("running range"), "{}", text(&out));
}

#[test]
fn i6_a_stopped_worker_is_fenced_when_it_wakes_after_a_takeover() {
    let MidRange {
        env,
        server,
        src,
        dst,
        mut a,
        rx,
        mut seen,
    } = worker_mid_range("fenced", 1);
    let state = WORKER_STATE;
    // Worker a hangs (a long pause, a partition): it holds its lease and renews nothing.
    signal(&a, "-STOP");
    let mut b = s3_cmd(&env, &server);
    b.arg("worker").args(state);
    let out = output_within(b, Duration::from_secs(60));
    signal(&a, "-CONT");
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(stderr(&out).contains("took the job over"), "{}", text(&out));

    // Worker a wakes: its next checkpoint save is refused and it stops, exit 1.
    wait_text(
        &rx,
        Duration::from_secs(60),
        "was taken over by another worker",
        &mut seen,
    );
    assert_eq!(wait_exit(&mut a, Duration::from_secs(30)), 1, "{seen:#?}");
    assert_same_files(&src, &dst);
    // The ranges stay finished: the stale worker's saves left no trace.
    let out = s3_cmd(&env, &server)
        .args(["worker", "--state", "s3://state/ferry"])
        .output()
        .expect("ferry runs");
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("every range is finished: 40 objects done"),
        "{}",
        text(&out)
    );
}

#[test]
fn submit_and_worker_refuse_bad_state_and_ids_with_clear_errors() {
    let env = Env::new();
    let server = S3Server::start(&["state"]).expect("the S3 test server starts");
    let src = env.path("src");
    flat_tree(&src, 3, 100);
    let (s, d) = (src.to_str().unwrap(), env.path("dst"));
    let d = d.to_str().unwrap();
    let run = |args: &[&str]| {
        s3_cmd(&env, &server)
            .env_remove("FERRY_STATE")
            .args(args)
            .output()
            .expect("ferry runs")
    };
    assert_fails(&run(&["worker"]), 2, "needs --state");
    let out = run(&["submit", s, d, "--id", "j", "--state", "/tmp/dir"]);
    assert_fails(&out, 2, "is not a bucket URL");
    let out = run(&["worker", "--state", "s3://state/empty"]);
    assert_fails(&out, 1, "there is no job in s3://state/empty");
    let out = run(&["worker", "--state", "s3://state/x", "--lease", "1s"]);
    assert_fails(&out, 2, "too short");

    let submit = ["submit", s, d, "--id", "j", "--state", "s3://state/x"];
    assert_eq!(code(&run(&submit)), 0);
    assert_fails(&run(&submit), 2, "a job j already exists in s3://state/x");
    let out = run(&["worker", "--state", "s3://state/x", "--id", "nope"]);
    assert_fails(&out, 1, "there is no job nope");

    let out = s3_cmd(&env, &server)
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .args(["worker", "--state", "s3://state/x"])
        .output()
        .expect("ferry runs");
    assert_fails(&out, 1, "in the shared state s3://state/x");
    assert_fails(&out, 1, "AWS_SECRET_ACCESS_KEY");
    // The job is still there, untouched, and a worker finishes it.
    let out = run(&["status", "j", "--state", "s3://state/x", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let status: Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert_eq!(status["status"], "waiting_for_workers", "{status:#}");
    assert_eq!(status["total_objects"], 3, "{status:#}");
    let out = run(&["worker", "--state", "s3://state/x"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_same_files(&src, Path::new(d));
    let out = run(&["list", "--state", "s3://state/x", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let list: Value = serde_json::from_slice(&out.stdout).expect("list --json is JSON");
    assert_eq!(list[0]["status"], "completed", "{list:#}");
    assert_eq!(list[0]["done_objects"], 3, "{list:#}");
    assert!(
        list[0]["ranges"]
            .as_array()
            .expect("ranges")
            .iter()
            .all(|r| r["status"] == "completed" && r["holder"].is_null()),
        "{list:#}"
    );
    // The commands of this machine's state directory refuse a bucket state.
    let out = run(&["migrate", s, d, "--state", "s3://state/x"]);
    assert_fails(&out, 2, "is a bucket: `ferry migrate`");
    assert!(
        !Path::new("s3:").exists(),
        "no local directory named after the URL"
    );
}

/// Another program at work in SRC while it moves: rewrites files in place, writes temp files
/// and renames them over, creates new files and deletes files, until `stop` exists; each
/// change that took effect goes to the ledger as `W<TAB>path<TAB>content` or `D<TAB>path`.
/// Each content has a length of its own, so a rewrite changes the file's size even within
/// one tick of the file system's clock (a directory's version is inode, size and mtime).
const WRITER: &str = r#"
set -u
src=$1 ledger=$2 stop=$3 n=$4
k=0
while [ ! -e "$stop" ]; do
  k=$((k + 1))
  f=$(printf 'f/%04d.bin' $(( (k * 7919) % n )))
  pad=$(printf '%*s' $(( k % 997 )) '')
  case $(( k % 4 )) in
    0) c="in place $k$pad"; printf '%s' "$c" > "$src/$f" && printf 'W\t%s\t%s\n' "$f" "$c" >> "$ledger" ;;
    1) c="renamed $k$pad"; printf '%s' "$c" > "$src/$f.tmp$k" && mv "$src/$f.tmp$k" "$src/$f" \
         && printf 'W\t%s\t%s\n' "$f" "$c" >> "$ledger" ;;
    2) g=$(printf 'new/%06d.bin' $k); c="created $k$pad"; mkdir -p "$src/new" \
         && printf '%s' "$c" > "$src/$g" && printf 'W\t%s\t%s\n' "$g" "$c" >> "$ledger" ;;
    3) rm "$src/$f" 2>/dev/null && printf 'D\t%s\n' "$f" >> "$ledger" ;;
  esac
done
exit 0
"#;

/// The tree `flat_tree` made, with the ledger's changes applied in order: what SRC would
/// hold had nothing moved.
fn expected_after(initial: &BTreeMap<String, Vec<u8>>, ledger: &str) -> BTreeMap<String, Vec<u8>> {
    let mut files = initial.clone();
    for line in ledger.lines() {
        let mut parts = line.splitn(3, '\t');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("W"), Some(path), Some(content)) => {
                files.insert(path.to_owned(), content.as_bytes().to_vec());
            }
            (Some("D"), Some(path), None) => {
                files.remove(path);
            }
            _ => panic!("bad ledger line {line:?}"),
        }
    }
    files
}

#[test]
fn i1_i3_files_changed_by_another_program_during_a_move_are_counted_then_retry_failed_moves_them() {
    const N: usize = 3000;
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    flat_tree(&src, N, 2 << 10);
    let (initial, _) = regular_files(&src);
    let (ledger, stop) = (env.path("ledger"), env.path("stop"));
    fs::write(&ledger, b"").expect("ledger");
    // Slow enough that the writer works through most of the move; every change seen after a
    // copy is recorded at once (`--max-changes 0`), so the count is the writer's doing.
    // Its stderr (a warning per changed file) goes to a file: a pipe nobody reads would fill.
    let log = fs::File::create(env.path("stderr")).expect("log");
    let mut child = env
        .cmd()
        .args([
            "migrate",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
            "--id",
            "busy",
            "--cleanup",
            "after-verify",
            "--rate",
            "512KiB",
            "--max-changes",
            "0",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("ferry starts");
    let rx = line_channel(child.stdout.take().expect("piped stdout"));
    wait_line(&rx, Duration::from_secs(30), |v| v["event"] == "started");
    let mut writer = Command::new("bash")
        .args(["-c", WRITER, "writer"])
        .args([&src, &ledger, &stop])
        .arg(N.to_string())
        .spawn()
        .expect("bash runs");
    // Until two thirds of the files moved; then the writer stops, and the job runs on at
    // full speed (its last listings find what the writer created).
    wait_until(Duration::from_secs(120), "two thirds of the move", || {
        let status = status_json(&env, "busy");
        status["done_objects"].as_u64().unwrap_or(0) >= (2 * N / 3) as u64
    });
    fs::write(&stop, b"").expect("stop");
    assert!(writer.wait().expect("writer").success());
    assert!(
        child.try_wait().expect("ferry").is_none(),
        "the move ended before the writer stopped: the check below would be void"
    );
    let out = env.run(&["set-rate", "busy", "unlimited"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let exit = wait_exit(&mut child, Duration::from_secs(120));

    let ledger_text = fs::read_to_string(&ledger).expect("ledger");
    assert!(ledger_text.lines().count() > 100, "the writer barely wrote");
    let expected = expected_after(&initial, &ledger_text);
    let (in_src, _) = regular_files(&src);
    let (in_dst, _) = regular_files(&dst);
    let status = status_json(&env, "busy");
    let failed: BTreeMap<String, String> = status["failed"]
        .as_array()
        .expect("failed list")
        .iter()
        .map(|f| {
            assert_eq!(f["kind"], "source_changed", "{f}");
            (
                f["key"].as_str().unwrap().to_owned(),
                f["error"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        status["changed_objects"].as_u64(),
        Some(failed.len() as u64),
        "{status}"
    );
    assert!(
        !failed.is_empty(),
        "no change was seen: the writer missed the move"
    );
    // The exit code says it: 3, as for failed objects.
    assert_eq!(exit, 3, "{status}");
    // Nothing lost (I1): every file's newest content is in DST, or kept in SRC.
    for (path, content) in &expected {
        assert!(
            in_dst.get(path) == Some(content) || in_src.get(path) == Some(content),
            "{path}: its newest content is nowhere"
        );
    }
    // Every DST file that is not the newest content (older, or deleted since) is counted,
    // and nothing is left in SRC but what is counted (I8), with its newest content.
    let paths: std::collections::BTreeSet<&String> = expected.keys().chain(in_dst.keys()).collect();
    for path in paths {
        if in_dst.get(path) != expected.get(path) {
            let history: Vec<&str> = ledger_text
                .lines()
                .filter(|l| l.split('\t').nth(1) == Some(path.as_str()))
                .collect();
            assert!(
                failed.contains_key(path),
                "{path}: stale in DST and not counted; the program's changes to it: {history:?}"
            );
        }
    }
    for (path, content) in &in_src {
        assert!(
            failed.contains_key(path),
            "{path}: left in SRC and not counted"
        );
        assert_eq!(expected.get(path), Some(content), "{path}");
    }

    // The writer has stopped: retry-failed moves the rest, and the move is whole.
    let out = env.run(&["retry-failed", "busy"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let (in_src, _) = regular_files(&src);
    assert!(
        in_src.is_empty(),
        "left in SRC: {:?}",
        in_src.keys().collect::<Vec<_>>()
    );
    let (in_dst, others) = regular_files(&dst);
    assert!(others.is_empty(), "{others:?}");
    assert_eq!(
        in_dst.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "DST's files are not the newest tree"
    );
    for (path, content) in &expected {
        assert!(in_dst[path] == *content, "{path}: not the newest content");
    }
}
