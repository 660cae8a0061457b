"""One round of the e2b bench (bench/src/e2b.rs): through the official Python SDK,
Sandbox.create() → the first commands.run("true") answered, then commands.run round trips.
Prints one JSON object: {"create_first_ms": [...], "run_ms": [...]}."""

import json
import sys
import time

from e2b import Sandbox

creates, runs = [], []
for _ in range(int(sys.argv[1])):
    t = time.perf_counter()
    sbx = Sandbox.create(template="base", timeout=600)
    sbx.commands.run("true")
    creates.append((time.perf_counter() - t) * 1000)
    for _ in range(int(sys.argv[2])):
        t = time.perf_counter()
        sbx.commands.run("true")
        runs.append((time.perf_counter() - t) * 1000)
    sbx.kill()
print(json.dumps({"create_first_ms": creates, "run_ms": runs}))
