"""The JSON-RPC 2.0 connection to one ``pyro rpc`` child process.

Framing is one JSON object per line in both directions. Requests may be sent from several
threads at once; a reader thread matches each response to its caller by ``id`` (the server
answers in completion order, not request order) and hands ``progress`` notifications to a
callback.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import subprocess
import threading
from typing import IO, Any, Callable, Deque, Dict, List, Mapping, Optional

from .errors import PyroError, PyroInputError, PyroProtocolError, PyroTimeoutError, from_rpc_error

log = logging.getLogger("pyro_mcp")

#: Receives each progress message of a running call (from the reader thread).
ProgressCallback = Callable[[str], None]


class _Pending:
    """One call waiting for its answer."""

    __slots__ = ("event", "response", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.response: Optional[Dict[str, Any]] = None
        self.error: Optional[PyroError] = None


class Connection:
    """A running ``pyro rpc`` child and the threads that read its output."""

    def __init__(
        self,
        argv: List[str],
        env: Mapping[str, str],
        on_progress: Optional[ProgressCallback] = None,
    ) -> None:
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(env),
                close_fds=True,
            )
        except OSError as e:
            raise PyroProtocolError(f"cannot start {' '.join(argv)!r}: {e}") from e
        self._argv = argv
        self._on_progress = on_progress
        self._ids = itertools.count(1)
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: Dict[int, _Pending] = {}
        self._dead: Optional[str] = None
        self._stderr_tail: Deque[str] = collections.deque(maxlen=40)
        self._stderr_done = threading.Event()
        self._stderr_thread = threading.Thread(
            target=self._read_stderr, name="pyro-rpc-stderr", daemon=True
        )
        self._stderr_thread.start()
        self._reader = threading.Thread(
            target=self._read_stdout, name="pyro-rpc-reader", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._proc.pid

    @property
    def alive(self) -> bool:
        """Whether the child is still answering (its stdout is open)."""
        with self._lock:
            return self._dead is None

    # ------------------------------------------------------------------ calls

    def call(self, method: str, params: Mapping[str, Any], timeout: Optional[float]) -> Any:
        """Sends one request and waits for its result.

        Raises:
            PyroError: the server's error, mapped to its class; PyroProtocolError when the
                child is gone; PyroTimeoutError when ``timeout`` seconds pass first.
        """
        rid = next(self._ids)
        request = {"jsonrpc": "2.0", "id": rid, "method": method, "params": dict(params)}
        try:
            line = (json.dumps(request, ensure_ascii=False, separators=(",", ":")) + "\n").encode(
                "utf-8"
            )
        except (TypeError, ValueError) as e:
            raise PyroInputError(f"{method}: the parameters cannot be sent as JSON: {e}") from e
        pending = _Pending()
        with self._lock:
            if self._dead is not None:
                raise PyroProtocolError(self._dead)
            self._pending[rid] = pending
        try:
            self._write(line)
            if not pending.event.wait(timeout):
                raise PyroTimeoutError(
                    f"{method}: no answer from pyro within {timeout} s "
                    "(the call may still complete in the background)",
                    data={"method": method},
                )
        finally:
            with self._lock:
                self._pending.pop(rid, None)
        if pending.error is not None:
            raise pending.error
        response = pending.response or {}
        if "error" in response:
            error = response["error"]
            raise from_rpc_error(error if isinstance(error, Mapping) else {"message": str(error)})
        return response.get("result")

    def _write(self, line: bytes) -> None:
        stdin = self._proc.stdin
        with self._write_lock:
            try:
                if stdin is None or stdin.closed:
                    raise BrokenPipeError("stdin is closed")
                stdin.write(line)
                stdin.flush()
            except (BrokenPipeError, OSError, ValueError) as e:
                raise PyroProtocolError(
                    self._death_message(f"cannot write to pyro rpc: {e}")
                ) from e

    # ------------------------------------------------------------------ reader threads

    def _read_stdout(self) -> None:
        stdout: Optional[IO[bytes]] = self._proc.stdout
        assert stdout is not None
        for raw in stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                log.warning("pyro rpc: ignoring a line that is not JSON: %r", raw[:200])
                continue
            if not isinstance(msg, dict):
                log.warning("pyro rpc: ignoring a message that is not an object: %r", raw[:200])
                continue
            if "id" in msg and ("result" in msg or "error" in msg):
                with self._lock:
                    pending = self._pending.get(msg["id"]) if isinstance(msg["id"], int) else None
                if pending is None:
                    if msg.get("id") is None and "error" in msg:
                        log.warning("pyro rpc: error without a request id: %s", msg["error"])
                    continue
                pending.response = msg
                pending.event.set()
            elif msg.get("method") == "progress":
                self._progress(msg.get("params"))
        # End of output: the child exited (or closed stdout).
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._stderr_done.wait(timeout=2)
        reason = self._death_message("pyro rpc exited")
        with self._lock:
            self._dead = reason
            waiting = list(self._pending.values())
        for p in waiting:
            p.error = PyroProtocolError(reason)
            p.event.set()

    def _progress(self, params: Any) -> None:
        if not isinstance(params, dict):
            return
        message = str(params.get("message", ""))
        log.debug("pyro rpc progress (request %s): %s", params.get("id"), message)
        if self._on_progress is not None:
            try:
                self._on_progress(message)
            except Exception:  # a broken callback must not kill the reader
                log.exception("pyro_mcp progress callback failed")

    def _read_stderr(self) -> None:
        stderr = self._proc.stderr
        assert stderr is not None
        try:
            for raw in stderr:
                text = raw.decode("utf-8", "replace").rstrip("\n")
                self._stderr_tail.append(text)
                log.debug("pyro rpc stderr: %s", text)
        finally:
            self._stderr_done.set()

    def _death_message(self, what: str) -> str:
        code = self._proc.poll()
        status = f" (exit status {code})" if code is not None else ""
        tail = "\n".join(list(self._stderr_tail)[-15:]).strip()
        return f"{what}{status}" + (f"; its stderr ends with:\n{tail}" if tail else "")

    # ------------------------------------------------------------------ shutdown

    def close(self, timeout: float = 30.0) -> None:
        """Closes the child's stdin and waits for it to exit.

        The child answers the requests still in flight, deletes the one-shot VMs it created
        and exits; workspaces persist. After ``timeout`` seconds it is terminated, then killed.
        """
        proc = self._proc
        with self._write_lock:
            try:
                if proc.stdin is not None and not proc.stdin.closed:
                    proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=10)
        for f in (proc.stdout, proc.stderr):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


def child_env(
    state_dir: Optional[str],
    cache_dir: Optional[str],
    extra: Optional[Mapping[str, str]],
) -> Dict[str, str]:
    """The environment of a ``pyro rpc`` child: ours, plus the SDK's settings."""
    env = dict(os.environ)
    if extra:
        env.update({str(k): str(v) for k, v in extra.items()})
    if state_dir is not None:
        env["PYRO_STATE_DIR"] = os.path.abspath(os.fspath(state_dir))
    if cache_dir is not None:
        env["PYRO_CACHE_DIR"] = os.path.abspath(os.fspath(cache_dir))
    return env
