"""Finding the ``pyro`` binary."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator, List, Optional

from .errors import PyroProtocolError

#: Environment variable naming the ``pyro`` binary explicitly.
ENV_VAR = "PYRO_BIN"

#: Where a platform wheel (``scripts/build-wheel.sh``) puts ``pyro`` and its guest agent.
BUNDLED_DIR = Path(__file__).resolve().parent / "bin"


def bundled_binary() -> Optional[str]:
    """The ``pyro`` binary bundled in this package (a platform wheel install), or ``None``
    (an install from source, which carries the SDK only)."""
    p = BUNDLED_DIR / "pyro"
    return str(p) if _executable(p) else None


def _checkouts() -> Iterator[Path]:
    """Directories that may be a pyro repository checkout: the ones above the current
    directory and above this package's source (an editable install or a run from
    ``python/``)."""
    seen = set()
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for d in (start, *start.parents):
            if d in seen:
                continue
            seen.add(d)
            if (d / "Cargo.toml").is_file() and (d / "crates" / "pyro-cli").is_dir():
                yield d


def _executable(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def find_binary(explicit: Optional[str] = None) -> str:
    """Returns the path of the ``pyro`` binary to run.

    Looks at, in order: ``explicit``; ``$PYRO_BIN``; the binary bundled in this package
    (``pyro_mcp/bin/pyro``, present in a platform wheel install, with its guest agent beside
    it); ``pyro`` on ``PATH``; a repository checkout's ``target/release/pyro`` then
    ``target/debug/pyro`` (found from the current directory or this package's location).

    Raises:
        PyroProtocolError: when none is found, listing where it looked.
    """
    looked: List[str] = []
    if explicit:
        p = Path(explicit).expanduser()
        if _executable(p):
            return str(p.resolve())
        raise PyroProtocolError(f"the pyro binary {explicit!r} does not exist or is not executable")
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if _executable(p):
            return str(p.resolve())
        raise PyroProtocolError(f"${ENV_VAR}={env!r} does not exist or is not executable")
    looked.append(f"${ENV_VAR} (unset)")
    bundled = bundled_binary()
    if bundled:
        return bundled
    looked.append(str(BUNDLED_DIR / "pyro"))
    on_path = shutil.which("pyro")
    if on_path:
        return on_path
    looked.append("PATH")
    for root in _checkouts():
        for profile in ("release", "debug"):
            p = root / "target" / profile / "pyro"
            if _executable(p):
                return str(p)
            looked.append(str(p))
    raise PyroProtocolError(
        "cannot find the pyro binary (looked at: "
        + ", ".join(looked)
        + "); install the platform wheel (scripts/build-wheel.sh), build it with "
        "`cargo build --release -p pyro-cli`, or set $PYRO_BIN"
    )
