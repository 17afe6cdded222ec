"""`pyro mcp serve` through the official Python MCP client (the `mcp` package).

For each tool profile: start the server over stdio, list its tools, and call `vm_run` (a real
sandbox boot). The `mcp` client validates every successful result against the tool's output
schema. The size of the `tools/list` result per profile is measured on the wire and printed
(run with `-s` to see it), and kept under a budget so the tool surface does not quietly grow.

Needs the binary ($PYRO_BIN, or a checkout's target/debug/pyro) and, for the guest,
$PYRO_AGENT_BIN; `scripts/test-python.sh` sets everything up.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

mcp = pytest.importorskip(
    "mcp", reason="the `mcp` package is not installed (pip install mcp); MCP client tests skipped"
)
from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _binary() -> Optional[str]:
    env = os.environ.get("PYRO_BIN")
    if env and Path(env).is_file():
        return env
    for p in (REPO / "target" / "debug" / "pyro", REPO / "target" / "release" / "pyro"):
        if p.is_file():
            return str(p)
    return None


BINARY = _binary()
if BINARY is None:  # pragma: no cover - depends on the machine
    pytest.skip(
        "no pyro binary (set PYRO_BIN or run cargo build -p pyro-cli)", allow_module_level=True
    )

CORE = [
    "vm_run",
    "workspace_create",
    "workspace_list",
    "workspace_update",
    "workspace_exec",
    "workspace_sync_push",
    "workspace_status",
    "workspace_logs",
    "workspace_export",
    "workspace_diff",
    "workspace_file_list",
    "workspace_file_read",
    "workspace_file_write",
    "workspace_patch_apply",
    "workspace_summary",
    "workspace_reset",
    "workspace_delete",
]
FULL = CORE + [
    "vm_list_environments",
    "vm_create",
    "vm_start",
    "vm_exec",
    "vm_stop",
    "vm_delete",
    "vm_status",
    "vm_network_info",
    "vm_reap_expired",
    "workspace_stop",
    "workspace_start",
    "workspace_disk_export",
    "workspace_disk_list",
    "workspace_disk_read",
    "snapshot_create",
    "snapshot_list",
    "snapshot_delete",
    "shell_open",
    "shell_read",
    "shell_write",
    "shell_signal",
    "shell_close",
    "service_start",
    "service_list",
    "service_status",
    "service_logs",
    "service_stop",
    "shell_list",
    "shell_resize",
    "workspace_fork",
]
PROFILES: Dict[str, List[str]] = {
    "vm-run": ["vm_run"],
    "workspace-core": CORE,
    "workspace-full": FULL,
}
# Upper bounds for the compact JSON of the tools/list result, in bytes.
# workspace-full grows with the features only it offers (network allowlists, secrets, shells
# and services, disk tools, snapshots and fork).
BUDGET = {"vm-run": 3_000, "workspace-core": 26_000, "workspace-full": 74_000}


def _server_env(tmp: Path) -> Dict[str, str]:
    env = {
        "PYRO_BIN": BINARY or "",
        "PYRO_STATE_DIR": os.environ.get("PYRO_STATE_DIR", str(tmp / "state")),
    }
    for k in ("PYRO_AGENT_BIN", "PYRO_CACHE_DIR", "HOME", "PATH"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def raw_tools_list(profile: str, tmp: Path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """initialize + tools/list as raw JSON-RPC lines: the wire result, exactly as sent."""
    lines = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "size-probe", "version": "1"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    proc = subprocess.Popen(
        [BINARY, "mcp", "serve", "--profile", profile],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=_server_env(tmp),
        cwd=tmp,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    replies: Dict[int, Dict[str, Any]] = {}
    try:
        for msg in lines:
            proc.stdin.write(json.dumps(msg) + "\n")
            proc.stdin.flush()
            if "id" in msg:
                while msg["id"] not in replies:
                    line = proc.stdout.readline()
                    assert line, "the server closed stdout early"
                    # Every line on stdout is a JSON-RPC message.
                    reply = json.loads(line)
                    if "id" in reply:
                        replies[reply["id"]] = reply
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    return replies[1]["result"], replies[2]["result"]


@pytest.mark.parametrize("profile", list(PROFILES))
def test_tools_list_wire_size(profile: str, tmp_path: Path) -> None:
    init, listed = raw_tools_list(profile, tmp_path)
    assert init["serverInfo"]["name"] == "pyro"
    assert len(init["instructions"].splitlines()) == 5
    assert [t["name"] for t in listed["tools"]] == PROFILES[profile]
    compact = len(json.dumps(listed, separators=(",", ":")))
    model_facing = sum(
        len(
            json.dumps(
                {k: t[k] for k in ("name", "description", "inputSchema")}, separators=(",", ":")
            )
        )
        for t in listed["tools"]
    )
    print(
        f"\n[mcp] profile={profile} tools={len(listed['tools'])} tools/list={compact} bytes "
        f"(~{compact // 4} tokens); name+description+inputSchema={model_facing} bytes "
        f"(~{model_facing // 4} tokens)"
    )
    assert compact <= BUDGET[profile], f"tools/list grew to {compact} bytes"


@pytest.mark.parametrize("profile", list(PROFILES))
def test_profile_serves_vm_run(profile: str, tmp_path: Path) -> None:
    progress: List[Tuple[float, Optional[str]]] = []

    async def on_progress(value: float, total: Optional[float], message: Optional[str]) -> None:
        progress.append((value, message))

    async def session() -> None:
        params = StdioServerParameters(
            command=BINARY or "pyro",
            args=["mcp", "serve", "--profile", profile],
            env=_server_env(tmp_path),
            cwd=str(tmp_path),
        )
        with open(tmp_path / "server.log", "w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    listed = await s.list_tools()
                    names = [t.name for t in listed.tools]
                    assert names == PROFILES[profile]
                    for t in listed.tools:
                        assert t.output_schema is not None, t.name
                        assert t.annotations is not None, t.name

                    r = await s.call_tool(
                        "vm_run",
                        {"environment": "debian:12", "command": "git --version"},
                        progress_callback=on_progress,
                    )
                    assert not r.is_error, r.content
                    out = r.structured_content
                    assert out["exit_code"] == 0, out
                    assert out["stdout"].startswith("git version "), out
                    assert json.loads(r.content[0].text) == out

                    bad = await s.call_tool("vm_run", {"environment": "debian:12"})
                    assert bad.is_error
                    assert "missing field `command`" in bad.content[0].text

    asyncio.run(session())
    assert any(m and "phase execute" in m for _, m in progress), progress


def test_streamable_http_on_loopback(tmp_path: Path) -> None:
    from mcp.client.streamable_http import streamable_http_client

    proc = subprocess.Popen(
        [BINARY, "mcp", "serve", "--profile", "workspace-core", "--http", "127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_server_env(tmp_path),
        cwd=tmp_path,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "listening on http://127.0.0.1:" in line, line
        url = line.split("listening on ", 1)[1].strip()

        async def session() -> None:
            async with streamable_http_client(url) as (read, write):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    listed = await s.list_tools()
                    assert [t.name for t in listed.tools] == CORE
                    r = await s.call_tool("workspace_list", {})
                    assert not r.is_error, r.content
                    assert r.structured_content["count"] >= 0
                    bad = await s.call_tool("workspace_status", {"workspace_id": "0123456789ab"})
                    assert bad.is_error and "[not_found]" in bad.content[0].text

        asyncio.run(session())
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    # Non-loopback addresses are refused: the server has no authentication.
    refused = subprocess.run(
        [BINARY, "mcp", "serve", "--http", "0.0.0.0:0"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=_server_env(tmp_path),
        cwd=tmp_path,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 1
    assert "loopback" in refused.stderr and refused.stdout == ""
