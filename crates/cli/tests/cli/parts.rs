//! Resume inside a huge object (SPEC I4 inside one object), as a user meets it: `ferry
//! migrate` of a file larger than `--parts-above` is SIGKILLed half way; `ferry resume` then
//! sends only the parts the stopped run had not stored (and at most one more), and the copy
//! is whole and verified. To a directory and to the in-process S3 server.
//!
//! `FERRY_HUGE_MIB` sets the file's size (default 64 MiB; `cargo xtask crash` runs 2048).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferry_object_store::test_server::S3Server;
use serde_json::Value;

use crate::*;

const MIB: u64 = 1 << 20;
const PART_MIB: u64 = 5;

fn huge_mib() -> u64 {
    std::env::var("FERRY_HUGE_MIB")
        .ok()
        .map(|v| v.parse().expect("FERRY_HUGE_MIB: a number of MiB"))
        .unwrap_or(64)
}

/// Runs `ferry migrate` (built by `cmd`) of `src` into `dst`, SIGKILLs it once half the file
/// is sent, resumes it, and checks what the resumed run sent. Returns the resume's `done`
/// event. Prints the figures docs/design.md quotes (`--nocapture`).
#[allow(clippy::print_stdout)]
fn kill_half_way_and_resume(env: &Env, cmd: impl Fn() -> Command, dst: &str) -> Value {
    let size = huge_mib() * MIB;
    let src = env.path("src");
    write(&src.join("videos/huge.bin"), &bytes(7, size as usize));
    write(&src.join("small.txt"), b"a small file beside it");
    // A rate that makes the half-way point easy to catch: 4 s for 64 MiB.
    let rate = format!("{}MiB", (size / MIB / 4).max(1));
    let part = format!("{PART_MIB}MiB");
    let args = [
        "migrate",
        src.to_str().unwrap(),
        dst,
        "--id",
        "huge",
        "--json",
        "--rate",
        &rate,
        "--parts-above",
        "8MiB",
        "--part-size",
        &part,
    ];
    let mut child = cmd()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ferry starts");
    let lines = line_channel(child.stdout.take().expect("piped stdout"));
    let limit = Duration::from_secs(60 + size / MIB);
    let seen = wait_line(&lines, limit, |v| {
        v["event"] == "progress" && v["bytes_copied"].as_u64().unwrap_or(0) >= size / 2
    });
    signal(&child, "-KILL");
    wait_exit(&mut child, Duration::from_secs(30));
    let sent_before = seen["bytes_copied"].as_u64().unwrap();
    assert!(
        sent_before < size,
        "the first run ended before the kill: {seen}"
    );

    let out = cmd()
        .args(["resume", "huge", "--json"])
        .output()
        .expect("ferry runs");
    assert_eq!(code(&out), 0, "{}", text(&out));
    let done: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "done")
        .unwrap_or_else(|| panic!("no done event: {}", text(&out)));
    assert_eq!(done["status"], "completed", "{done}");
    let sent_again = done["bytes_copied"].as_u64().unwrap();
    // The parts stored before the kill are not sent again: at most what was left, the part
    // in flight at the kill and one whose record was not saved yet (and the small file).
    let bound = size - sent_before + 2 * PART_MIB * MIB + 1024;
    assert!(
        sent_again <= bound,
        "{sent_again} bytes sent again after {sent_before} of {size} (at most {bound})"
    );
    println!("killed after {sent_before} of {size} bytes; the resume sent {sent_again}");
    done
}

/// Starts `ferry migrate` of a huge file into `dst` and SIGKILLs it once a quarter is sent.
fn kill_a_quarter_way(env: &Env, dst: &Path, id: &str) {
    let src = env.path("src");
    write(&src.join("videos/huge.bin"), &bytes(9, (32 * MIB) as usize));
    let (mut child, lines) = env.spawn(&[
        "migrate",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--id",
        id,
        "--json",
        "--rate",
        "8MiB",
        "--parts-above",
        "8MiB",
        "--part-size",
        "5MiB",
    ]);
    wait_line(&lines, Duration::from_secs(120), |v| {
        v["event"] == "progress" && v["bytes_copied"].as_u64().unwrap_or(0) >= 8 * MIB
    });
    signal(&child, "-KILL");
    wait_exit(&mut child, Duration::from_secs(30));
}

/// The upload's temp files in `dir`.
fn uploads_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(".ferry-tmp-up-"))
                .collect()
        })
        .unwrap_or_default()
}

/// I8: `ferry cancel` and `ferry forget` of a stopped job abort the upload in parts it left
/// unfinished: nothing of it stays in the destination.
#[test]
fn i8_cancel_and_forget_of_a_stopped_job_abort_its_unfinished_upload() {
    let env = Env::new();
    for (id, command) in [("cancelled", "cancel"), ("forgotten", "forget")] {
        let dst = env.path(&format!("dst-{id}"));
        kill_a_quarter_way(&env, &dst, id);
        assert_eq!(
            uploads_in(&dst.join("videos")).len(),
            1,
            "{id}: no upload to abort"
        );
        let out = env.run(&[command, id]);
        assert_eq!(code(&out), 0, "{}", text(&out));
        assert_eq!(
            uploads_in(&dst.join("videos")),
            Vec::<String>::new(),
            "{id}"
        );
        assert!(!dst.join("videos/huge.bin").exists(), "{id}");
    }
}

#[test]
fn i4_a_huge_file_killed_half_way_resumes_from_its_parts_in_a_directory() {
    let env = Env::new();
    let dst = env.path("dst");
    kill_half_way_and_resume(&env, || env.cmd(), dst.to_str().unwrap());
    assert_same_files(&env.path("src"), &dst);
    let left: Vec<_> = fs::read_dir(dst.join("videos"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["huge.bin"], "an upload's temp file was left behind");
}

#[test]
fn i4_a_huge_file_killed_half_way_resumes_from_its_parts_in_a_bucket() {
    let env = Env::new();
    let server = S3Server::start(&["one"]).expect("the S3 test server starts");
    kill_half_way_and_resume(&env, || s3_cmd(&env, &server), "s3://one/data");
    let back = env.path("back");
    let out = s3_cmd(&env, &server)
        .args([
            "migrate",
            "s3://one/data",
            back.to_str().unwrap(),
            "--id",
            "down",
        ])
        .output()
        .expect("ferry runs");
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_same_files(&env.path("src"), &back);
}
