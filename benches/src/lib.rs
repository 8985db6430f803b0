//! tabi's benchmarks live in `benches/wasi.rs`; run them with `cargo bench -p tabi-benches`.
