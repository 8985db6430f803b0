//! tabi's benchmarks: `benches/wasi.rs` compares tabi with the plain engines and prints ratios
//! measured in one run; `plain-wasmtime-run` is the start-up baseline. Run them with
//! `./scripts/bench.sh`.

use std::time::Duration;

/// Repetitions of each measured loop: `TABI_BENCH_REPS`, or 7.
pub fn reps() -> usize {
    std::env::var("TABI_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7)
}

/// The median of `v` (the upper one of an even count); `v` must not be empty.
pub fn median<T: Ord + Copy>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
