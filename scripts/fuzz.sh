#!/usr/bin/env bash
# Runs every fuzz target for a short fixed time (FUZZ_SECONDS, default 20) on nightly.
# Any crash fails the run; libFuzzer leaves it under fuzz/artifacts/ to keep as a regression.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# wasmi's handlers call one another in tail position. Under the fuzzer's instrumentation those
# calls stay calls, so host frames nest deeply as the guest runs, and ASan's fake stacks for
# use-after-return detection (on by default) took 61% of a slow unit's time (perf, on an
# `instrument_roundtrip` input: 108 s, 36 s without them). Every other ASan check stays on.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_stack_use_after_return=0}"
cd fuzz
cargo +nightly fuzz build -O
for target in $(cargo +nightly fuzz list); do
  echo "fuzzing $target for ${seconds}s"
  mkdir -p "corpus/$target"
  # Fuzz into a scratch copy so the committed seed corpus stays as it is.
  work="$(mktemp -d)"
  cp -r "corpus/$target/." "$work/"
  # From an empty corpus libFuzzer starts with inputs of a few bytes and lets them grow
  # slowly; wasm-smith makes only tiny modules from those. With inputs of up to 512 bytes from
  # the start, 150 s of `instrument_roundtrip` reached 23,164 coverage points, against 18,425
  # in 17 min by the default growth (957 runs against 33,011). FUZZ_MAX_LEN changes it.
  # The structured targets (kernel_ops, p1_calls) decode a sequence of operations from their
  # input; a few bytes make one or two, so they start at full length too.
  flags=()
  case "$target" in
    instrument_roundtrip | kernel_ops | p1_calls | nn_calls)
      flags=(-max_len="${FUZZ_MAX_LEN:-512}" -len_control=0)
      ;;
  esac
  cargo +nightly fuzz run -O "$target" "$work" -- -max_total_time="$seconds" "${flags[@]}" 2>&1 | tail -3
  rm -rf "$work"
done
