//! Memory per entry of a table of 1M forwarded keys, measured as the growth of this process's
//! resident set (a fresh process, so no freed memory is reused and hides the cost).
//!
//! Run: `cargo run --release -p ferry-forwarding --example memory [long]` (`long`: 61-byte
//! keys instead of 27-byte ones).
// An example: it prints what it measured.
#![allow(clippy::print_stdout)]

use ferry_forwarding::{Config, Table};
use ferry_types::{NodeId, ObjectKey};

fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const N: usize = 1_000_000;
    let long = std::env::args().nth(1).as_deref() == Some("long");
    let (a, b) = (NodeId::new("node-a")?, NodeId::new("node-b")?);
    let before = resident_bytes();
    let table = Table::new(
        Config::default()
            .with_expected_entries(N)
            .with_sweep_interval(None),
    );
    for i in 0..N {
        let key = if long {
            format!(
                "tenant-0042/bucket-{:04}/2026/11/26/objects/object-{i:08}.bin",
                i % 1000
            )
        } else {
            format!("bucket-{:04}/object-{i:08}", i % 1000)
        };
        table.register(&ObjectKey::new(&key)?, a, b)?;
        table.try_flip(&key, 0)?;
    }
    let after = resident_bytes();
    println!(
        "{} entries, {} bytes per entry ({} keys)",
        table.len(),
        (after - before) / N,
        if long { "61-byte" } else { "27-byte" }
    );
    Ok(())
}
