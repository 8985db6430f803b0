//! tabi's benchmarks: `benches/wasi.rs` compares tabi with the plain engines and prints ratios
//! measured in one run; `plain-wasmtime-run` is the start-up baseline. Run them with
//! `./scripts/bench.sh`.
