#!/usr/bin/env bash
# The floor of the safepoints' cost on a recursive call (docs/instrument.md, "The floor of the
# two missed targets"). A fib shaped as rustc compiles it (one recursive call in a loop) is
# rewritten with safepoints, then edited by hand into variants no option of the rewrite
# makes, and each is counted with callgrind on wasmtime. A count is the difference between
# `fib 27` and `fib 22` under `tabi run`, so start-up cancels out; ratios are to the original.
#   - as rewritten: the entry safepoint spends the budget, the post-call check tests the state;
#   - no entry safepoint: the post-call check is the only poll (nothing would make the guest
#     stop unless the host could set the state global while the guest runs);
#   - the same check reading a word of the save-stack memory, which a host can write.
# Usage: scripts/floor.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || ./scripts/apt-install.sh valgrind
cargo build -q --profile bench -p tabi-cli -p tabi-benches --bin tabi --example wasm_text
tabi=$PWD/target/release/tabi
text=$PWD/target/release/examples/wasm_text
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export TABI_CACHE_DIR="$out/cache"
mkdir -m 700 "$TABI_CACHE_DIR"
cd "$out"

# Applies a perl substitution to the body of $fib only, and fails unless it matched.
edit() { # IN OUT PERL-SUBSTITUTION
  perl -0777 -e '
    my ($in, $sub) = @ARGV; local $/; open my $f, "<", $in or die; my $s = <$f>;
    $s =~ /(\(func \$fib .*?)(?=\n  \(func )/s or die "no \$fib in $in\n";
    my ($body, $at) = ($1, $-[1]); my $n = eval "\$body =~ $sub"; die $@ if $@;
    $n or die "the edit $sub did not apply to $in\n";
    substr($s, $at, length $1) = $body; print $s;' "$1" "$3" > "$2"
}

for n in 22 27; do
  cat > "orig$n.wat" <<EOF
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func \$exit (param i32)))
  (import "wasi_snapshot_preview1" "sched_yield" (func \$yield (result i32)))
  (memory (export "memory") 1)
  (func \$fib (param \$n i64) (result i64)
    (local \$acc i64)
    (block \$small
      (br_if \$small (i64.lt_u (local.get \$n) (i64.const 2)))
      (loop \$more
        (local.set \$acc (i64.add (call \$fib (i64.add (local.get \$n) (i64.const -1)))
                                  (local.get \$acc)))
        (br_if \$more (i64.gt_u (local.tee \$n (i64.add (local.get \$n) (i64.const -2)))
                                (i64.const 1)))))
    (i64.add (local.get \$n) (local.get \$acc)))
  (func (export "_start")
    (drop (call \$yield))
    (call \$exit (i32.and (i32.wrap_i64 (call \$fib (i64.const $n))) (i32.const 127)))))
EOF
  "$tabi" instrument --safepoints "orig$n.wat" -o "sp$n.wasm" 2>/dev/null
  "$text" "sp$n.wasm" > "sp$n.wat"
  # The entry safepoint: budget -= 1, and a branch to the slow path at or below zero.
  edit "sp$n.wat" "noentry$n.wat" \
    's/ *global\.get (\d+)\n *i32\.const 1\n *i32\.sub\n *local\.tee (\d+)\n *global\.set \1\n *local\.get \2\n *i32\.const 0\n *i32\.le_s\n *br_if \d+ \(;\@\d+;\)\n//'
  # The post-call check of the recursive call reads memory 1 (the save stack) at 0.
  edit "noentry$n.wat" "memory$n.wat" \
    's/(call \$fib\n( *))global\.get \d+\n/$1i32.const 0\n$2i32.load 1\n/'
done

count() { # MODULE: instructions of one `tabi run` (its exit status is fib's, checked above)
  { valgrind --tool=callgrind --callgrind-out-file=/dev/null "$tabi" run --backend wasmtime \
    "$1" 2>&1 || true; } | awk '/Collected/ { print $4 }'
}
printf '%-34s %12s %8s\n' variant 'per call' ratio
calls=$((317811 - 28657)) # fib 27 makes F(28) calls, fib 22 F(23)
base=""
for v in orig sp noentry memory; do
  for n in 22 27; do
    status=0
    "$tabi" run --backend wasmtime "$v$n.wat" || status=$?
    expected=$([ "$n" = 22 ] && echo 47 || echo 66) # fib 22 and fib 27, mod 128
    [ "$status" = "$expected" ] || { echo "$v$n exited with $status, not $expected" >&2; exit 1; }
  done
  a=$(count "${v}22.wat")
  b=$(count "${v}27.wat")
  d=$((b - a))
  [ -z "$base" ] && base=$d
  case $v in
    orig) name="original" ;;
    sp) name="as rewritten (--safepoints)" ;;
    noentry) name="no entry safepoint" ;;
    memory) name="no entry safepoint, memory check" ;;
  esac
  awk -v n="$name" -v d="$d" -v c="$calls" -v b="$base" \
    'BEGIN { printf "%-34s %12.1f %8.3f\n", n, d / c, d / b }'
done
