//! `cargo xtask bench s3`: `ferry migrate` against `rclone copy` to the same S3 server on
//! loopback (the tests' `s3s-fs` server, `ferry-object-store`'s `s3_server` example), in the
//! same run: dir → S3 and S3 → S3, 10k × 64 KiB files and one 1 GiB object.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::cli_bench::{ensure_rclone, env_dir, median, timed_with, write_trees};

/// Timed runs of each dir → S3 case (alternating which tool goes first); S3 → S3 runs once.
const RUNS: usize = 3;

/// The server process; its input is held open, and closing it stops the server, which
/// removes its directory.
struct Server {
    child: Child,
    env: Vec<(String, String)>,
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn start_server(binary: &PathBuf) -> Result<Server, String> {
    let mut child = Command::new(binary)
        .args(["src", "dst"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut env = Vec::new();
    for line in BufReader::new(stdout).lines().take(6) {
        let line = line.map_err(|e| format!("s3_server: {e}"))?;
        let (name, value) = line
            .strip_prefix("export ")
            .and_then(|l| l.split_once('='))
            .ok_or_else(|| format!("s3_server printed {line:?}"))?;
        env.push((name.to_owned(), value.to_owned()));
    }
    Ok(Server { child, env })
}

pub(crate) fn run() -> Result<(), String> {
    ensure_rclone()?;
    crate::cargo(&["build", "--release", "-p", "ferry-cli"], &[])?;
    crate::cargo(
        &[
            "build",
            "--release",
            "-p",
            "ferry-object-store",
            "--features",
            "test-server",
            "--example",
            "s3_server",
        ],
        &[],
    )?;
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => env_dir()?.join("../target"),
    };
    let ferry = fs::canonicalize(target.join("release/ferry")).map_err(|e| e.to_string())?;
    let server_bin = target.join("release/examples/s3_server");
    let work = target.join("s3-bench");
    let _ = fs::remove_dir_all(&work);
    let (small, big) = write_trees(&work)?;
    let server = start_server(&server_bin)?;
    let endpoint = server
        .env
        .iter()
        .find(|(k, _)| k == "AWS_ENDPOINT")
        .map(|(_, v)| v.clone())
        .ok_or("no endpoint")?;
    let key = |name: &str| {
        server
            .env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    // rclone's remote `t:` from the environment (no config file); AWS_CA_BUNDLE, when the
    // machine sets one, makes rclone refuse its own HTTP transport.
    let rclone_env: Vec<(String, String)> = [
        ("RCLONE_CONFIG_T_TYPE", "s3".to_owned()),
        ("RCLONE_CONFIG_T_PROVIDER", "Other".to_owned()),
        ("RCLONE_CONFIG_T_ENDPOINT", endpoint),
        ("RCLONE_CONFIG_T_ACCESS_KEY_ID", key("AWS_ACCESS_KEY_ID")),
        (
            "RCLONE_CONFIG_T_SECRET_ACCESS_KEY",
            key("AWS_SECRET_ACCESS_KEY"),
        ),
        ("RCLONE_CONFIG_T_REGION", key("AWS_REGION")),
        ("RCLONE_CONFIG_T_FORCE_PATH_STYLE", "true".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut ferry_env = server.env.clone();
    let state = work.join("state");
    ferry_env.push(("FERRY_STATE".to_owned(), state.display().to_string()));
    let unset = ["AWS_CA_BUNDLE"];
    let ferry_run = |src: &str, dst: &str| {
        let cmd = format!(
            "{} migrate {src} {dst} -q --verify checksum",
            ferry.display()
        );
        timed_with(&cmd, &ferry_env, &unset)
    };
    let rclone_run = |src: &str, dst: &str| {
        let cmd = format!("rclone copy --checksum --transfers 16 {src} {dst}");
        timed_with(&cmd, &rclone_env, &unset)
    };
    let (small_s, big_s) = (small.display().to_string(), big.display().to_string());

    let mut rows = Vec::new();
    for (what, local, name) in [
        ("10k × 64 KiB", &small_s, "small"),
        ("one 1 GiB object", &big_s, "big"),
    ] {
        eprintln!("xtask: {what}, dir → S3, {RUNS} runs each");
        let (mut f, mut r, mut rss) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..RUNS {
            let ferry_dst = format!("s3://src/{name}-ferry-{run}");
            let rclone_dst = format!("t:src/{name}-rclone-{run}");
            let (ferry, rclone) = if run % 2 == 0 {
                let rc = rclone_run(local, &rclone_dst)?;
                (ferry_run(local, &ferry_dst)?, rc)
            } else {
                let fe = ferry_run(local, &ferry_dst)?;
                (fe, rclone_run(local, &rclone_dst)?)
            };
            f.push(ferry.0);
            rss.push(ferry.1 as f64);
            r.push(rclone.0);
        }
        let all = format!("ferry {f:.2?}, rclone {r:.2?}");
        let (fm, rm, rssm) = (median(&mut f), median(&mut r), median(&mut rss));
        rows.push(format!(
            "| {what}, dir → S3 | {fm:.2} s, peak RSS {:.0} MiB | {rm:.2} s | {:.2}× | {all} |",
            rssm / 1024.0,
            fm / rm
        ));
        eprintln!("xtask: {what}, S3 → S3, 1 run each");
        let ferry = ferry_run(
            &format!("s3://src/{name}-ferry-0"),
            &format!("s3://dst/{name}-ferry"),
        )?;
        let rclone = rclone_run(
            &format!("t:src/{name}-rclone-0"),
            &format!("t:dst/{name}-rclone"),
        )?;
        rows.push(format!(
            "| {what}, S3 → S3 | {:.2} s, peak RSS {:.0} MiB | {:.2} s | {:.2}× | one run each |",
            ferry.0,
            ferry.1 as f64 / 1024.0,
            rclone.0,
            ferry.0 / rclone.0
        ));
    }
    drop(server);
    println!(
        "| what | ferry (checksum verify) | rclone copy --checksum --transfers 16 | ferry / rclone | all runs |"
    );
    println!("|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!(
        "\nMedians of {RUNS} runs for dir → S3 (alternating which tool goes first). Server: \
         ferry-object-store's `s3_server` example (s3s-fs, one thread) on 127.0.0.1, buckets \
         `src` and `dst`; ferry: `ferry migrate SRC s3://… -q --verify checksum` with the \
         server's AWS_* variables; rclone: remote `t:` from RCLONE_CONFIG_T_* (type s3, \
         provider Other, path style)."
    );
    let _ = fs::remove_dir_all(&work);
    Ok(())
}
