"""The Python SDK against the real `pyro` binary, booting real sandboxes.

Needs the binary ($PYRO_BIN, or `pyro` on PATH, or a checkout's target/*/pyro) and, for the
guest, $PYRO_AGENT_BIN; `scripts/test-python.sh` sets everything up. Workspaces and VMs are
created in $PYRO_STATE_DIR (a temporary directory under that script).
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import pyro_mcp
from pyro_mcp import (
    Pyro,
    PyroError,
    PyroInputError,
    PyroNotFoundError,
    PyroProtocolError,
    PyroRuntimeError,
    PyroStateError,
    PyroTimeoutError,
    PyroUnavailableError,
)
from pyro_mcp import _binary
from pyro_mcp._binary import find_binary

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
ENV = "debian:12"

try:
    BINARY = find_binary()
except PyroProtocolError as e:  # pragma: no cover - depends on the machine
    pytest.skip(f"no pyro binary: {e}", allow_module_level=True)


@pytest.fixture(scope="module")
def pyro() -> Iterator[Pyro]:
    with Pyro() as p:
        yield p


def rpc_lines(lines: List[str], timeout: float = 60) -> List[Dict[str, Any]]:
    """Feeds raw lines to a fresh `pyro rpc` and returns every message it wrote."""
    out = subprocess.run(
        [BINARY, "rpc"],
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


# ---------------------------------------------------------------------- package surface


def test_package_exports_version_and_error_hierarchy() -> None:
    assert pyro_mcp.__version__ == "0.1.0"
    assert issubclass(PyroInputError, ValueError) and issubclass(PyroInputError, PyroError)
    assert issubclass(PyroNotFoundError, ValueError)
    for cls in (PyroStateError, PyroUnavailableError, PyroRuntimeError, PyroProtocolError):
        assert issubclass(cls, RuntimeError) and issubclass(cls, PyroError)
    assert issubclass(PyroTimeoutError, TimeoutError)


def test_binary_lookup_honours_pyro_bin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYRO_BIN", str(tmp_path / "missing"))
    with pytest.raises(PyroProtocolError, match="PYRO_BIN"):
        find_binary()
    monkeypatch.setenv("PYRO_BIN", BINARY)
    assert find_binary() == str(Path(BINARY).resolve())


def test_binary_lookup_prefers_the_bundled_binary(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A platform wheel install: pyro_mcp/bin/pyro wins over PATH, $PYRO_BIN over it.
    bundled = tmp_path / "bin"
    bundled.mkdir()
    (bundled / "pyro").write_text("#!/bin/sh\n")
    (bundled / "pyro").chmod(0o755)
    on_path = tmp_path / "path"
    on_path.mkdir()
    (on_path / "pyro").write_text("#!/bin/sh\n")
    (on_path / "pyro").chmod(0o755)
    monkeypatch.setattr(_binary, "BUNDLED_DIR", bundled)
    monkeypatch.setenv("PATH", str(on_path))
    monkeypatch.delenv("PYRO_BIN", raising=False)
    assert find_binary() == str(bundled / "pyro")
    monkeypatch.setenv("PYRO_BIN", BINARY)
    assert find_binary() == str(Path(BINARY).resolve())
    # Without a bundled binary (an install from source): PATH, as before.
    monkeypatch.delenv("PYRO_BIN")
    (bundled / "pyro").unlink()
    assert find_binary() == str(on_path / "pyro")


def test_a_missing_binary_is_a_protocol_error(tmp_path: Path) -> None:
    with Pyro(binary=tmp_path / "nope") as p:
        with pytest.raises(PyroProtocolError):
            p.ping()


# ---------------------------------------------------------------------- the wire protocol


def test_rpc_answers_protocol_errors_with_their_codes() -> None:
    msgs = rpc_lines(
        [
            "not json",
            "[1, 2]",
            '{"jsonrpc": "1.0", "id": 1, "method": "ping"}',
            '{"jsonrpc": "2.0", "id": 2, "method": "no_such_method"}',
            '{"jsonrpc": "2.0", "id": 3, "method": "ping", "params": [1]}',
            '{"jsonrpc": "2.0", "id": 4, "method": "status_vm", "params": {"vm_id": "x", "extra": 1}}',
            '{"jsonrpc": "2.0", "id": 5, "method": "status_vm", "params": {"vm_id": 7}}',
            '{"jsonrpc": "2.0", "method": "ping"}',
            '{"jsonrpc": "2.0", "id": "s", "method": "ping"}',
        ]
    )
    by_id = {json.dumps(m.get("id")): m for m in msgs if "id" in m and m["id"] is not None}
    nulls = [m["error"]["code"] for m in msgs if m.get("id") is None]
    assert sorted(nulls) == [-32700, -32600]
    assert by_id["1"]["error"]["code"] == -32600
    assert by_id["2"]["error"]["code"] == -32601
    for i in ("3", "4", "5"):
        err = by_id[i]["error"]
        assert err["code"] == -32602 and err["data"]["kind"] == "invalid_input", err
    assert "extra" in by_id["4"]["error"]["message"]
    assert by_id['"s"']["result"]["pong"] is True
    # The notification got no answer: 2 null-id errors + 6 answers.
    assert len(msgs) == 8


def test_rpc_application_errors_carry_the_core_kind() -> None:
    msgs = rpc_lines(
        [
            '{"jsonrpc":"2.0","id":1,"method":"status_vm","params":{"vm_id":"nope"}}',
            '{"jsonrpc":"2.0","id":2,"method":"create_vm","params":{"environment":"debian:99"}}',
            '{"jsonrpc":"2.0","id":3,"method":"create_vm","params":{"environment":"debian:12","vcpu_count":99}}',
        ]
    )
    errs = {m["id"]: m["error"] for m in msgs}
    assert errs[1]["code"] == -32000 and errs[1]["data"]["kind"] == "not_found"
    assert errs[2]["data"]["kind"] == "invalid_input" and "debian:12" in errs[2]["message"]
    assert errs[3]["data"]["kind"] == "invalid_input" and "vcpu_count" in errs[3]["message"]


def test_rpc_answers_out_of_order_so_a_long_call_does_not_block() -> None:
    proc = subprocess.Popen(
        [BINARY, "rpc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        run = {"environment": ENV, "command": "sleep 3; echo done", "timeout_seconds": 30}
        proc.stdin.write(
            json.dumps({"jsonrpc": "2.0", "id": "long", "method": "run_in_vm", "params": run})
            + "\n"
        )
        proc.stdin.write(
            json.dumps({"jsonrpc": "2.0", "id": "quick", "method": "list_environments"}) + "\n"
        )
        proc.stdin.flush()
        answers: List[Any] = []
        saw_progress = False
        while len(answers) < 2:
            msg = json.loads(proc.stdout.readline())
            if msg.get("method") == "progress":
                assert msg["params"]["id"] == "long"
                saw_progress = True
            else:
                answers.append(msg)
        assert [a["id"] for a in answers] == ["quick", "long"]
        assert answers[1]["result"]["stdout"] == "done\n"
        assert saw_progress
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0


# ---------------------------------------------------------------------- one-shot runs


def test_run_in_vm_runs_git(pyro: Pyro) -> None:
    r = pyro.run_in_vm(environment=ENV, command="git --version", timeout_seconds=60)
    assert r["exit_code"] == 0, r
    assert r["stdout"].startswith("git version ")
    assert r["cleanup"] == {"vm_id": r["vm_id"], "deleted": True, "reason": "post_exec_cleanup"}


def test_run_in_vm_takes_an_argv_and_exec_options(pyro: Pyro) -> None:
    r = pyro.run_in_vm(
        environment=ENV,
        command=["sh", "-c", 'printf "%s|%s|" "$GREETING" "$(pwd)"; cat; exit 3'],
        env={"GREETING": "hi"},
        cwd="/tmp",
        stdin="from stdin",
    )
    assert r["exit_code"] == 3
    assert r["stdout"] == "hi|/tmp|from stdin"


def test_unknown_environment_is_an_input_error(pyro: Pyro) -> None:
    with pytest.raises(PyroInputError) as e:
        pyro.run_in_vm(environment="debian:99", command="true")
    assert isinstance(e.value, ValueError)
    assert e.value.kind == "invalid_input" and e.value.data["kind"] == "invalid_input"
    assert "debian:12" in str(e.value)


def test_out_of_range_and_refused_parameters_are_input_errors(pyro: Pyro) -> None:
    with pytest.raises(ValueError, match="vcpu_count"):
        pyro.create_vm(environment=ENV, vcpu_count=99)
    with pytest.raises(PyroInputError, match="allow_host_compat"):
        pyro.run_in_vm(environment=ENV, command="true", allow_host_compat=True)
    # An allowlist needs a network; a bad policy or range is refused before anything is made.
    with pytest.raises(PyroInputError, match="allow_hosts"):
        pyro.run_in_vm(environment=ENV, command="true", allow_hosts=["api.example.org"])
    with pytest.raises(PyroInputError, match="network_policy"):
        pyro.create_workspace(environment=ENV, network_policy="everything")
    with pytest.raises(PyroInputError, match="allow_cidrs"):
        pyro.create_workspace(
            environment=ENV, network_policy="egress", allow_cidrs=["127.0.0.0/8"]
        )
    with pytest.raises(TypeError, match="list of strings"):
        pyro.run_in_vm(environment=ENV, command="true", network=True, allow_hosts="a.example")


def test_ill_typed_parameters_are_input_errors(pyro: Pyro) -> None:
    with pytest.raises(PyroInputError) as e:
        pyro.run_in_vm(environment=ENV, command="true", timeout_seconds="soon")  # type: ignore[arg-type]
    assert e.value.data["code"] == -32602
    with pytest.raises(TypeError):
        pyro.run_in_vm(environment=ENV, command="true", bogus=1)  # type: ignore[call-arg]


def test_unknown_ids_are_not_found(pyro: Pyro) -> None:
    with pytest.raises(PyroNotFoundError) as e:
        pyro.status_workspace("no-such-workspace")
    assert isinstance(e.value, ValueError) and e.value.kind == "not_found"
    with pytest.raises(PyroNotFoundError):
        pyro.status_vm("no-such-vm")


def test_vm_lifecycle(pyro: Pyro) -> None:
    vm = pyro.create_vm(environment=ENV, mem_mib=512, ttl_seconds=300)
    vm_id = vm["vm_id"]
    assert vm["state"] == "created"
    assert pyro.start_vm(vm_id)["state"] == "started"
    with pytest.raises(PyroStateError):
        pyro.start_vm(vm_id)
    assert pyro.status_vm(vm_id)["state"] == "started"
    assert pyro.network_info_vm(vm_id)["network_enabled"] is False
    r = pyro.exec_vm(vm_id, command="echo hello")
    assert r["stdout"] == "hello\n" and r["cleanup"]["deleted"] is True
    with pytest.raises(PyroNotFoundError):
        pyro.status_vm(vm_id)

    other = pyro.create_vm(environment=ENV)["vm_id"]
    assert pyro.delete_vm(other) == {"vm_id": other, "deleted": True, "reason": "explicit_delete"}
    assert pyro.reap_expired() == {"deleted_vm_ids": [], "count": 0}


def test_environments(pyro: Pyro) -> None:
    listing = pyro.list_environments()
    names = [e["name"] for e in listing["environments"]]
    assert names == ["debian:12", "debian:12-base", "debian:12-build"]
    info = pyro.inspect_environment(ENV)
    assert info["name"] == ENV and info["installed"] is True
    assert pyro.pull_environment(ENV)["installed"] is True


def test_progress_callback_sees_the_phases() -> None:
    seen: List[str] = []
    with Pyro(on_progress=seen.append) as p:
        p.run_in_vm(environment=ENV, command="true")
    assert any("phase=execute" in m for m in seen), seen


def test_a_pool_serves_run_in_vm_calls_of_its_shape() -> None:
    with Pyro(pool_size=1, pool_mem_mib=384) as p:
        modes = []
        deadline = time.monotonic() + 180
        while True:
            r = p.run_in_vm(environment=ENV, command="true", mem_mib=384)
            assert r["exit_code"] == 0, r
            modes.append(r["boot_mode"])
            if r["boot_mode"] == "pooled":
                break
            assert time.monotonic() < deadline, modes
            time.sleep(0.5)
        other = p.run_in_vm(environment=ENV, command="true", mem_mib=400)
        assert other["boot_mode"] != "pooled", other


@pytest.mark.parametrize("size", [-1, 17, 1.5, True, "2"])
def test_bad_pool_sizes_are_input_errors(size: Any) -> None:
    with pytest.raises(PyroInputError, match="pool_size"):
        Pyro(pool_size=size)


# ---------------------------------------------------------------------- threads


def test_two_threads_call_at_once(pyro: Pyro) -> None:
    results: Dict[str, Any] = {}

    def run(name: str) -> None:
        try:
            results[name] = pyro.run_in_vm(environment=ENV, command=f"sleep 2; echo {name}")
        except Exception as e:  # pragma: no cover - reported below
            results[name] = e

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    start = time.monotonic()
    for t in threads:
        t.start()
    # While both run, a quick call is answered at once.
    time.sleep(0.5)
    quick = time.monotonic()
    assert pyro.ping()["pong"] is True
    assert time.monotonic() - quick < 2.0
    for t in threads:
        t.join(timeout=180)
    elapsed = time.monotonic() - start
    assert results["a"]["stdout"] == "a\n", results
    assert results["b"]["stdout"] == "b\n", results
    # Both ran concurrently: far less than two sequential runs (boot + 2 s sleep each).
    assert elapsed < 2 * (results["a"]["boot_ms"] / 1000 + 2) + 1, elapsed


def test_timeout_raises_and_the_connection_stays_usable() -> None:
    with Pyro(timeout=0.5) as p:
        with pytest.raises(PyroTimeoutError) as e:
            p.run_in_vm(environment=ENV, command="sleep 2")
        assert isinstance(e.value, TimeoutError)
        assert p.ping()["pong"] is True


def test_a_dead_child_fails_its_calls_and_is_replaced() -> None:
    p = Pyro()
    try:
        p.ping()
        conn = p._holder.connection
        assert conn is not None
        errors: List[BaseException] = []

        def long_call() -> None:
            try:
                p.run_in_vm(environment=ENV, command="sleep 30")
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=long_call)
        t.start()
        time.sleep(0.5)
        os.kill(conn.pid, 9)
        t.join(timeout=30)
        assert len(errors) == 1 and isinstance(errors[0], PyroProtocolError), errors
        assert "exited" in str(errors[0])
        # The next call starts a fresh child.
        assert p.ping()["pong"] is True
        assert p._holder.connection is not None and p._holder.connection.pid != conn.pid
    finally:
        p.close()
    with pytest.raises(PyroProtocolError, match="closed"):
        p.ping()


# ---------------------------------------------------------------------- workspaces


def test_workspace_session(pyro: Pyro, tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    (seed / "src").mkdir(parents=True)
    (seed / "README.md").write_text("hello\n")
    (seed / "src" / "main.py").write_text("print('v1')\n")
    ws = pyro.create_workspace(
        environment=ENV, seed_path=seed, name="sdk-test", labels={"suite": "python"}
    )
    wid = ws["workspace_id"]
    try:
        assert ws["state"] == "started"
        assert ws["workspace_seed"]["mode"] == "directory"
        assert ws["labels"] == {"suite": "python"}
        assert any(w["workspace_id"] == wid for w in pyro.list_workspaces()["workspaces"])

        r = pyro.exec_workspace(wid, command="cat README.md && python3 --version || true")
        assert r["stdout"].startswith("hello\n") and r["sequence"] == 1
        r = pyro.exec_workspace(wid, command=["sh", "-c", "echo $((6 * 7)) > answer.txt"])
        assert r["exit_code"] == 0

        files = pyro.list_workspace_files(wid, recursive=True)
        paths = {e["path"] for e in files["entries"]}
        assert {"/workspace/README.md", "/workspace/src/main.py", "/workspace/answer.txt"} <= paths
        assert pyro.read_workspace_file(wid, "/workspace/answer.txt")["content"] == "42\n"

        pyro.write_workspace_file(wid, "/workspace/src/main.py", text="print('v2')\n")
        patch = "--- a/README.md\n+++ b/README.md\n@@ -1 +1,2 @@\n hello\n+patched\n"
        applied = pyro.apply_workspace_patch(wid, patch=patch)
        assert applied["changed"] is True and applied["summary"]["modified"] == 1

        extra = tmp_path / "extra"
        extra.mkdir()
        (extra / "notes.txt").write_text("synced\n")
        synced = pyro.push_workspace_sync(wid, extra, dest="/workspace/docs")
        assert synced["workspace_sync"]["destination"] == "/workspace/docs"

        diff = pyro.diff_workspace(wid)
        assert diff["changed"] is True
        assert "+print('v2')" in diff["patch"] and "+patched" in diff["patch"]
        changed = {e["path"] for e in diff["entries"]}
        assert any(p.endswith("answer.txt") for p in changed)

        out = tmp_path / "exported"
        exp = pyro.export_workspace(wid, "/workspace/src", output_path=out)
        assert exp["artifact_type"] == "directory"
        assert (out / "main.py").read_text() == "print('v2')\n"
        with pytest.raises(PyroError):
            pyro.export_workspace(wid, "/workspace/src", output_path=out)  # exists

        logs = pyro.logs_workspace(wid)
        assert [e["sequence"] for e in logs["entries"]] == [1, 2]

        updated = pyro.update_workspace(
            wid, name="renamed", labels={"x": "1"}, clear_labels=["suite"]
        )
        assert updated["name"] == "renamed" and updated["labels"] == {"x": "1"}
        with pytest.raises(PyroInputError):
            pyro.read_workspace_file(wid, "/etc/passwd")

        stopped = pyro.stop_workspace(wid)
        assert stopped["state"] == "stopped"
        with pytest.raises(PyroStateError):
            pyro.exec_workspace(wid, command="true")
        assert pyro.start_workspace(wid)["state"] == "started"
        assert pyro.read_workspace_file(wid, "/workspace/src/main.py")["content"] == "print('v2')\n"

        reset = pyro.reset_workspace(wid)
        assert reset["reset_count"] == 1 and reset["command_count"] == 0
        assert pyro.read_workspace_file(wid, "/workspace/src/main.py")["content"] == "print('v1')\n"
        assert pyro.diff_workspace(wid)["changed"] is False
        with pytest.raises(PyroNotFoundError, match="no snapshot `later`"):
            pyro.reset_workspace(wid, snapshot="later")
    finally:
        deleted = pyro.delete_workspace(wid)
    assert deleted == {"workspace_id": wid, "deleted": True, "reason": "explicit_delete"}
    with pytest.raises(PyroNotFoundError):
        pyro.status_workspace(wid)


def test_secrets_reach_only_named_commands_and_are_redacted(pyro: Pyro, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-value-5c1d9e")
    ws = pyro.create_workspace(
        environment=ENV,
        secrets=[
            {"name": "API_TOKEN", "value": "lit-value-8a7b6c"},
            {"name": "FILE_TOKEN", "file_path": token_file},
        ],
    )
    wid = ws["workspace_id"]
    try:
        assert ws["secrets"] == [
            {"name": "API_TOKEN", "source_kind": "literal"},
            {"name": "FILE_TOKEN", "source_kind": "file"},
        ]
        r = pyro.exec_workspace(wid, command='echo "[${API_TOKEN:-unset}]"')
        assert r["stdout"] == "[unset]\n"
        r = pyro.exec_workspace(
            wid,
            command='echo "$T"; echo "$FILE_TOKEN" >&2; echo "$T" > t.txt',
            secret_env={"API_TOKEN": "T", "FILE_TOKEN": ""},
        )
        assert r["stdout"] == "[REDACTED]\n" and r["stderr"] == "[REDACTED]\n"
        assert pyro.read_workspace_file(wid, "t.txt")["content"] == "[REDACTED]\n"
        logs = pyro.logs_workspace(wid)
        assert "lit-value" not in str(logs)
        with pytest.raises(PyroInputError, match="no secret"):
            pyro.exec_workspace(wid, command="true", secret_env={"NOPE": ""})
    finally:
        pyro.delete_workspace(wid)


def _read_until(pyro: Pyro, wid: str, sid: str, cursor: int, want: str) -> Tuple[str, int]:
    text = ""
    deadline = time.monotonic() + 60
    while want not in text:
        assert time.monotonic() < deadline, f"no {want!r} in {text!r}"
        r = pyro.read_shell(wid, sid, cursor=cursor, plain=True, wait_for_idle_ms=200)
        text += r["output"]
        cursor = r["next_cursor"]
    return text, cursor


def test_shells_and_services_on_a_real_guest(pyro: Pyro) -> None:
    ws = pyro.create_workspace(
        environment=ENV, secrets=[{"name": "API_TOKEN", "value": "svc-secret-31c9d2"}]
    )
    wid = ws["workspace_id"]
    try:
        # A PTY shell: full-screen output rendered as plain text, the secret redacted.
        sh = pyro.open_shell(wid, cols=40, rows=10, secret_env={"API_TOKEN": "T"})
        sid = sh["shell_id"]
        assert sh["state"] == "running" and (sh["cols"], sh["rows"]) == (40, 10)
        _, cursor = _read_until(pyro, wid, sid, 0, "pyro$")
        pyro.write_shell(
            wid,
            sid,
            input="printf '\\033[?1049h\\033[2J\\033[3;5Htitle %s\\033[5;1Hbottom\\n' \"$T\"; stty size",
        )
        text, cursor = _read_until(pyro, wid, sid, cursor, "10 40")
        assert "title [REDACTED]" in text and "bottom" in text, text
        assert "\x1b" not in text and "svc-secret" not in text, text
        pyro.write_shell(wid, sid, input="sleep 600")
        time.sleep(0.5)
        pyro.signal_shell(wid, sid, signal_name="int")
        pyro.write_shell(wid, sid, input="echo code=$?")
        text, _ = _read_until(pyro, wid, sid, cursor, "code=130")
        assert [s["shell_id"] for s in pyro.list_shells(wid)["shells"]] == [sid]
        closed = pyro.close_shell(wid, sid)
        assert closed["closed"] is True and closed["state"] == "stopped"

        # A service with an HTTP probe, and one that fails before it is ready.
        web = pyro.start_service(
            wid,
            "web",
            command="exec python3 -m http.server 8080 --bind 127.0.0.1",
            readiness={"type": "http", "url": "http://127.0.0.1:8080/"},
            ready_timeout_seconds=60,
        )
        assert web["state"] == "running" and web["ready_at"] is not None
        assert web["readiness"] == {"type": "http", "url": "http://127.0.0.1:8080/"}
        r = pyro.exec_workspace(
            wid,
            command="python3 -c \"import urllib.request as u; "
            "print(u.urlopen('http://127.0.0.1:8080/').status)\"",
        )
        assert r["stdout"] == "200\n", r
        with pytest.raises(PyroRuntimeError) as failed:
            pyro.start_service(
                wid,
                "crash",
                command="echo boom >&2; exit 7",
                readiness={"type": "tcp", "address": "127.0.0.1:9"},
            )
        assert failed.value.data["service"]["stop_reason"] == "process_exited_before_ready"
        assert failed.value.data["service"]["exit_code"] == 7
        assert "boom" in str(failed.value)
        listed = pyro.list_services(wid)
        assert (listed["count"], listed["running_count"]) == (2, 1)
        logs = pyro.logs_service(wid, "web", tail_lines=5)
        assert "GET / HTTP" in logs["stderr"], logs
        stopped = pyro.stop_service(wid, "web")
        assert (stopped["state"], stopped["stop_reason"]) == ("stopped", "sigterm")
        with pytest.raises(PyroInputError, match="service_name"):
            pyro.start_service(wid, "no/slash", command="true")
        with pytest.raises(PyroNotFoundError):
            pyro.status_service(wid, "nope")
    finally:
        pyro.delete_workspace(wid)


def test_snapshots_reset_and_fork_on_a_real_guest(pyro: Pyro) -> None:
    wid = pyro.create_workspace(environment=ENV)["workspace_id"]
    made = [wid]
    try:
        pyro.exec_workspace(wid, command="echo one > a.txt")
        taken = pyro.create_snapshot(wid, "s1")
        snap = taken["snapshot"]
        assert (snap["snapshot_name"], snap["kind"], snap["has_memory"]) == ("s1", "named", True)
        assert snap["pause_ms"] >= 0 and snap["size_bytes"] > 0
        pyro.exec_workspace(wid, command="echo two > a.txt")
        info = pyro.reset_workspace(wid, snapshot="s1")
        assert info["metadata"]["boot_mode"] == "snapshot"
        assert pyro.exec_workspace(wid, command="cat a.txt")["stdout"] == "one\n"
        listed = pyro.list_snapshots(wid)
        assert [s["snapshot_name"] for s in listed["snapshots"]] == ["baseline", "s1"]
        assert listed["total_bytes"] >= snap["size_bytes"]
        forked = pyro.fork_workspace(wid, snapshot="s1", count=2, name="kid")
        made += [w["workspace_id"] for w in forked["workspaces"]]
        assert [w["name"] for w in forked["workspaces"]] == ["kid-1", "kid-2"]
        pyro.exec_workspace(made[1], command="echo fork > a.txt")
        assert pyro.exec_workspace(made[2], command="cat a.txt")["stdout"] == "one\n"
        assert pyro.exec_workspace(wid, command="cat a.txt")["stdout"] == "one\n"
        deleted = pyro.delete_snapshot(wid, "s1")
        assert deleted == {"workspace_id": wid, "snapshot_name": "s1", "deleted": True}
        with pytest.raises(PyroNotFoundError):
            pyro.reset_workspace(wid, snapshot="s1")
        with pytest.raises(PyroInputError, match="snapshot_name"):
            pyro.create_snapshot(wid, "no/slash")
        with pytest.raises(PyroInputError, match="count"):
            pyro.fork_workspace(wid, count=0)
    finally:
        for w in made:
            pyro.delete_workspace(w)


def test_workspaces_persist_across_instances(tmp_path: Path) -> None:
    with Pyro() as a:
        wid = a.create_workspace(environment=ENV)["workspace_id"]
        a.write_workspace_file(wid, "/workspace/kept.txt", text="kept\n")
    try:
        with Pyro() as b:
            assert b.status_workspace(wid)["state"] == "started"
            assert b.read_workspace_file(wid, "/workspace/kept.txt")["content"] == "kept\n"
    finally:
        with Pyro() as c:
            c.delete_workspace(wid)


# ---------------------------------------------------------------------- examples


def run_example(name: str, env: Dict[str, str] = {}, timeout: float = 300) -> str:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
        cwd=str(REPO),
    )
    assert out.returncode == 0, f"{name} exited {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_example_python_run() -> None:
    assert "git version" in run_example("python_run.py")


def test_example_python_lifecycle() -> None:
    out = run_example("python_lifecycle.py")
    assert "state=started" in out and "cleanup=post_exec_cleanup" in out


def test_example_python_workspace() -> None:
    out = run_example("python_workspace.py")
    assert "diff: changed=True" in out and "reset: reset_count=1" in out and "deleted" in out


def test_example_python_snapshots() -> None:
    out = run_example("python_snapshots.py")
    assert "memory=True" in out, out
    assert "after reset: boot_mode=snapshot served=good" in out, out
    assert "source and forks serve: good, trial0, trial1" in out, out
    assert "deleted" in out, out


class _FakeResponses(http.server.BaseHTTPRequestHandler):
    """A Responses endpoint that asks for one vm_run call, then answers with its output."""

    requests: List[Dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body["_auth"] = self.headers.get("Authorization")
        body["_path"] = self.path
        self.requests.append(body)
        outputs = [i for i in body["input"] if i.get("type") == "function_call_output"]
        if not outputs:
            args = {"environment": "debian:12", "command": "git --version", "timeout_seconds": 30}
            reply = {
                "id": "resp_1",
                "object": "response",
                "output": [
                    {
                        "type": "function_call",
                        "id": "fc_1",
                        "call_id": "call_1",
                        "name": "vm_run",
                        "arguments": json.dumps(args),
                        "status": "completed",
                    }
                ],
            }
        else:
            result = json.loads(outputs[0]["output"])
            reply = {
                "id": "resp_2",
                "object": "response",
                "output": [
                    {
                        "type": "message",
                        "id": "msg_1",
                        "role": "assistant",
                        "status": "completed",
                        "content": [
                            {
                                "type": "output_text",
                                "text": f"The sandbox says: {result['stdout'].strip()}",
                            }
                        ],
                    }
                ],
            }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_example_openai_responses_against_a_local_fake() -> None:
    _FakeResponses.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeResponses)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/v1"
        out = run_example(
            "openai_responses_vm_run.py",
            {"OPENAI_BASE_URL": base, "OPENAI_API_KEY": "test-key", "OPENAI_MODEL": "fake-model"},
        )
    finally:
        server.shutdown()
        server.server_close()
    assert "[answer] The sandbox says: git version" in out, out
    first, second = _FakeResponses.requests
    assert first["_path"] == "/v1/responses" and first["_auth"] == "Bearer test-key"
    assert first["model"] == "fake-model"
    assert [t["name"] for t in first["tools"]] == ["vm_run"]
    call_out = [i for i in second["input"] if i.get("type") == "function_call_output"]
    assert call_out[0]["call_id"] == "call_1"
    assert json.loads(call_out[0]["output"])["exit_code"] == 0


def test_example_openai_responses_without_a_key_skips_cleanly() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "openai_responses_vm_run.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0 and "[skip]" in out.stdout


def test_example_langchain() -> None:
    pytest.importorskip(
        "langchain_core",
        reason="langchain-core is not installed (optional; pip install langchain-core)",
    )
    out = run_example("langchain_vm_run.py")
    assert "[tool] name=vm_run" in out and "git version" in out


def test_mcp_client_configs_are_valid_json() -> None:
    for name in ("claude_desktop_mcp_config.json", "cursor_mcp_config.json"):
        server = json.loads((EXAMPLES / name).read_text())["mcpServers"]["pyro"]
        assert server["args"] == ["mcp", "serve", "--profile", "workspace-core"]
    oc = json.loads((EXAMPLES / "opencode_mcp_config.json").read_text())["mcp"]["pyro"]
    assert oc["command"][1:] == ["mcp", "serve", "--profile", "workspace-core"]
