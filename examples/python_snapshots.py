"""Snapshots with memory and fork: save a running workspace, break it, go back, try in copies.

    python3 examples/python_snapshots.py

A snapshot of a running workspace holds its disk and its memory: after a reset to it, a
service that was running answers again, without being restarted. A fork copies a snapshot
into new workspaces that go their own ways.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from pyro_mcp import Pyro
except ImportError:  # run from a checkout without `pip install ./python`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    from pyro_mcp import Pyro

FETCH = (
    "python3 -c 'import urllib.request;"
    'print(urllib.request.urlopen("http://127.0.0.1:8000/state.txt").read().decode().strip())\''
)


def main() -> int:
    with Pyro() as pyro:
        wid = pyro.create_workspace(environment="debian:12", name="snap-example")["workspace_id"]
        made = [wid]
        try:
            pyro.exec_workspace(wid, command="echo good > state.txt")
            pyro.start_service(
                wid, "web", command="python3 -m http.server 8000", ready_tcp="127.0.0.1:8000"
            )
            snap = pyro.create_snapshot(wid, "good")["snapshot"]
            print(
                f"snapshot {snap['snapshot_name']}: memory={snap['has_memory']} "
                f"pause_ms={snap['pause_ms']} size_bytes={snap['size_bytes']}"
            )

            # Break it: other content, and the service stopped.
            pyro.exec_workspace(wid, command="echo broken > state.txt")
            pyro.stop_service(wid, "web")

            info = pyro.reset_workspace(wid, snapshot="good")
            served = pyro.exec_workspace(wid, command=FETCH)["stdout"].strip()
            print(f"after reset: boot_mode={info['metadata']['boot_mode']} served={served}")

            forks = pyro.fork_workspace(wid, snapshot="good", count=2, name="trial")
            for n, fork in enumerate(forks["workspaces"]):
                made.append(fork["workspace_id"])
                pyro.exec_workspace(fork["workspace_id"], command=f"echo trial{n} > state.txt")
            seen = [
                pyro.exec_workspace(w, command=FETCH)["stdout"].strip() for w in made
            ]
            print(f"source and forks serve: {', '.join(seen)}")
        finally:
            for w in made:
                pyro.delete_workspace(w)
        print("deleted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
