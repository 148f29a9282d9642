//! Issue #7: the state directory and the control socket are owner-only, whatever the umask.
//!
//! `crates/cli/tests/cli/main.rs` (`the_control_socket_pauses_throttles_reports_and_resumes_a_running_job`)
//! already checks the socket (0600) and its `run/` directory (0700) under the test's own
//! umask. These tests run `ferry` under `umask 000`, so a mode that only came from a strict
//! umask would show as 0777/0666, and add what that test does not look at: the state directory
//! itself and `jobs/`, a nested state path, and an existing state directory open to others.
// Tests stop on the first unexpected error: expect says where.
#![allow(clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use assert_cmd::cargo::CommandCargoExt;

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// `ferry ARGS` with `FERRY_STATE=state`, run through `sh` with `umask 000`.
fn ferry_umask_000(state: &Path, args: &[&str]) -> Command {
    let ferry = Command::cargo_bin("ferry").expect("the ferry binary is built");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"umask 000 && exec "$0" "$@""#)
        .arg(ferry.get_program())
        .args(args)
        .env("FERRY_STATE", state)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

fn run(mut cmd: Command) -> Output {
    let out = cmd.output().expect("ferry runs");
    assert!(
        out.status.success(),
        "ferry failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The umask trick works: what `sh` creates under it is open to everyone. Without this, the
/// tests below could pass only because the umask was strict.
#[test]
fn umask_000_really_makes_files_open_to_others() {
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"umask 000 && mkdir "$0""#)
        .arg(&probe)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(mode(&probe), 0o777);
}

#[test]
fn a_new_state_directory_is_owner_only_under_umask_000() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("deep/er/state");
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/a.txt"), b"hello").unwrap();
    let dst = dir.path().join("dst");
    run(ferry_umask_000(
        &state,
        &[
            "migrate",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
            "--id",
            "perm",
        ],
    ));
    assert_eq!(mode(&state), 0o700, "the state directory");
    assert_eq!(mode(&state.join("jobs")), 0o700, "jobs/");
    // The job really ran with this state directory.
    assert!(state.join("jobs/perm.json").is_file());
    assert_eq!(fs::read(dst.join("d/a.txt")).unwrap(), b"hello");
}

#[test]
fn an_existing_state_directory_open_to_others_is_made_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    fs::create_dir_all(state.join("jobs")).unwrap();
    for d in [&state, &state.join("jobs")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o777)).unwrap();
    }
    run(ferry_umask_000(&state, &["list"]));
    assert_eq!(mode(&state), 0o700, "the state directory");
    assert_eq!(mode(&state.join("jobs")), 0o700, "jobs/");
}

#[test]
fn the_control_socket_is_owner_only_under_umask_000() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..16 {
        fs::write(src.join(format!("{i:02}.bin")), vec![7u8; 64 << 10]).unwrap();
    }
    let dst = dir.path().join("dst");
    // Slow enough (1 MiB at 64 KiB/s) to be running when the socket is looked at.
    let mut child = ferry_umask_000(
        &state,
        &[
            "migrate",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
            "--id",
            "sock",
            "--rate",
            "64KiB",
            "--json",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("ferry starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let socket = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
        .find(|v| v["event"] == "started")
        .and_then(|v| v["socket"].as_str().map(PathBuf::from));
    let modes = socket
        .as_ref()
        .map(|s| (mode(s), mode(s.parent().expect("run dir")), mode(&state)));
    child.kill().expect("kill our ferry child");
    child.wait().expect("reap it");
    let socket = socket.expect("ferry printed a started event with its socket");
    assert_eq!(socket.parent().unwrap(), state.join("run"));
    assert_eq!(modes, Some((0o600, 0o700, 0o700)), "socket, run/, state");
}
