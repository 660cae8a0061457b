"""The examples do what their documentation says."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

import agent_tool  # noqa: E402


def test_the_agent_tool_runs_code_contains_loops_and_has_no_network() -> None:
    ok = json.loads(agent_tool.handle_tool_call({"name": "run_python", "input": {"code": "print(2**10)"}}))
    assert ok == {"exit_code": 0, "stdout": "1024\n", "stderr": "", "timed_out": False}
    spin = agent_tool.run_python("while True:\n    pass", timeout=2)
    assert spin["timed_out"] and spin["exit_code"] == 137
    net = agent_tool.run_python(
        "import socket\nsocket.create_connection(('10.0.0.1', 80), timeout=3)"
    )
    assert net["exit_code"] == 1 and "unreachable" in net["stderr"].lower(), net["stderr"]
    assert "unknown tool" in agent_tool.handle_tool_call({"name": "rm_rf", "input": {}})
