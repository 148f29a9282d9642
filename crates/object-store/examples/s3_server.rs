//! Serves an S3 endpoint on loopback for trying `s3://` by hand: `s3s-fs` over a temp dir,
//! the same server the tests use. Prints the environment to point `ferry` (or any S3 client)
//! at it, then serves until its input ends (Ctrl-D), and removes its files (Ctrl-C leaves them
//! in the temp dir).
//!
//! With `--root DIR` it serves an existing directory instead, each subdirectory a bucket
//! (BUCKET… are created there when missing), and leaves it in place when it stops: `cargo
//! xtask bench serve` serves with it the directory `ferry serve` serves. `--fsync` (after
//! `--root DIR`) answers a PUT only once its file is fsynced.
//!
//! ```sh
//! cargo run -p ferry-object-store --features test-server --example s3_server -- BUCKET...
//! cargo run -p ferry-object-store --features test-server --example s3_server -- --root DIR [--fsync] [BUCKET...]
//! ```
// An example: it prints the environment to use on stdout, its usage and status on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::BufRead;
use std::path::PathBuf;

use ferry_object_store::test_server::S3Server;

const USAGE: &str = "usage: s3_server BUCKET...  (the buckets to create, empty, in a temp dir)\n       \
                     s3_server --root DIR [--fsync] [BUCKET...]  (serve DIR: each subdirectory a \
                     bucket; --fsync: fsync each PUT's file before answering)";

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let root = if args.peek().is_some_and(|a| a == "--root") {
        args.next();
        let Some(dir) = args.next() else {
            eprintln!("{USAGE}");
            std::process::exit(2);
        };
        Some(PathBuf::from(dir))
    } else {
        None
    };
    let fsync = root.is_some() && args.next_if(|a| a == "--fsync").is_some();
    let buckets: Vec<String> = args.collect();
    if buckets.iter().any(|b| b.starts_with('-')) || (root.is_none() && buckets.is_empty()) {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
    let names: Vec<&str> = buckets.iter().map(String::as_str).collect();
    let server = match &root {
        Some(root) => {
            for bucket in &names {
                std::fs::create_dir_all(root.join(bucket))?;
            }
            if fsync {
                S3Server::serve_dir_fsync(root)?
            } else {
                S3Server::serve_dir(root)?
            }
        }
        None => S3Server::start(&names)?,
    };
    for (name, value) in server.env() {
        println!("export {name}={value}");
    }
    eprintln!(
        "serving {} at {} from {}; Ctrl-D stops it",
        if names.is_empty() {
            "its subdirectories as buckets".to_owned()
        } else {
            format!("buckets {}", names.join(", "))
        },
        server.endpoint(),
        server.root().display()
    );
    // Serve until stdin closes; then the server is dropped, which removes its directory (a
    // temp dir) or leaves it (`--root`).
    for line in std::io::stdin().lock().lines() {
        line?;
    }
    Ok(())
}
