"""The ``pyro`` command of a wheel install: runs the ``pyro`` binary bundled in the wheel.

A platform wheel built by ``scripts/build-wheel.sh`` carries ``pyro_mcp/bin/pyro`` and the
static guest agent ``pyro_mcp/bin/pyro-agent`` beside it, where ``pyro`` looks for its agent
first (after ``$PYRO_AGENT_BIN``). The ``pyro`` console script pip puts on the environment's
``bin/`` calls :func:`main`, which replaces the Python process with the binary (``execv``):
stdin, stdout, signals and the exit code are the binary's own, so ``pyro mcp serve`` and
``pyro rpc`` work over it unchanged.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from ._binary import bundled_binary


def main() -> NoReturn:
    """Executes the bundled ``pyro`` with this process's arguments; never returns."""
    binary = bundled_binary()
    if binary is None:
        sys.stderr.write(
            "pyro: this pyro-mcp install has no bundled pyro binary (it is in the platform "
            "wheel built by scripts/build-wheel.sh); set $PYRO_BIN or put pyro on PATH\n"
        )
        raise SystemExit(127)
    try:
        os.execv(binary, ["pyro", *sys.argv[1:]])
    except OSError as e:
        sys.stderr.write(f"pyro: cannot execute {binary}: {e}\n")
        raise SystemExit(126) from None


if __name__ == "__main__":  # pragma: no cover - `python -m pyro_mcp._cli`
    main()
