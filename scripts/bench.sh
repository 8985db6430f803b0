#!/usr/bin/env bash
# Benchmarks tabi against plain wasmtime + wasmtime-wasi and wasmi + wasmi_wasi; prints ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Binaryen's wasm-opt, for the Asyncify comparison.
command -v wasm-opt >/dev/null || ./scripts/apt-install.sh binaryen
cargo build --release -p tabi-cli
cargo bench -p tabi-benches --bench wasi
cargo bench -p tabi-benches --bench instrument
cargo bench -p tabi-benches --bench snapshot
