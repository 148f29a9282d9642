//! End-to-end benches across Ferry's crates live in `benches/` (`cargo bench -p ferry-benches`);
//! figures and the commands that reproduce them are in `docs/benchmarks.md`. This library is
//! empty.
