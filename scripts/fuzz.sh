#!/usr/bin/env bash
# Runs every fuzz target for a short fixed time (FUZZ_SECONDS, default 20) on nightly.
# Any crash fails the run; libFuzzer leaves it under fuzz/artifacts/ to keep as a regression.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd fuzz
cargo +nightly fuzz build -O
for target in $(cargo +nightly fuzz list); do
  echo "fuzzing $target for ${seconds}s"
  mkdir -p "corpus/$target"
  # Fuzz into a scratch copy so the committed seed corpus stays as it is.
  work="$(mktemp -d)"
  cp -r "corpus/$target/." "$work/"
  cargo +nightly fuzz run -O "$target" "$work" -- -max_total_time="$seconds" 2>&1 | tail -3
  rm -rf "$work"
done
