#!/usr/bin/env bash
# Runs the demo guest on both engines and shows that they print the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip1 >/dev/null
cargo build -q --release --target wasm32-wasip1 --manifest-path tests/guests/rust/Cargo.toml --bin hello
cargo build -q -p tabi-cli
wasm=tests/guests/rust/target/wasm32-wasip1/release/hello.wasm
sandbox=$(mktemp -d)
trap 'rm -rf "$sandbox"' EXIT
for backend in wasmtime wasmi; do
  echo "== tabi run --backend $backend (sandbox copied into memory, deterministic) =="
  ./target/debug/tabi run --backend "$backend" --deterministic --copy-dir "$sandbox::/sandbox" \
    --env GREETING=hi "$wasm" one "two words" | tee "$sandbox.$backend"
done
if cmp -s "$sandbox.wasmtime" "$sandbox.wasmi"; then
  echo "== both engines printed the same bytes =="
else
  echo "== the engines differ ==" >&2
  exit 1
fi
rm -f "$sandbox.wasmtime" "$sandbox.wasmi"
