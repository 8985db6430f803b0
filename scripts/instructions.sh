#!/usr/bin/env bash
# Counts the machine instructions of one run of each benchmark guest, as built and rewritten by
# tabi, with callgrind: a measure of the rewrite's cost that does not move with the machine's
# load, beside the timed ratios of `cargo bench --bench instrument`. Prints the ratios.
# Usage: scripts/instructions.sh [wasmtime|wasmi ...]  (default: both engines)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || ./scripts/apt-install.sh valgrind
cargo build -q --profile bench -p tabi-benches --example one_run
run=target/release/examples/one_run
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
count() { # ENGINE VARIANT GUEST ARGS...
  valgrind --tool=callgrind --callgrind-out-file="$out/cg" --collect-atstart=no \
    --toggle-collect="*measured_run*" "$run" "$@" 2>&1 |
    awk '/Collected/ { print $4 }'
}
engines=("$@")
[ ${#engines[@]} -eq 0 ] && engines=(wasmtime wasmi)
printf '%-9s %-16s %12s %8s %8s %8s\n' engine guest orig tabi tabi+sp epoch
for engine in "${engines[@]}"; do
  while read -r name guest args; do
    o=$(count "$engine" orig "$guest" $args)
    t=$(count "$engine" tabi "$guest" $args)
    s=$(count "$engine" tabi+sp "$guest" $args)
    epoch=-
    if [ "$engine" = wasmtime ] && [ "$guest" = compute ]; then
      w=$(count wasmtime wasi "$guest" $args)
      we=$(count wasmtime wasi+epoch "$guest" $args)
      epoch=$(awk -v w="$w" -v we="$we" 'BEGIN { printf "%.3f", we / w }')
    fi
    awk -v e="$engine" -v n="$name" -v o="$o" -v t="$t" -v s="$s" -v p="$epoch" \
      'BEGIN { printf "%-9s %-16s %12d %8.3f %8.3f %8s\n", e, n, o, t / o, s / o, p }'
  done <<'GUESTS'
fib compute fib 22
hash compute hash 2
sort compute sort 2
float compute float 2
churn fs churn 1000
GUESTS
done
