"""The low-level VM lifecycle: create, start, inspect, then one final exec.

    python3 examples/python_lifecycle.py

`exec_vm` deletes the VM after its command (the reference contract), so it comes last; use
`create_vm` + `start_vm` only when you need to look at the VM before that exec. VMs made
this way belong to the `Pyro` instance and are deleted by `close()` at the latest.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from pyro_mcp import Pyro
except ImportError:  # run from a checkout without `pip install ./python`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    from pyro_mcp import Pyro


def main() -> int:
    with Pyro() as pyro:
        vm = pyro.create_vm(environment="debian:12", vcpu_count=1, mem_mib=512, ttl_seconds=300)
        vm_id = vm["vm_id"]
        print(f"created  vm_id={vm_id} state={vm['state']}")
        started = pyro.start_vm(vm_id)
        print(f"started  state={started['state']} execution_mode={started['execution_mode']}")
        status = pyro.status_vm(vm_id)
        print(f"status   state={status['state']} expires_at={status['expires_at']:.0f}")
        result = pyro.exec_vm(
            vm_id, command="uname -sm && cat /etc/debian_version", timeout_seconds=30
        )
        print(result["stdout"], end="")
        print(f"exec     exit_code={result['exit_code']} cleanup={result['cleanup']['reason']}")
    return 0 if result["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
