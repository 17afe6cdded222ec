"""A thin LangChain tool over `vm_run`: one command, one disposable sandbox.

    pip install langchain-core
    python3 examples/langchain_vm_run.py

`make_vm_run_tool(pyro)` returns a LangChain `@tool` that any tool-calling agent or chat
model (`model.bind_tools([vm_run])`) can use; it only maps the tool input onto
`Pyro.run_in_vm`. Without `langchain-core` installed the example says so and exits 0.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

try:
    from pyro_mcp import Pyro, PyroError
except ImportError:  # run from a checkout without `pip install ./python`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    from pyro_mcp import Pyro, PyroError


def make_vm_run_tool(pyro: Pyro) -> Any:
    """Returns the `vm_run` LangChain tool bound to `pyro`."""
    from langchain_core.tools import tool

    @tool
    def vm_run(command: str, environment: str = "debian:12", timeout_seconds: int = 30) -> str:
        """Run one shell command in a fresh, disposable Linux sandbox (a microVM with no
        network) and return its exit code, stdout and stderr as JSON. environment is one of
        debian:12 (git), debian:12-base, debian:12-build (gcc, make, cmake, python3)."""
        try:
            r = pyro.run_in_vm(
                environment=environment, command=command, timeout_seconds=timeout_seconds
            )
        except PyroError as e:
            return json.dumps({"error": str(e), "kind": e.kind})
        return json.dumps({k: r[k] for k in ("exit_code", "stdout", "stderr", "timed_out")})

    return vm_run


def main() -> int:
    if importlib.util.find_spec("langchain_core") is None:
        print(
            "[skip] langchain-core is not installed; `pip install langchain-core` to run this adapter"
        )
        return 0
    with Pyro() as pyro:
        vm_run = make_vm_run_tool(pyro)
        print(f"[tool] name={vm_run.name} args={sorted(vm_run.args)}")
        out = vm_run.invoke({"command": "git --version", "environment": "debian:12"})
    print(f"[result] {out}")
    return 0 if json.loads(out).get("exit_code") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
