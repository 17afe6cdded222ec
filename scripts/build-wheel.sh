#!/usr/bin/env bash
# Builds the platform wheel of the Python SDK with the pyro CLI and its static guest agent
# inside: pyro_mcp-<version>-py3-none-linux_x86_64.whl. `pip install` of it gives the SDK, a
# `pyro` command on the environment's bin/ and the bundled binaries the SDK finds first; no
# cargo and no PATH edits on the installing machine. See docs/install.md (Install with pip).
#
# Usage: scripts/build-wheel.sh [OUT_DIR]   (default: <cargo target dir>/wheels)
# Prints the wheel's path as the last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
# The build machine needs the toolchains (idempotent; no-ops on a set-up machine).
bash scripts/install-deps.sh >&2
bash scripts/install-rust.sh >&2
export PATH="$HOME/.cargo/bin:$PATH"
python="${PYTHON:-python3}"
target="$(cargo metadata --format-version 1 --no-deps \
  | "$python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
out="${1:-$target/wheels}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

# Both release builds are no-ops when up to date (scripts/test.sh has built the agent).
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p pyro-agent --target x86_64-unknown-linux-gnu >&2
cargo build --release -p pyro-cli >&2
agent="$target/x86_64-unknown-linux-gnu/release/pyro-agent"
cli="$target/release/pyro"

# A staged copy of python/ with only what the wheel carries: no tests, no build leftovers,
# and the binaries never land in the source tree (where `pip install ./python` would pick
# them up).
stage="$(mktemp -d "${TMPDIR:-/tmp}/pyro-wheel.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
cp python/pyproject.toml python/setup.py python/README.md "$stage/"
mkdir -p "$stage/pyro_mcp/bin"
cp python/pyro_mcp/*.py python/pyro_mcp/py.typed "$stage/pyro_mcp/"
# The CLI without its symbol table (about half its size; release builds have no debug info).
# The agent is copied byte for byte: its digest keys the initramfs and warm-snapshot caches,
# so a wheel built here reuses what the test suite's agent already prepared.
if command -v strip >/dev/null 2>&1; then
  strip -o "$stage/pyro_mcp/bin/pyro" "$cli"
else
  cp "$cli" "$stage/pyro_mcp/bin/pyro"
fi
cp "$agent" "$stage/pyro_mcp/bin/pyro-agent"
chmod 0755 "$stage/pyro_mcp/bin/pyro" "$stage/pyro_mcp/bin/pyro-agent"

rm -f "$out"/pyro_mcp-*.whl
# setuptools comes from PyPI in pip's isolated build environment (setup.py tags the wheel).
"$python" -m pip wheel --no-deps --disable-pip-version-check --quiet -w "$out" "$stage"
wheel="$(ls "$out"/pyro_mcp-*-py3-none-linux_x86_64.whl)"
echo "[build-wheel] $(du -k "$wheel" | cut -f1) KiB" >&2
echo "$wheel"
