//! End-to-end tests of `ferry check SRC DST` on real directories (and a bucket): its lines,
//! `--json`, its exit codes (0 match, 1 differ, 2 usage, 130 interrupted), Ctrl-C followed by
//! `resume`, `retry-failed` and `status` on a check job.
//!
//! Nothing sleeps to let things happen: a test reads the child's JSON lines until a marker.

use super::*;

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The same tree in `src` and `dst`: nested folders, an empty file, spaces, unicode, and
/// `n` files of `size` bytes under `f/`.
fn same_trees(src: &Path, dst: &Path, n: usize, size: usize) {
    for root in [src, dst] {
        write(&root.join("docs/readme.txt"), b"hello");
        write(&root.join("docs/empty"), b"");
        write(&root.join("with space/ünïcødé.txt"), &bytes(1, 1000));
        for i in 0..n {
            write(
                &root.join(format!("f/{i:04}.bin")),
                &bytes(i as u64 + 10, size),
            );
        }
    }
}

/// Makes `dst` differ from `src` in each way: a file missing, one extra, one of another size
/// and one of the same size with other bytes.
fn make_differences(dst: &Path) {
    fs::remove_file(dst.join("docs/readme.txt")).unwrap();
    write(&dst.join("extra/new.txt"), b"only here");
    write(&dst.join("f/0001.bin"), b"shorter");
    let path = dst.join("with space/ünïcødé.txt");
    let mut same_size = fs::read(&path).unwrap();
    same_size[500] ^= 0xff;
    write(&path, &same_size);
}

/// The lines naming the differences of [`make_differences`], in key order, for trees whose
/// files under `f/` are of `size` bytes.
fn expected_lines(size: usize) -> Vec<String> {
    [
        "missing on DST: docs/readme.txt".to_owned(),
        "extra on DST: extra/new.txt".to_owned(),
        format!("different: f/0001.bin (size {size} vs 7)"),
        "different: with space/ünïcødé.txt (content, by blake3)".to_owned(),
    ]
    .to_vec()
}

fn difference_lines(out: &Output) -> Vec<String> {
    stdout_lines(out)
        .into_iter()
        .filter(|l| !l.starts_with("ferry: "))
        .collect()
}

