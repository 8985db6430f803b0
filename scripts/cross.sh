#!/usr/bin/env bash
# Another architecture: builds `tabi` for aarch64 and for big-endian s390x (both backends), runs
# the cross-architecture migration tests (x86_64 -> aarch64 -> s390x -> x86_64, under
# qemu-user), and the kernel crates' unit tests on s390x.
#
# Installs what it needs: Debian's cross gcc packages (as linkers), qemu-user, the Rust targets.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
rustup target add aarch64-unknown-linux-gnu s390x-unknown-linux-gnu >/dev/null
need_apt=0
for tool in aarch64-linux-gnu-gcc s390x-linux-gnu-gcc qemu-aarch64 qemu-s390x; do
  command -v "$tool" >/dev/null || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  ./scripts/apt-install.sh --update gcc-aarch64-linux-gnu gcc-s390x-linux-gnu \
    libc6-dev-arm64-cross libc6-dev-s390x-cross qemu-user
fi

# `tabi` for both architectures in one build (in the `cross` profile), so that the two targets'
# compilations overlap on the machine's cores.
cargo build --profile cross -p tabi-cli --bin tabi \
  --target aarch64-unknown-linux-gnu --target s390x-unknown-linux-gnu
export TABI_CROSS_AARCH64="$PWD/target/aarch64-unknown-linux-gnu/cross/tabi"
export TABI_CROSS_S390X="$PWD/target/s390x-unknown-linux-gnu/cross/tabi"

# The migration chain and the byte-for-byte comparison of snapshots across architectures.
# `--workspace` selects the same features as the test command, so the host test build is reused
# (building `-p tabi-cli` alone resolves other features and rebuilds wasmtime).
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace -E 'binary(=cross_arch)' --run-ignored only --no-fail-fast
else
  cargo test --workspace --test cross_arch -- --ignored
fi

# The kernel crates' own tests on big-endian s390x (qemu is the runner; see .cargo/config.toml).
cargo test --profile cross --target s390x-unknown-linux-gnu -p tabi-libos -p tabi-vfs -p tabi-hostmem -p tabi-nn \
  -p tabi-snapshot
