"""A persistent workspace session: seed, exec, edit, diff, export, reset, delete.

    python3 examples/python_workspace.py

The workspace starts from a host directory (its baseline), keeps state across calls, and
persists across processes until deleted.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

try:
    from pyro_mcp import Pyro
except ImportError:  # run from a checkout without `pip install ./python`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    from pyro_mcp import Pyro


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="pyro-example-") as tmp, Pyro() as pyro:
        seed = Path(tmp) / "seed"
        seed.mkdir()
        (seed / "README.md").write_text("# demo project\n")
        (seed / "app.py").write_text('print("hello from the sandbox")\n')

        ws = pyro.create_workspace(
            environment="debian:12", seed_path=seed, name="example", labels={"owner": "examples"}
        )
        wid = ws["workspace_id"]
        print(
            f"workspace {wid}: state={ws['state']} seeded {ws['workspace_seed']['entry_count']} entries"
        )
        try:
            r = pyro.exec_workspace(wid, command="ls -1 /workspace && cat README.md")
            print(r["stdout"], end="")

            pyro.write_workspace_file(
                wid, "/workspace/app.py", text='print("edited in the workspace")\n'
            )
            pyro.exec_workspace(wid, command="echo built > build.txt")
            diff = pyro.diff_workspace(wid)
            s = diff["summary"]
            print(
                f"diff: changed={diff['changed']} added={s['added']} modified={s['modified']} deleted={s['deleted']}"
            )
            print(diff["patch"], end="")

            out = Path(tmp) / "app.py"
            exp = pyro.export_workspace(wid, "/workspace/app.py", output_path=out)
            print(f"exported {exp['workspace_path']} -> {exp['output_path']}: {out.read_text()!r}")

            reset = pyro.reset_workspace(wid)
            after = pyro.read_workspace_file(wid, "/workspace/app.py")
            print(
                f"reset: reset_count={reset['reset_count']} app.py is back to {after['content']!r}"
            )
        finally:
            deleted = pyro.delete_workspace(wid)
            print(f"deleted {deleted['workspace_id']}: {deleted['deleted']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
