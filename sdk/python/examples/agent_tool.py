"""A code-execution tool for an AI agent: every call runs the model's code in a fresh sandbox
(its own kernel: nothing it does reaches the host or another call), with a time limit, and
returns what a model needs to read — exit code, output, whether it timed out.

Run it as is (no model needed): it plays the part of a model with a few snippets, one of them
hostile.

    COVE_HOST=http://127.0.0.1:7070 COVE_API_KEY=cove_… python examples/agent_tool.py
"""

from __future__ import annotations

import json
from typing import Any, TypedDict

from cove import NetworkPolicy, Sandbox

#: What to give a function-calling model (the OpenAI / Anthropic tool shape).
TOOL = {
    "name": "run_python",
    "description": "Run Python 3 code in a fresh, isolated sandbox and return its output.",
    "input_schema": {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "A whole Python program."}},
        "required": ["code"],
    },
}


class ToolResult(TypedDict):
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool


def run_python(code: str, *, timeout: float = 20, max_output: int = 10_000) -> ToolResult:
    """The tool: ``code`` runs as ``/root/main.py`` in a new sandbox with no network, which is
    removed afterwards whatever happened."""
    with Sandbox.create(image="python", ttl=120, network=NetworkPolicy(mode="none")) as sbx:
        sbx.files.write("/root/main.py", code)
        r = sbx.commands.run(["python3", "/root/main.py"], cwd="/root", timeout=timeout)
        return {
            "exit_code": r.exit_code,
            "stdout": r.stdout[-max_output:],
            "stderr": r.stderr[-max_output:],
            "timed_out": r.timed_out,
        }


def handle_tool_call(call: dict[str, Any]) -> str:
    """What an agent loop does with a model's tool call: run it, hand back JSON."""
    if call.get("name") != TOOL["name"]:
        return json.dumps({"error": f"unknown tool {call.get('name')!r}"})
    return json.dumps(run_python(str(call["input"]["code"])))


if __name__ == "__main__":
    # What a model might send: ordinary code, a crash, a loop that never ends, and an attempt
    # to reach out — each contained in its own sandbox.
    snippets = [
        "import math\nprint(sum(math.factorial(i) for i in range(10)))",
        "raise ValueError('the model got it wrong')",
        "while True:\n    pass",
        "import socket\nsocket.create_connection(('10.0.0.1', 80), timeout=3)",
    ]
    for code in snippets:
        result = json.loads(handle_tool_call({"name": "run_python", "input": {"code": code}}))
        print(json.dumps(result)[:300])
