"""pyro's Python SDK: disposable microVM sandboxes for AI coding agents.

>>> from pyro_mcp import Pyro
>>> with Pyro() as pyro:
...     result = pyro.run_in_vm(environment="debian:12", command="git --version")
...     print(result["stdout"])

:class:`Pyro` drives the ``pyro`` binary (``pyro rpc``, JSON-RPC over a pipe); all the work,
validation included, happens there. Errors are the classes in :mod:`pyro_mcp.errors`.
"""

from .client import Pyro
from .errors import (
    PyroError,
    PyroInputError,
    PyroNotFoundError,
    PyroProtocolError,
    PyroRuntimeError,
    PyroStateError,
    PyroTimeoutError,
    PyroUnavailableError,
)

__version__ = "0.1.0"

__all__ = [
    "Pyro",
    "PyroError",
    "PyroInputError",
    "PyroNotFoundError",
    "PyroStateError",
    "PyroUnavailableError",
    "PyroRuntimeError",
    "PyroProtocolError",
    "PyroTimeoutError",
    "__version__",
]
