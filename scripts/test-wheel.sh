#!/usr/bin/env bash
# The wheel as a user gets it. Builds the platform wheel (scripts/build-wheel.sh), checks what
# it contains, installs only it into a fresh virtualenv in a temporary directory, then,
# outside the checkout, without cargo on PATH and with PYRO_BIN / PYRO_AGENT_BIN unset:
#   - `pyro --version` through the installed console script;
#   - `Pyro().run_in_vm(...)` finds the bundled binary and agent and boots a real sandbox;
#   - `pyro mcp serve` through the official MCP client (installed from PyPI after the checks
#     above; skipped with a message when unavailable): tools/list and one vm_run.
# The environment cache is the shared one of scripts/test.sh ($PYRO_CACHE_DIR, default
# ~/.cache/pyro), so debian:12 is not rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
python="${PYTHON:-python3}"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/pyro-wheel-test.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
wheel="$(bash scripts/build-wheel.sh "$tmp/dist" | tail -n 1)"
echo "[test-wheel] built $(basename "$wheel") in $((SECONDS - start)) s"

# Exactly the SDK, the two binaries and the metadata: no tests, sources or build leftovers.
"$python" - "$wheel" <<'PY'
import os, re, sys, zipfile
wheel = sys.argv[1]
names = zipfile.ZipFile(wheel).namelist()
allowed = re.compile(
    r"pyro_mcp/([a-z_]+\.py|py\.typed|bin/pyro|bin/pyro-agent)"
    r"|pyro_mcp-[^/]+\.dist-info/(METADATA|WHEEL|RECORD|entry_points\.txt|top_level\.txt)"
)
extra = [n for n in names if not allowed.fullmatch(n)]
assert not extra, f"unexpected files in the wheel: {extra}"
for need in ("pyro_mcp/bin/pyro", "pyro_mcp/bin/pyro-agent", "pyro_mcp/_cli.py"):
    assert need in names, f"{need} is missing from the wheel"
print(f"[test-wheel] {len(names)} files, {os.path.getsize(wheel) / 1e6:.1f} MB")
PY

venv="$tmp/venv"
"$python" -m venv "$venv"
pip_quiet=(--disable-pip-version-check --quiet)
"$venv/bin/python" -m pip install "${pip_quiet[@]}" "$wheel"

# What a user of the wheel has: the venv's bin/ first, no cargo, no pyro overrides.
clean_path="$venv/bin"
IFS=: read -r -a dirs <<<"$PATH"
for d in "${dirs[@]}"; do
  [ -n "$d" ] && [ ! -e "$d/cargo" ] && clean_path="$clean_path:$d"
done
if PATH="$clean_path" command -v cargo >/dev/null 2>&1; then
  echo "[test-wheel] error: cargo is still on the filtered PATH" >&2
  exit 1
fi
mkdir "$tmp/cwd" "$tmp/state"
run() {
  (cd "$tmp/cwd" && env -u PYRO_BIN -u PYRO_AGENT_BIN -u PYRO_PROFILE \
    PATH="$clean_path" \
    PYRO_STATE_DIR="$tmp/state" \
    PYRO_CACHE_DIR="${PYRO_CACHE_DIR:-$HOME/.cache/pyro}" \
    "$@")
}

[ "$(run sh -c 'command -v pyro')" = "$venv/bin/pyro" ]
run pyro --version

run "$venv/bin/python" - <<'PY'
import sys
from pathlib import Path
from pyro_mcp import Pyro
from pyro_mcp._binary import find_binary

binary = Path(find_binary())
assert binary.parent.name == "bin" and binary.parent.parent.name == "pyro_mcp", binary
assert Path(sys.prefix).resolve() in binary.parents, f"{binary} is not the bundled binary"
with Pyro() as pyro:
    r = pyro.run_in_vm(environment="debian:12", command="echo hi")
assert r["stdout"] == "hi\n", r
assert r["exit_code"] == 0, r
print(f"[test-wheel] run_in_vm through {binary}: ok")
PY

# The MCP client library comes only now: the checks above ran with nothing but the wheel.
have_mcp=1
"$venv/bin/python" -m pip install "${pip_quiet[@]}" mcp || have_mcp=0
if [ "$have_mcp" = 1 ]; then
  run "$venv/bin/python" - <<'PY'
import asyncio, os, shutil
from mcp import ClientSession, StdioServerParameters, stdio_client

async def main() -> None:
    pyro = shutil.which("pyro")  # the console script, as an MCP client config names it
    params = StdioServerParameters(
        command=pyro, args=["mcp", "serve", "--profile", "vm-run"], env=dict(os.environ)
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            names = [t.name for t in (await s.list_tools()).tools]
            assert names == ["vm_run"], names
            r = await s.call_tool("vm_run", {"environment": "debian:12", "command": "echo hi"})
            assert not r.is_error, r.content
            assert r.structured_content["stdout"] == "hi\n", r.structured_content
    print(f"[test-wheel] {pyro} mcp serve: tools {names}, vm_run ok")

asyncio.run(main())
PY
else
  echo "[test-wheel] SKIPPED the MCP client check: the 'mcp' package could not be installed from PyPI"
fi
echo "[test-wheel] ok in $((SECONDS - start)) s"
