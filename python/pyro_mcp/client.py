"""The :class:`Pyro` client: the reference SDK's methods, each one JSON-RPC call to the
``pyro rpc`` child that this object starts on first use."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ._binary import find_binary
from ._rpc import Connection, ProgressCallback, child_env
from .errors import PyroInputError, PyroProtocolError

__all__ = ["Pyro", "Command", "PathLike", "Result"]

#: A command: a string is run by ``/bin/sh -c``; a sequence of strings is an argv run
#: directly (no shell).
Command = Union[str, Sequence[str]]
#: A host path.
PathLike = Union[str, "os.PathLike[str]"]
#: A result: the core's result structure as a JSON object.
Result = Dict[str, Any]


def _command(command: Command) -> Union[str, List[str]]:
    if isinstance(command, str):
        return command
    return [str(c) for c in command]


def _list(items: Optional[Sequence[str]]) -> Optional[List[str]]:
    """A sequence of strings as a list; a lone string is refused (it is not a list of names)."""
    if items is None:
        return None
    if isinstance(items, str):
        raise TypeError("expected a list of strings, not a single string")
    return [str(i) for i in items]


def _secrets(items: Optional[Sequence[Mapping[str, Any]]]) -> Optional[List[Dict[str, Any]]]:
    """Secrets as the server takes them; a ``file_path`` is made absolute here."""
    if items is None:
        return None
    out: List[Dict[str, Any]] = []
    for item in items:
        d = dict(item)
        if "file_path" in d and d["file_path"] is not None:
            d["file_path"] = _path(d["file_path"])
        out.append(d)
    return out


def _path(p: Optional[PathLike]) -> Optional[str]:
    # Relative paths mean the caller's current directory, now, not the child's.
    return None if p is None else os.path.abspath(os.fspath(p))


class _Holder:
    """The live connection of one :class:`Pyro` (kept apart so a finalizer can close it
    without keeping the :class:`Pyro` alive)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connection: Optional[Connection] = None
        self.closed = False

    def close(self, timeout: float = 30.0) -> None:
        with self.lock:
            self.closed = True
            conn, self.connection = self.connection, None
        if conn is not None:
            conn.close(timeout)


