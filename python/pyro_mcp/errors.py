"""Exceptions raised by :class:`pyro_mcp.Pyro`.

Every error the core reports carries a *kind* (``invalid_input``, ``not_found``, ``state``,
``unavailable`` or ``runtime``); the SDK raises one exception class per kind. The input and
not-found classes also derive from :class:`ValueError` and the others from
:class:`RuntimeError`, so code written against the reference SDK's ``ValueError`` /
``RuntimeError`` contract keeps working.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Type

__all__ = [
    "PyroError",
    "PyroInputError",
    "PyroNotFoundError",
    "PyroStateError",
    "PyroUnavailableError",
    "PyroRuntimeError",
    "PyroProtocolError",
    "PyroTimeoutError",
]


class PyroError(Exception):
    """Base class of every pyro error.

    Attributes:
        kind: the error's class as the core names it (``invalid_input``, ``not_found``,
            ``state``, ``unavailable``, ``runtime``), or ``protocol`` / ``timeout`` for
            failures of the SDK's own transport.
        data: the JSON-RPC error's ``data`` object (always has ``kind``), plus ``code``.
    """

    kind: str = "runtime"

    def __init__(self, message: str, *, data: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(message)
        self.message = message
        self.data: Dict[str, Any] = dict(data or {})
        self.kind = str(self.data.get("kind", type(self).kind))
        self.data.setdefault("kind", self.kind)


class PyroInputError(PyroError, ValueError):
    """A parameter was invalid (bad value, unknown environment, unknown or ill-typed
    keyword); nothing was changed."""

    kind = "invalid_input"


class PyroNotFoundError(PyroError, ValueError):
    """A VM or workspace with that id does not exist."""

    kind = "not_found"


class PyroStateError(PyroError, RuntimeError):
    """The object is in the wrong state for the operation (e.g. a stopped workspace),
    expired, or a capacity limit was reached."""

    kind = "state"


class PyroUnavailableError(PyroError, RuntimeError):
    """The host cannot do this: missing KVM, VMM, tools or the guest agent binary."""

    kind = "unavailable"


class PyroRuntimeError(PyroError, RuntimeError):
    """Something failed while doing the work (boot, guest agent, host filesystem)."""

    kind = "runtime"


class PyroProtocolError(PyroError, RuntimeError):
    """The ``pyro rpc`` child could not be started, died, or spoke something unexpected."""

    kind = "protocol"


class PyroTimeoutError(PyroError, TimeoutError):
    """No answer arrived within the ``timeout`` given to :class:`pyro_mcp.Pyro`.

    The call may still complete in the background; its late answer is discarded.
    """

    kind = "timeout"


_BY_KIND: Dict[str, Type[PyroError]] = {
    "invalid_input": PyroInputError,
    "not_found": PyroNotFoundError,
    "state": PyroStateError,
    "unavailable": PyroUnavailableError,
    "runtime": PyroRuntimeError,
}

#: JSON-RPC's "invalid params": an unknown, missing or ill-typed keyword.
INVALID_PARAMS = -32602
#: An error reported by the core; ``data.kind`` tells which.
APPLICATION_ERROR = -32000


def from_rpc_error(error: Mapping[str, Any]) -> PyroError:
    """Builds the exception for one JSON-RPC ``error`` object."""
    code = error.get("code")
    message = str(error.get("message", "unknown error"))
    raw = error.get("data")
    data: Dict[str, Any] = dict(raw) if isinstance(raw, Mapping) else {}
    data["code"] = code
    if code == INVALID_PARAMS:
        data.setdefault("kind", "invalid_input")
        return PyroInputError(message, data=data)
    cls = _BY_KIND.get(str(data.get("kind"))) if code == APPLICATION_ERROR else None
    if cls is None:
        data.setdefault("kind", "protocol")
        return PyroProtocolError(message, data=data)
    return cls(message, data=data)
