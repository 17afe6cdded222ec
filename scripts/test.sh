#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and integration tests that boot real
# sandboxes (QEMU/TCG where KVM is not hardware-assisted) with the real agent and images.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/install-rust.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --all -- --check
# The guest agent is built static (release: smaller initramfs, faster guest).
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p pyro-agent --target x86_64-unknown-linux-gnu
cargo clippy --workspace --all-targets -- -D warnings
export PYRO_AGENT_BIN="$PWD/target/x86_64-unknown-linux-gnu/release/pyro-agent"
# One shared environment cache for every test (built once, reused).
export PYRO_CACHE_DIR="${PYRO_CACHE_DIR:-$HOME/.cache/pyro}"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
# The Python SDK, the examples and the MCP server through a real MCP client (pytest).
bash scripts/test-python.sh
# The MCP server through a third client implementation: the TypeScript MCP SDK (npm).
bash scripts/test-ts.sh
# The pip wheel as a user installs it: only the wheel in a fresh virtualenv, no cargo.
bash scripts/test-wheel.sh
