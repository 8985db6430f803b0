#!/usr/bin/env bash
# Benchmarks tabi against plain wasmtime + wasmtime-wasi and wasmi + wasmi_wasi; prints ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p tabi-cli
cargo bench -p tabi-benches --bench wasi