class Pyro:
    """A client of the pyro core: disposable sandboxes for running untrusted commands.

    Each instance starts one ``pyro rpc`` child process lazily (on the first call) and talks
    JSON-RPC to it over a pipe. Instances are thread-safe: several threads may call at once
    and their calls run concurrently in the child. Results are the core's JSON objects as
    ``dict``; errors are :mod:`pyro_mcp.errors` exceptions chosen by the error's kind
    (``PyroInputError``/``PyroNotFoundError`` are also ``ValueError``; the others
    ``RuntimeError``).

    Use it as a context manager, or call :meth:`close`: the child then deletes the one-shot
    VMs it created (``create_vm`` …) and exits. Workspaces persist in the state directory
    across processes.

    Args:
        binary: the ``pyro`` binary; default ``$PYRO_BIN``, then ``pyro`` on ``PATH``, then a
            repository checkout's ``target/release/pyro`` or ``target/debug/pyro``.
        state_dir: the state directory (workspaces, VM directories); default
            ``$PYRO_STATE_DIR`` or the user's data directory.
        backend: the VMM: ``"auto"``, ``"firecracker"`` or ``"qemu"``; default
            ``$PYRO_BACKEND`` or ``"auto"``.
        timeout: seconds to wait for any one call's answer (``None``: no limit). When it
            passes, :class:`~pyro_mcp.errors.PyroTimeoutError` is raised; the call may still
            complete in the child.
        cache_dir: the environment cache; default ``$PYRO_CACHE_DIR`` or the user's cache.
        env: extra environment variables for the child (e.g. ``PYRO_AGENT_BIN``).
        on_progress: called with each progress line of a long call (environment builds,
            boots), from a background thread.
        pool_size: keep this many one-shot sandboxes started and paused in the child
            (0 to 16; default 0, none), so that :meth:`run_in_vm` calls of the pool's shape
            (``pool_environment``, 1 vCPU, ``pool_mem_mib``) are served at once; their
            ``boot_mode`` is ``"pooled"``.
        pool_environment: the pooled sandboxes' environment (default ``"debian:12"``).
        pool_mem_mib: their memory in MiB (default 1024, ``run_in_vm``'s default).
    """

    def __init__(
        self,
        binary: Optional[PathLike] = None,
        state_dir: Optional[PathLike] = None,
        backend: Optional[str] = None,
        timeout: Optional[float] = None,
        *,
        cache_dir: Optional[PathLike] = None,
        env: Optional[Mapping[str, str]] = None,
        on_progress: Optional[ProgressCallback] = None,
        pool_size: int = 0,
        pool_environment: str = "debian:12",
        pool_mem_mib: int = 1024,
    ) -> None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or not 0 <= pool_size <= 16:
            raise PyroInputError(
                f"pool_size must be an integer from 0 to 16, not {pool_size!r}",
                data={"kind": "invalid_input", "field": "pool_size"},
            )
        self._pool_args: List[str] = []
        if pool_size:
            self._pool_args = [
                "--pool-size",
                str(pool_size),
                "--pool-environment",
                str(pool_environment),
                "--pool-mem-mib",
                str(int(pool_mem_mib)),
            ]
        self._binary_arg = None if binary is None else os.fspath(binary)
        self._state_dir = _path(state_dir)
        self._cache_dir = _path(cache_dir)
        self._backend = backend
        self.timeout = timeout
        self._env = dict(env) if env else None
        self._on_progress = on_progress
        self._holder = _Holder()
        self._finalizer = weakref.finalize(self, self._holder.close)

    def __repr__(self) -> str:
        conn = self._holder.connection
        state = "closed" if self._holder.closed else (f"pid={conn.pid}" if conn else "idle")
        return f"<pyro_mcp.Pyro {state}>"

    def __enter__(self) -> "Pyro":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    @property
    def binary(self) -> str:
        """The ``pyro`` binary this instance runs."""
        return find_binary(self._binary_arg)

    def close(self, timeout: float = 30.0) -> None:
        """Stops the child: it finishes the calls in flight (up to ``timeout`` seconds),
        deletes its one-shot VMs and exits. Idempotent; later calls raise
        :class:`~pyro_mcp.errors.PyroProtocolError`."""
        self._holder.close(timeout)

    def _connection(self) -> Connection:
        h = self._holder
        with h.lock:
            if h.closed:
                raise PyroProtocolError("this Pyro instance is closed")
            if h.connection is None or not h.connection.alive:
                argv = [find_binary(self._binary_arg), "rpc"]
                if self._backend is not None:
                    argv += ["--backend", self._backend]
                argv += self._pool_args
                env = child_env(self._state_dir, self._cache_dir, self._env)
                h.connection = Connection(argv, env, self._on_progress)
            return h.connection

    def _call(self, method: str, **params: Any) -> Any:
        """One JSON-RPC call; ``None`` values are left out (the server's defaults apply)."""
        sent = {k: v for k, v in params.items() if v is not None}
        return self._connection().call(method, sent, self.timeout)

    def ping(self) -> Result:
        """Checks the child answers; returns ``{pong, version, methods}``."""
        return self._call("ping")

    # ------------------------------------------------------------------ environments

    def list_environments(self) -> Result:
        """The environment catalog with install state: ``{catalog_version, environments}``."""
        return self._call("list_environments")

    def pull_environment(self, environment: str) -> Result:
        """Builds (or finds) an environment in the local cache; returns its details."""
        return self._call("pull_environment", environment=environment)

    def inspect_environment(self, environment: str) -> Result:
        """Details of one environment (nothing is built)."""
        return self._call("inspect_environment", environment=environment)

    def prune_environments(self) -> Result:
        """Deletes stale cache entries: ``{deleted_environment_dirs, count, freed_bytes}``."""
        return self._call("prune_environments")

    # ------------------------------------------------------------------ one-shot VMs

    def run_in_vm(
        self,
        *,
        environment: str,
        command: Command,
        vcpu_count: int = 1,
        mem_mib: int = 1024,
        timeout_seconds: int = 30,
        ttl_seconds: int = 600,
        network: bool = False,
        allow_hosts: Optional[Sequence[str]] = None,
        allow_cidrs: Optional[Sequence[str]] = None,
        allow_host_compat: bool = False,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        max_output_bytes: Optional[int] = None,
        stdin: Optional[str] = None,
        backend: Optional[str] = None,
    ) -> Result:
        """Creates a sandbox, runs one command in it and deletes it, whatever happens.

        Args:
            environment: ``debian:12``, ``debian:12-base`` or ``debian:12-build``.
            command: a shell string (``/bin/sh -c``) or an argv list.
            vcpu_count: 1-8 (default 1). mem_mib: 256-32768 (default 1024).
            timeout_seconds: the command's time limit (default 30; exit code 124 on expiry).
            ttl_seconds: the sandbox's lifetime, 60-3600 (default 600).
            network: egress to public addresses only (private ranges, the host and
                metadata endpoints stay blocked); needs CAP_NET_ADMIN, ``ip`` and ``nft``.
            allow_hosts, allow_cidrs: with ``network``, only these names
                (``api.example.org``, ``*.example.org``) and IPv4 ranges.
            allow_host_compat: not available (refused when true).
            cwd, env, max_output_bytes, stdin: working directory, extra environment,
                bytes kept per output stream, text fed to the command's stdin.
            backend: per-call VMM choice.

        Returns:
            The exec result: ``stdout``, ``stderr``, ``exit_code``, ``duration_ms``,
            ``timed_out``, ``cleanup`` …
        """
        return self._call(
            "run_in_vm",
            environment=environment,
            command=_command(command),
            vcpu_count=vcpu_count,
            mem_mib=mem_mib,
            timeout_seconds=timeout_seconds,
            ttl_seconds=ttl_seconds,
            network=network,
            allow_hosts=_list(allow_hosts),
            allow_cidrs=_list(allow_cidrs),
            allow_host_compat=allow_host_compat,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            max_output_bytes=max_output_bytes,
            stdin=stdin,
            backend=backend,
        )

    def create_vm(
        self,
        *,
        environment: str,
        vcpu_count: int = 1,
        mem_mib: int = 1024,
        ttl_seconds: int = 600,
        network: bool = False,
        allow_hosts: Optional[Sequence[str]] = None,
        allow_cidrs: Optional[Sequence[str]] = None,
        allow_host_compat: bool = False,
        backend: Optional[str] = None,
    ) -> Result:
        """Creates a VM (state ``created``; nothing boots yet). It belongs to this
        instance's child and is deleted by :meth:`close` at the latest."""
        return self._call(
            "create_vm",
            environment=environment,
            vcpu_count=vcpu_count,
            mem_mib=mem_mib,
            ttl_seconds=ttl_seconds,
            network=network,
            allow_hosts=_list(allow_hosts),
            allow_cidrs=_list(allow_cidrs),
            allow_host_compat=allow_host_compat,
            backend=backend,
        )

    def start_vm(self, vm_id: str) -> Result:
        """Boots a created VM and waits for its guest agent."""
        return self._call("start_vm", vm_id=vm_id)

    def exec_vm(
        self,
        vm_id: str,
        *,
        command: Command,
        timeout_seconds: int = 30,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        max_output_bytes: Optional[int] = None,
        stdin: Optional[str] = None,
    ) -> Result:
        """Runs one command in a started VM, then deletes the VM (also on failure)."""
        return self._call(
            "exec_vm",
            vm_id=vm_id,
            command=_command(command),
            timeout_seconds=timeout_seconds,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            max_output_bytes=max_output_bytes,
            stdin=stdin,
        )

    def stop_vm(self, vm_id: str) -> Result:
        """Powers a VM off (its disk is kept until :meth:`delete_vm`)."""
        return self._call("stop_vm", vm_id=vm_id)

    def delete_vm(self, vm_id: str) -> Result:
        """Deletes a VM in any state: ``{vm_id, deleted, reason}``."""
        return self._call("delete_vm", vm_id=vm_id)

    def status_vm(self, vm_id: str) -> Result:
        """A VM's state and details."""
        return self._call("status_vm", vm_id=vm_id)

    def network_info_vm(self, vm_id: str) -> Result:
        """A VM's network description."""
        return self._call("network_info_vm", vm_id=vm_id)

    def reap_expired(self) -> Result:
        """Deletes this instance's VMs whose TTL ran out: ``{deleted_vm_ids, count}``."""
        return self._call("reap_expired")

    # ------------------------------------------------------------------ workspaces

    def create_workspace(
        self,
        *,
        environment: str,
        vcpu_count: int = 1,
        mem_mib: int = 1024,
        ttl_seconds: int = 3600,
        network_policy: str = "off",
        allow_hosts: Optional[Sequence[str]] = None,
        allow_cidrs: Optional[Sequence[str]] = None,
        secrets: Optional[Sequence[Mapping[str, Any]]] = None,
        allow_host_compat: bool = False,
        seed_path: Optional[PathLike] = None,
        name: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        backend: Optional[str] = None,
    ) -> Result:
        """Creates and starts a persistent workspace.

        Args:
            environment: catalog name.
            vcpu_count, mem_mib: resources (defaults 1 and 1024).
            ttl_seconds: running-time budget in seconds, counted only while started.
            network_policy: ``"off"`` (no network device), ``"egress"`` (public
                addresses only) or ``"egress+published-ports"``.
            allow_hosts, allow_cidrs: with a networked policy, only these names
                (``api.example.org``, ``*.example.org``) and IPv4 ranges.
            secrets: ``[{"name": ..., "value": ...} | {"name": ..., "file_path": ...}]``,
                kept on the host; commands get them with ``secret_env``. With
                ``"hosts": ["api.example.org", ...]`` a secret is a credential: the guest
                sees only a placeholder, which the egress proxy replaces with the value in
                request headers to those hosts (needs a network policy).
            allow_host_compat: not available (refused when true).
            seed_path: a host directory or ``.tar``/``.tar.gz``/``.tgz``/``.tar.zst``
                archive that becomes ``/workspace`` and the diff/reset baseline.
            name, labels: discovery metadata.
            backend: per-call VMM choice.
        """
        return self._call(
            "create_workspace",
            environment=environment,
            vcpu_count=vcpu_count,
            mem_mib=mem_mib,
            ttl_seconds=ttl_seconds,
            network_policy=network_policy,
            allow_hosts=_list(allow_hosts),
            allow_cidrs=_list(allow_cidrs),
            secrets=_secrets(secrets),
            allow_host_compat=allow_host_compat,
            seed_path=_path(seed_path),
            name=name,
            labels=dict(labels) if labels is not None else None,
            backend=backend,
        )

    def list_workspaces(self) -> Result:
        """All workspaces, most recently active first: ``{count, workspaces}``."""
        return self._call("list_workspaces")

    def update_workspace(
        self,
        workspace_id: str,
        *,
        name: Optional[str] = None,
        clear_name: bool = False,
        labels: Optional[Mapping[str, str]] = None,
        clear_labels: Optional[Sequence[str]] = None,
        ttl_seconds: Optional[int] = None,
    ) -> Result:
        """Changes a workspace's name, labels (upsert / remove) or running-time budget."""
        return self._call(
            "update_workspace",
            workspace_id=workspace_id,
            name=name,
            clear_name=clear_name,
            labels=dict(labels) if labels is not None else None,
            clear_labels=list(clear_labels) if clear_labels is not None else None,
            ttl_seconds=ttl_seconds,
        )

    def status_workspace(self, workspace_id: str) -> Result:
        """A workspace's full state."""
        return self._call("status_workspace", workspace_id=workspace_id)

    def stop_workspace(self, workspace_id: str) -> Result:
        """Powers the workspace's VM off; its data is kept and its TTL pauses."""
        return self._call("stop_workspace", workspace_id=workspace_id)

    def start_workspace(self, workspace_id: str) -> Result:
        """Boots a stopped workspace."""
        return self._call("start_workspace", workspace_id=workspace_id)

    def exec_workspace(
        self,
        workspace_id: str,
        *,
        command: Command,
        timeout_seconds: int = 30,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        max_output_bytes: Optional[int] = None,
        stdin: Optional[str] = None,
        secret_env: Optional[Mapping[str, str]] = None,
    ) -> Result:
        """Runs one command in the workspace (cwd ``/workspace``) and records it in the
        workspace's history. ``secret_env`` maps workspace secrets to environment variables
        of this command only (``""`` keeps the secret's name); their values are redacted from
        the output."""
        return self._call(
            "exec_workspace",
            workspace_id=workspace_id,
            command=_command(command),
            timeout_seconds=timeout_seconds,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            max_output_bytes=max_output_bytes,
            stdin=stdin,
            secret_env=dict(secret_env) if secret_env is not None else None,
        )

    def push_workspace_sync(
        self, workspace_id: str, source_path: PathLike, *, dest: str = "/workspace"
    ) -> Result:
        """Imports a host directory or archive into the running workspace (merge; default
        destination ``/workspace``)."""
        return self._call(
            "push_workspace_sync",
            workspace_id=workspace_id,
            source_path=_path(source_path),
            dest=dest,
        )

    def logs_workspace(
        self,
        workspace_id: str,
        *,
        offset: int = 0,
        limit: int = 20,
        max_bytes: int = 65536,
        output_offset: int = 0,
    ) -> Result:
        """The command history with outputs (default: the first 20 entries, 64 KiB of each
        stream, from ``output_offset`` bytes into each stream)."""
        return self._call(
            "logs_workspace",
            workspace_id=workspace_id,
            offset=offset,
            limit=limit,
            max_bytes=max_bytes,
            output_offset=output_offset,
        )

    def export_workspace(self, workspace_id: str, path: str, *, output_path: PathLike) -> Result:
        """Copies a file or directory from ``/workspace`` to a new host path."""
        return self._call(
            "export_workspace",
            workspace_id=workspace_id,
            path=path,
            output_path=_path(output_path),
        )

    def summarize_workspace(self, workspace_id: str) -> Result:
        """What happened since the last reset, bounded: the newest commands with exit codes,
        file writes, patches, syncs, exports, shells and services, and (while started) the
        current changes against the baseline."""
        return self._call("summarize_workspace", workspace_id=workspace_id)

    def diff_workspace(self, workspace_id: str) -> Result:
        """Changes against the create-time baseline, with a git-applicable ``patch``."""
        return self._call("diff_workspace", workspace_id=workspace_id)

    def list_workspace_files(
        self, workspace_id: str, *, path: str = "/workspace", recursive: bool = False
    ) -> Result:
        """Lists a path inside ``/workspace`` (default ``/workspace`` itself)."""
        return self._call(
            "list_workspace_files", workspace_id=workspace_id, path=path, recursive=recursive
        )

    def read_workspace_file(
        self, workspace_id: str, path: str, *, max_bytes: int = 65536, offset: int = 0
    ) -> Result:
        """Reads a text file from byte ``offset`` (default at most 65536 bytes; the next page
        starts at ``offset`` plus the bytes returned)."""
        return self._call(
            "read_workspace_file",
            workspace_id=workspace_id,
            path=path,
            offset=offset,
            max_bytes=max_bytes,
        )

    def write_workspace_file(self, workspace_id: str, path: str, *, text: str) -> Result:
        """Writes a whole text file atomically (an existing file keeps its mode)."""
        return self._call("write_workspace_file", workspace_id=workspace_id, path=path, text=text)

    def list_workspace_disk(
        self, workspace_id: str, *, path: str = "/workspace", recursive: bool = False
    ) -> Result:
        """Lists a stopped workspace's disk without booting it, as the guest sees it
        (relative paths in ``/workspace``, absolute ones anywhere)."""
        return self._call(
            "list_workspace_disk", workspace_id=workspace_id, path=path, recursive=recursive
        )

    def read_workspace_disk(
        self, workspace_id: str, path: str, *, max_bytes: int = 65536
    ) -> Result:
        """Reads a regular file of a stopped workspace without booting it (secrets redacted)."""
        return self._call(
            "read_workspace_disk", workspace_id=workspace_id, path=path, max_bytes=max_bytes
        )

    def export_workspace_disk(self, workspace_id: str, *, output_path: PathLike) -> Result:
        """Copies a stopped workspace's writable disk (raw ext4, sparse) to a new host path."""
        return self._call(
            "export_workspace_disk", workspace_id=workspace_id, output_path=_path(output_path)
        )

    def apply_workspace_patch(self, workspace_id: str, *, patch: str) -> Result:
        """Applies a unified diff (``git diff`` output) atomically: all files or none."""
        return self._call("apply_workspace_patch", workspace_id=workspace_id, patch=patch)

    def reset_workspace(self, workspace_id: str, *, snapshot: str = "baseline") -> Result:
        """Goes back to the create-time baseline (fresh disk, baseline tree) or to a named
        snapshot (its disk, and its running machine when it was taken while started:
        processes, shells and services come back). The history is emptied either way."""
        return self._call("reset_workspace", workspace_id=workspace_id, snapshot=snapshot)

    # --------------------------------------------------------------- snapshots

    def create_snapshot(self, workspace_id: str, snapshot_name: str) -> Result:
        """Takes a named snapshot: the whole machine of a started workspace (disk, memory,
        processes; ``snapshot.pause_ms`` says how long the guest stood still), the disk of a
        stopped one (``snapshot.has_memory`` false)."""
        return self._call(
            "create_snapshot", workspace_id=workspace_id, snapshot_name=snapshot_name
        )

    def list_snapshots(self, workspace_id: str) -> Result:
        """The baseline, then named snapshots newest first, with ``size_bytes`` on disk."""
        return self._call("list_snapshots", workspace_id=workspace_id)

    def delete_snapshot(self, workspace_id: str, snapshot_name: str) -> Result:
        """Deletes a named snapshot: ``{workspace_id, snapshot_name, deleted}``."""
        return self._call(
            "delete_snapshot", workspace_id=workspace_id, snapshot_name=snapshot_name
        )

    def fork_workspace(
        self,
        workspace_id: str,
        *,
        snapshot: Optional[str] = None,
        name: Optional[str] = None,
        count: int = 1,
        with_secrets: bool = False,
    ) -> Result:
        """Makes ``count`` new workspaces from a named snapshot, or from the workspace as it
        is now. Each has its own disk, memory, identity and network; secrets only with
        ``with_secrets``. Returns ``{workspaces: [WorkspaceInfo], ...}``."""
        return self._call(
            "fork_workspace",
            workspace_id=workspace_id,
            snapshot=snapshot,
            name=name,
            count=count,
            with_secrets=with_secrets,
        )

    def delete_workspace(self, workspace_id: str) -> Result:
        """Deletes the workspace and all its data: ``{workspace_id, deleted, reason}``."""
        return self._call("delete_workspace", workspace_id=workspace_id)

    # ------------------------------------------------------------------ shells

    def open_shell(
        self,
        workspace_id: str,
        *,
        cwd: str = "/workspace",
        cols: int = 120,
        rows: int = 30,
        secret_env: Optional[Mapping[str, str]] = None,
    ) -> Result:
        """Opens an interactive PTY shell (bash) that lives until :meth:`close_shell` or the
        workspace stops; returns its ``shell_id``. ``cwd`` must exist."""
        return self._call(
            "open_shell",
            workspace_id=workspace_id,
            cwd=cwd,
            cols=cols,
            rows=rows,
            secret_env=dict(secret_env) if secret_env is not None else None,
        )

    def read_shell(
        self,
        workspace_id: str,
        shell_id: str,
        *,
        cursor: int = 0,
        max_chars: int = 65536,
        plain: bool = False,
        wait_for_idle_ms: Optional[int] = None,
    ) -> Result:
        """Reads a shell's output from ``cursor``; pass ``next_cursor`` to the next read
        (nothing is skipped). ``plain`` renders the terminal as text; ``wait_for_idle_ms``
        waits until the shell has been quiet that long."""
        return self._call(
            "read_shell",
            workspace_id=workspace_id,
            shell_id=shell_id,
            cursor=cursor,
            max_chars=max_chars,
            plain=plain,
            wait_for_idle_ms=wait_for_idle_ms,
        )

    def write_shell(
        self, workspace_id: str, shell_id: str, *, input: str, append_newline: bool = True
    ) -> Result:
        """Types ``input`` into the shell (and Enter unless ``append_newline=False``)."""
        return self._call(
            "write_shell",
            workspace_id=workspace_id,
            shell_id=shell_id,
            input=input,
            append_newline=append_newline,
        )

    def signal_shell(self, workspace_id: str, shell_id: str, *, signal_name: str = "INT") -> Result:
        """Sends HUP, INT, TERM or KILL to the shell's process group."""
        return self._call(
            "signal_shell", workspace_id=workspace_id, shell_id=shell_id, signal_name=signal_name
        )

    def resize_shell(self, workspace_id: str, shell_id: str, *, cols: int, rows: int) -> Result:
        """Changes the shell's terminal size."""
        return self._call(
            "resize_shell", workspace_id=workspace_id, shell_id=shell_id, cols=cols, rows=rows
        )

    def close_shell(self, workspace_id: str, shell_id: str) -> Result:
        """Ends the shell (HUP, then KILL after 5 s)."""
        return self._call("close_shell", workspace_id=workspace_id, shell_id=shell_id)

    def list_shells(self, workspace_id: str) -> Result:
        """The workspace's open shells."""
        return self._call("list_shells", workspace_id=workspace_id)

    # ------------------------------------------------------------------ services

    def start_service(
        self,
        workspace_id: str,
        service_name: str,
        *,
        command: str,
        cwd: str = "/workspace",
        readiness: Optional[Mapping[str, Any]] = None,
        ready_file: Optional[str] = None,
        ready_tcp: Optional[str] = None,
        ready_http: Optional[str] = None,
        ready_command: Optional[str] = None,
        ready_timeout_seconds: int = 30,
        ready_interval_ms: int = 500,
        secret_env: Optional[Mapping[str, str]] = None,
        published_ports: Optional[Sequence[Mapping[str, Any]]] = None,
    ) -> Result:
        """Starts a named background process and waits until it is ready. ``readiness`` is
        ``{"type": "file", "path": …}``, ``{"type": "tcp", "address": "HOST:PORT"}``,
        ``{"type": "http", "url": …}`` or ``{"type": "command", "command": …}``; or one of
        ``ready_file``, ``ready_tcp`` (``HOST:PORT``), ``ready_http``, ``ready_command`` (as
        the MCP tool takes them; more than one probe is refused).
        ``published_ports`` is a list of ``{"guest_port": N, "host_port": M or None}``
        (policy ``egress+published-ports``). A service that exits first or is not ready in
        time raises :class:`~pyro_mcp.errors.PyroRuntimeError` whose ``data["service"]`` is
        its record."""
        return self._call(
            "start_service",
            workspace_id=workspace_id,
            service_name=service_name,
            command=command,
            cwd=cwd,
            readiness=dict(readiness) if readiness is not None else None,
            ready_file=ready_file,
            ready_tcp=ready_tcp,
            ready_http=ready_http,
            ready_command=ready_command,
            ready_timeout_seconds=ready_timeout_seconds,
            ready_interval_ms=ready_interval_ms,
            secret_env=dict(secret_env) if secret_env is not None else None,
            published_ports=[dict(p) for p in published_ports] if published_ports is not None else None,
        )

    def list_services(self, workspace_id: str) -> Result:
        """``{workspace_id, count, running_count, services}``."""
        return self._call("list_services", workspace_id=workspace_id)

    def status_service(self, workspace_id: str, service_name: str) -> Result:
        """One service's record."""
        return self._call("status_service", workspace_id=workspace_id, service_name=service_name)

    def logs_service(
        self, workspace_id: str, service_name: str, *, tail_lines: int = 200, all: bool = False
    ) -> Result:
        """The service's ``stdout`` and ``stderr``: the last ``tail_lines`` lines of each, or
        everything retained with ``all=True``."""
        return self._call(
            "logs_service",
            workspace_id=workspace_id,
            service_name=service_name,
            tail_lines=tail_lines,
            all=all,
        )

    def stop_service(self, workspace_id: str, service_name: str) -> Result:
        """Stops the service (TERM, then KILL after 5 s) and releases its ports."""
        return self._call("stop_service", workspace_id=workspace_id, service_name=service_name)
