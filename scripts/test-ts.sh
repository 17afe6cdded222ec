#!/usr/bin/env bash
# `pyro mcp serve` through a second MCP client implementation: the official TypeScript SDK
# (@modelcontextprotocol/sdk from npm, pinned by tests/mcp-ts/package-lock.json), beside the
# rmcp (Rust) and Python `mcp` clients. Installs Node.js and npm with apt when missing,
# builds what is missing, installs the locked packages with `npm ci`, and runs the tests
# (tests/mcp-ts/*.test.mjs) with `node --test`, booting real sandboxes. Extra arguments go
# to `node --test`.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
export PATH="$HOME/.cargo/bin:$PATH"

# Not in scripts/install-deps.sh: a Node.js from elsewhere (nodesource, nvm) is fine, and
# Debian's `npm` package conflicts with nodesource's `nodejs`.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "[test-ts] installing nodejs and npm"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends nodejs npm
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 18 ]; then
  echo "[test-ts] Node.js 18 or later is needed, found $(node --version)" >&2
  exit 1
fi

# The binaries under test: the debug CLI and the static guest agent (a no-op when up to date).
cargo build -p pyro-cli
agent="target/x86_64-unknown-linux-gnu/release/pyro-agent"
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p pyro-agent --target x86_64-unknown-linux-gnu

state="$(mktemp -d "${TMPDIR:-/tmp}/pyro-ts-tests.XXXXXX")"
cleanup() {
  # Safety net: delete workspaces a failed test left behind (their VMs run detached).
  PYRO_STATE_DIR="$state" "$PYRO_BIN" workspace list --json 2>/dev/null \
    | node -e '
        let s = ""; process.stdin.on("data", (c) => (s += c)).on("end", () => {
          for (const w of JSON.parse(s || "{}").workspaces ?? []) console.log(w.workspace_id);
        });' \
    | while read -r id; do
        PYRO_STATE_DIR="$state" "$PYRO_BIN" workspace delete "$id" >/dev/null 2>&1 || true
      done || true
  rm -rf "$state"
}
trap cleanup EXIT
export PYRO_BIN="$root/target/debug/pyro"
export PYRO_AGENT_BIN="$root/$agent"
export PYRO_STATE_DIR="$state"
# One shared environment cache for every test (built once, reused), as in scripts/test.sh.
export PYRO_CACHE_DIR="${PYRO_CACHE_DIR:-$HOME/.cache/pyro}"

cd tests/mcp-ts
npm ci --no-audit --no-fund --no-update-notifier --loglevel=error
node --test "$@" protocol.test.mjs guest.test.mjs
