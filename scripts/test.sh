#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds the guests, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --no-fail-fast
  cargo test --workspace --doc
else
  cargo test --workspace
fi