#[test]
fn check_exits_0_on_equal_trees_and_1_naming_each_difference() {
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    same_trees(&src, &dst, 20, 100);
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let out = env.run(&["check", s, d, "--id", "same"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(difference_lines(&out).is_empty(), "{}", text(&out));
    assert!(
        text(&out).contains("the trees match (23 files compared, 23 matching"),
        "{}",
        text(&out)
    );

    make_differences(&dst);
    let out = env.run(&["check", s, d, "--id", "differ"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert_eq!(
        difference_lines(&out),
        expected_lines(100),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("4 differences: 1 missing on DST, 1 extra on DST, 2 different"),
        "{}",
        text(&out)
    );
    // Nothing was changed: the same check says the same.
    let out = env.run(&["check", s, d, "--id", "again", "-q"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert_eq!(
        difference_lines(&out),
        expected_lines(100),
        "{}",
        text(&out)
    );

    // `status` shows the job as a check, its differences as failed objects.
    let status = status_json(&env, "differ");
    assert_eq!(status["kind"], "check", "{status}");
    assert_eq!(status["failed_objects"], 4, "{status}");
    let out = env.run(&["status", "differ"]);
    assert!(text(&out).contains("(check: differences"), "{}", text(&out));

    // --prefix limits both sides.
    let out = env.run(&["check", s, d, "--id", "prefix", "--prefix", "f/00"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert_eq!(
        difference_lines(&out),
        ["different: f/0001.bin (size 100 vs 7)"]
    );

    // Mended, the failed ones compared again: a match.
    fs::copy(src.join("f/0001.bin"), dst.join("f/0001.bin")).unwrap();
    fs::copy(src.join("docs/readme.txt"), dst.join("docs/readme.txt")).unwrap();
    fs::copy(
        src.join("with space/ünïcødé.txt"),
        dst.join("with space/ünïcødé.txt"),
    )
    .unwrap();
    fs::remove_dir_all(dst.join("extra")).unwrap();
    let out = env.run(&["retry-failed", "differ"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(status_json(&env, "differ")["status"], "completed");
}

#[test]
fn links_are_compared_on_neither_side_and_those_of_src_are_named() {
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    same_trees(&src, &dst, 2, 10);
    std::os::unix::fs::symlink(src.join("docs/readme.txt"), src.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent", dst.join("other-link")).unwrap();
    let out = env.run(&["check", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("skipping link"),
        "{}",
        text(&out)
    );
}

#[test]
fn check_json_ends_with_a_result_listing_every_difference() {
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    same_trees(&src, &dst, 5, 100);
    make_differences(&dst);
    let out = env.run(&[
        "check",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--id",
        "js",
        "--json",
    ]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let lines = stdout_lines(&out);
    for line in &lines {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    let result: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(result["event"], "done", "{result}");
    assert_eq!(result["kind"], "check");
    assert_eq!(result["id"], "js");
    assert_eq!(result["matched"], false);
    assert_eq!(result["compared"], 9, "{result}");
    assert_eq!(result["matching"], 5, "{result}");
    assert_eq!(
        (
            &result["missing_on_target"],
            &result["extra_on_target"],
            &result["different"]
        ),
        (&Value::from(1), &Value::from(1), &Value::from(2))
    );
    let listed: Vec<(String, String)> = result["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["path"].as_str().unwrap().to_owned(),
                d["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("docs/readme.txt", "missing_on_target"),
        ("extra/new.txt", "extra_on_target"),
        ("f/0001.bin", "differs"),
        ("with space/ünïcødé.txt", "differs"),
    ]
    .map(|(p, k)| (p.to_owned(), k.to_owned()));
    assert_eq!(listed, expected);
}

#[test]
fn check_refuses_what_cannot_work_with_the_usual_codes() {
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    same_trees(&src, &dst, 1, 10);
    let s = src.to_str().unwrap();
    // The same directory twice: a usage error.
    let out = env.run(&["check", s, s]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    // A destination that does not exist: an error naming it.
    let missing = env.path("nowhere");
    let out = env.run(&["check", s, missing.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{}",
        text(&out)
    );
    // A check never writes: DST is not created, and a cleanup flag does not exist.
    assert!(!missing.exists());
    let out = env.run(&[
        "check",
        s,
        dst.to_str().unwrap(),
        "--cleanup",
        "after-verify",
    ]);
    assert_eq!(code(&out), 2, "{}", text(&out));
}

#[test]
fn sigint_mid_check_saves_and_resume_finishes_with_the_same_differences() {
    let env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    // 64 files of 64 KiB read on both sides at 512 KiB/s: 16 s, interrupted at the start.
    same_trees(&src, &dst, 64, 64 << 10);
    make_differences(&dst);
    let mut child = env
        .cmd()
        .args([
            "check",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
            "--id",
            "int",
            "--rate",
            "512KiB",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry starts");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    wait_line(&rx, Duration::from_secs(30), |v| v["event"] == "started");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), 130);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("paused and saved"), "{err}");
    assert!(err.contains("resume int"), "{err}");
    let status = status_json(&env, "int");
    assert_eq!(status["status"], "paused", "{status}");
    assert_eq!(status["kind"], "check", "{status}");
    let compared_before = status["done_objects"].as_u64().unwrap();
    assert!(compared_before < 60, "the check finished before Ctrl-C");

    let out = env.run(&["resume", "int", "--rate", "unlimited"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert_eq!(
        difference_lines(&out),
        expected_lines(64 << 10),
        "{}",
        text(&out)
    );
    let status = status_json(&env, "int");
    assert_eq!(status["status"], "completed_with_errors", "{status}");
    // Every file of both sides judged: 64 of the 68 match (67 on SRC, 1 extra on DST; 4
    // differences).
    assert_eq!(status["done_objects"], 64, "{status}");
    assert_eq!(status["failed_objects"], 4, "{status}");
}

#[test]
fn check_compares_a_directory_with_a_bucket() {
    let env = Env::new();
    let server = S3Server::start(&["one"]).expect("the S3 test server starts");
    let (src, dst) = (env.path("src"), env.path("dst"));
    same_trees(&src, &dst, 5, 100);
    let s3 = |args: &[&str]| {
        let mut cmd = env.cmd();
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(name);
            }
        }
        cmd.envs(server.env())
            .args(args)
            .output()
            .expect("ferry runs")
    };
    let s = src.to_str().unwrap();
    let out = s3(&["migrate", s, "s3://one/data", "--id", "up"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = s3(&["check", s, "s3://one/data", "--id", "c1"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    // A bucket that does not exist: an error naming it, before any job is recorded.
    let out = s3(&["check", s, "s3://nope/data", "--id", "c0"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("s3://nope/data"), "{}", text(&out));
    assert_ne!(code(&env.run(&["status", "c0"])), 0, "no job c0 recorded");
    // A bucket reports no content checksum: the contents are read and hashed.
    make_differences(&src);
    let out = s3(&["check", "s3://one/data", s, "--id", "c2"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert_eq!(
        difference_lines(&out),
        expected_lines(100),
        "{}",
        text(&out)
    );
}
