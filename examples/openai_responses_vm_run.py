"""A tool-calling loop with the OpenAI Responses API and one function tool, `vm_run`.

    OPENAI_API_KEY=... python3 examples/openai_responses_vm_run.py ["your task"]

The model asks for `vm_run` calls; each runs in a fresh, disposable pyro sandbox
(`Pyro.run_in_vm`) and its result goes back as a `function_call_output`, until the model
answers with a message. Only the standard library is used (`urllib`), so the same loop works
against any Responses-compatible endpoint: set `OPENAI_BASE_URL` (default
https://api.openai.com/v1) and `OPENAI_MODEL` (default gpt-4.1-mini). Without
`OPENAI_API_KEY` the example says so and exits 0 without calling anything.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

try:
    from pyro_mcp import Pyro, PyroError
except ImportError:  # run from a checkout without `pip install ./python`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    from pyro_mcp import Pyro, PyroError

DEFAULT_TASK = "Which version of git is installed in the debian:12 sandbox? Use vm_run to check."
MAX_ROUNDS = 8

#: The one tool: the model-facing contract is small (one command, one ephemeral VM).
VM_RUN_TOOL: Dict[str, Any] = {
    "type": "function",
    "name": "vm_run",
    "description": (
        "Run one shell command in a fresh, disposable Linux sandbox (a microVM with no "
        "network) and return its exit code, stdout and stderr. The sandbox is deleted "
        "afterwards; nothing persists between calls."
    ),
    "parameters": {
        "type": "object",
        "properties": {
            "environment": {
                "type": "string",
                "enum": ["debian:12", "debian:12-base", "debian:12-build"],
                "description": "debian:12 has git; debian:12-build adds gcc, make, cmake, python3.",
            },
            "command": {"type": "string", "description": "Run by /bin/sh -c."},
            "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 600},
        },
        "required": ["environment", "command", "timeout_seconds"],
        "additionalProperties": False,
    },
    "strict": True,
}


def create_response(base_url: str, api_key: str, body: Dict[str, Any]) -> Dict[str, Any]:
    """POST {base_url}/responses and return the decoded JSON."""
    req = urllib.request.Request(
        base_url.rstrip("/") + "/responses",
        data=json.dumps(body).encode("utf-8"),
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        raise SystemExit(
            f"[error] the Responses API answered {e.code}: {e.read().decode('utf-8', 'replace')}"
        )


def call_vm_run(pyro: Pyro, arguments: str) -> str:
    """Runs one `vm_run` call; errors go back to the model as the tool's output."""
    try:
        args = json.loads(arguments or "{}")
        result = pyro.run_in_vm(
            environment=args.get("environment", "debian:12"),
            command=args["command"],
            timeout_seconds=int(args.get("timeout_seconds", 30)),
        )
    except (PyroError, KeyError, ValueError, TypeError) as e:
        return json.dumps({"error": str(e)})
    keep = ("exit_code", "stdout", "stderr", "timed_out", "duration_ms")
    return json.dumps({k: result[k] for k in keep})


def output_text(response: Dict[str, Any]) -> str:
    """The text of the response's assistant messages."""
    parts: List[str] = []
    for item in response.get("output", []):
        if item.get("type") == "message":
            for c in item.get("content", []):
                if c.get("type") == "output_text":
                    parts.append(c.get("text", ""))
    return "".join(parts)


def run(task: str, pyro: Pyro, base_url: str, api_key: str, model: str) -> str:
    """The loop: ask, run every requested tool call, answer, until a message comes back."""
    conversation: List[Dict[str, Any]] = [{"role": "user", "content": task}]
    for _ in range(MAX_ROUNDS):
        response = create_response(
            base_url, api_key, {"model": model, "input": conversation, "tools": [VM_RUN_TOOL]}
        )
        calls = [i for i in response.get("output", []) if i.get("type") == "function_call"]
        if not calls:
            return output_text(response)
        # Keep the model's own items (reasoning, function calls) in the conversation.
        conversation.extend(response.get("output", []))
        for call in calls:
            if call.get("name") == "vm_run":
                output = call_vm_run(pyro, call.get("arguments", "{}"))
            else:
                output = json.dumps({"error": f"unknown tool {call.get('name')!r}"})
            print(f"[tool] vm_run {call.get('arguments')} -> {output}")
            conversation.append(
                {"type": "function_call_output", "call_id": call["call_id"], "output": output}
            )
    raise SystemExit(f"[error] no final answer after {MAX_ROUNDS} rounds")


def main() -> int:
    api_key = os.environ.get("OPENAI_API_KEY")
    if not api_key:
        print(
            "[skip] OPENAI_API_KEY is not set; set it (and optionally OPENAI_BASE_URL, OPENAI_MODEL) to run this loop"
        )
        return 0
    base_url = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
    model = os.environ.get("OPENAI_MODEL", "gpt-4.1-mini")
    task = " ".join(sys.argv[1:]) or DEFAULT_TASK
    with Pyro() as pyro:
        answer = run(task, pyro, base_url, api_key, model)
    print(f"[answer] {answer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
