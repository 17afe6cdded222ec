#!/usr/bin/env bash
# The Python SDK's tests (python/tests) against the real `pyro` binary, booting real
# sandboxes. Makes a virtualenv in .venv, installs the SDK from ./python with pytest (and,
# best effort, the optional `mcp` and `langchain-core` packages some tests use), builds
# what is missing, and runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
export PATH="$HOME/.cargo/bin:$PATH"

# The binaries under test: the debug CLI and the static guest agent.
# Always (re)build: a no-op when up to date, and never a stale binary under test.
cargo build -p pyro-cli
agent="target/x86_64-unknown-linux-gnu/release/pyro-agent"
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p pyro-agent --target x86_64-unknown-linux-gnu

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
py="$root/.venv/bin/python"
pip_quiet=(--disable-pip-version-check --quiet)
# setuptools builds in the source tree: start from a clean one so no stale file is installed.
rm -rf python/build python/*.egg-info
"$py" -m pip install "${pip_quiet[@]}" ./python pytest
# Optional: the MCP client library (MCP server tests) and LangChain (the adapter example).
# Their tests skip with the reason when these cannot be installed (e.g. offline).
"$py" -m pip install "${pip_quiet[@]}" mcp \
  || echo "[test-python] the 'mcp' package is unavailable; tests that need it will skip"
"$py" -m pip install "${pip_quiet[@]}" langchain-core \
  || echo "[test-python] 'langchain-core' is unavailable; its test will skip"

state="$(mktemp -d "${TMPDIR:-/tmp}/pyro-python-tests.XXXXXX")"
cleanup() {
  # Safety net: delete workspaces a failed test left behind (their VMs run detached).
  PYRO_STATE_DIR="$state" "$py" - "$PYRO_BIN" <<'PY' || true
import json, subprocess, sys
out = subprocess.run([sys.argv[1], "workspace", "list", "--json"], capture_output=True, text=True)
for w in json.loads(out.stdout or "{}").get("workspaces", []):
    subprocess.run([sys.argv[1], "workspace", "delete", w["workspace_id"]], capture_output=True)
PY
  rm -rf "$state"
}
trap cleanup EXIT
export PYRO_BIN="$root/target/debug/pyro"
export PYRO_AGENT_BIN="$root/$agent"
export PYRO_STATE_DIR="$state"
# One shared environment cache for every test (built once, reused), as in scripts/test.sh.
export PYRO_CACHE_DIR="${PYRO_CACHE_DIR:-$HOME/.cache/pyro}"

# From the repository root, so `import pyro_mcp` finds the installed package, not python/.
"$py" -m pytest -p no:cacheprovider --rootdir python python/tests "$@"
