#!/usr/bin/env bash
# Installs what building tabi's guests and tests needs, on a machine with rustup (and apt for
# the C toolchain). Safe to run again: it only adds what is missing.
set -euo pipefail
rustup target add wasm32-wasip1 x86_64-unknown-none >/dev/null
need_apt=0
command -v clang-16 >/dev/null || need_apt=1
command -v wasm-ld-16 >/dev/null || need_apt=1
[ -d /usr/lib/wasm32-wasi ] || need_apt=1
[ -f /usr/lib/llvm-16/lib/clang/16/lib/wasi/libclang_rt.builtins-wasm32.a ] || need_apt=1
# ONNX's node conformance models, for the wasi-nn tests.
[ -d /usr/share/libonnx-testdata/data/node ] || need_apt=1
if [ "$need_apt" = 1 ]; then
  "$(dirname "$0")/apt-install.sh" --update clang-16 lld-16 wasi-libc libclang-rt-16-dev-wasm32 \
    libonnx-testdata
fi
