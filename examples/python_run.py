"""One-shot: run `git --version` in a fresh debian:12 sandbox, then print the result.

    python3 examples/python_run.py

Needs the `pyro` binary ($PYRO_BIN, the one bundled in the pip wheel, `pyro` on PATH, or a
checkout's target/*/pyro).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

try:
    from pyro_mcp import Pyro
except ImportError:  # run from a checkout without `pip install ./python`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    from pyro_mcp import Pyro


def main() -> int:
    with Pyro() as pyro:
        result = pyro.run_in_vm(
            environment="debian:12", command="git --version", timeout_seconds=30
        )
    print(result["stdout"], end="")
    summary = {
        k: result[k] for k in ("vm_id", "exit_code", "duration_ms", "execution_mode", "cleanup")
    }
    print(json.dumps(summary, indent=2))
    return 0 if result["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
