//! Serves an S3 endpoint on loopback for trying `s3://` by hand: `s3s-fs` over a temp dir,
//! the same server the tests use. Prints the environment to point `ferry` (or any S3 client)
//! at it, then serves until its input ends (Ctrl-D), and removes its files (Ctrl-C leaves them
//! in the temp dir).
//!
//! ```sh
//! cargo run -p ferry-object-store --features test-server --example s3_server -- BUCKET...
//! ```
// An example: it prints the environment to use on stdout, its usage and status on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::BufRead;

use ferry_object_store::test_server::S3Server;

fn main() -> std::io::Result<()> {
    let buckets: Vec<String> = std::env::args().skip(1).collect();
    if buckets.is_empty() {
        eprintln!("usage: s3_server BUCKET...  (the buckets to create, empty)");
        std::process::exit(2);
    }
    let names: Vec<&str> = buckets.iter().map(String::as_str).collect();
    let server = S3Server::start(&names)?;
    for (name, value) in server.env() {
        println!("export {name}={value}");
    }
    eprintln!(
        "serving buckets {} at {} from {}; Ctrl-D stops it",
        names.join(", "),
        server.endpoint(),
        server.root().display()
    );
    // Serve until stdin closes; then the server is dropped, which removes its directory.
    for line in std::io::stdin().lock().lines() {
        line?;
    }
    Ok(())
}
