//! `cargo xtask bench s3-10k | s3-1g | s3s3-10k | s3s3-1g` (`s3`: the four): `ferry migrate`
//! against `rclone copy` to the same S3 server on loopback (the tests' `s3s-fs` server,
//! `ferry-object-store`'s `s3_server` example), in alternating pairs, each run recorded under
//! `docs/bench/` (see [`crate::record`]): dir → S3 and S3 → S3, 10k × 64 KiB files and one
//! 1 GiB object.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::cli_bench::{ensure_rclone, sh, target_dir, timed_with, write_trees};
use crate::record::{self, Commands, Options, Run, Side};

/// The cases `bench s3` runs, in order.
const S3_CASES: &[&str] = &["s3-10k", "s3-1g", "s3s3-10k", "s3s3-1g"];

/// The server process; its input is held open, and closing it stops the server.
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

/// Serves `root` (created), buckets `src` and `dst` its subdirectories.
fn start_server(binary: &PathBuf, root: &Path) -> Result<Server, String> {
    let mut child = Command::new(binary)
        .arg("--root")
        .arg(root)
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

pub(crate) fn run(name: &str, options: Options) -> Result<(), String> {
    let names = if name == "s3" { S3_CASES } else { &[name][..] };
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
    let target = target_dir()?;
    let ferry = fs::canonicalize(target.join("release/ferry")).map_err(|e| e.to_string())?;
    let server_bin = target.join("release/examples/s3_server");
    let work = target.join("s3-bench");
    let _ = fs::remove_dir_all(&work);
    let (small, big) = write_trees(
        &work,
        names.iter().any(|n| n.ends_with("-10k")),
        names.iter().any(|n| n.ends_with("-1g")),
    )?;
    let root = work.join("s3-root");
    fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let server = start_server(&server_bin, &root)?;
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
        ("RCLONE_CONFIG_T_ENDPOINT", key("AWS_ENDPOINT")),
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
    let unset = ["AWS_CA_BUNDLE"];
    let ferry_cmd = |src: &str, dst: &str, state: &str| {
        format!(
            "{} --state {state} migrate {src} {dst} -q --verify checksum",
            ferry.display()
        )
    };
    let rclone_cmd =
        |src: &str, dst: &str| format!("rclone copy --checksum --transfers 16 {src} {dst}");
    for name in names {
        let case = record::case(name)?;
        let (tree, size) = if name.ends_with("-10k") {
            (&small, "small")
        } else {
            (&big, "big")
        };
        let local = tree.display().to_string();
        // S3 → S3 reads what rclone uploaded once, untimed, under `src/SIZE-seed`.
        let (ferry_src, rclone_src) = if name.starts_with("s3s3") {
            timed_with(
                &rclone_cmd(&local, &format!("t:src/{size}-seed")),
                &rclone_env,
                &unset,
            )?;
            (
                format!("s3://src/{size}-seed"),
                format!("t:src/{size}-seed"),
            )
        } else {
            (local.clone(), local.clone())
        };
        let commands = Commands {
            a: ferry_cmd(&ferry_src, "s3://dst/PREFIX", "STATE"),
            b: rclone_cmd(&rclone_src, "t:dst/PREFIX"),
            beside: None,
        };
        let runs = std::cell::Cell::new(0u32);
        let start = record::start()?;
        let pairs = record::run_pairs(
            case,
            options.pairs,
            |side| {
                runs.set(runs.get() + 1);
                let n = runs.get();
                sh("sync")?;
                let run = match side {
                    Side::A => {
                        let state = work.join(format!("state-{name}-{n}"));
                        timed_with(
                            &ferry_cmd(
                                &ferry_src,
                                &format!("s3://dst/{name}-{n}"),
                                &state.display().to_string(),
                            ),
                            &server.env,
                            &unset,
                        )?
                    }
                    _ => timed_with(
                        &rclone_cmd(&rclone_src, &format!("t:dst/{name}-{n}")),
                        &rclone_env,
                        &unset,
                    )?,
                };
                Ok(Run::from(run))
            },
            // The pair's copies are deleted before the next pair, untimed, from the served
            // directory (the server keeps no state of its own for them).
            || {
                for n in runs.get() - 1..=runs.get() {
                    let copy = root.join(format!("dst/{name}-{n}"));
                    fs::remove_dir_all(&copy).map_err(|e| format!("{}: {e}", copy.display()))?;
                }
                sh("sync")
            },
        )?;
        record::finish(case, options, start, commands, pairs, Vec::new())?;
    }
    drop(server);
    let _ = fs::remove_dir_all(&work);
    Ok(())
}
