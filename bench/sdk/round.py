"""One round of the sdk bench (bench/src/sdks.rs): through Cove's Python SDK, Sandbox.create()
from the base template → the first commands.run answered, then commands.run round trips.
Prints one JSON object: {"create_first_ms": [...], "run_ms": [...]}."""

import json
import sys
import time

from cove import Client, Sandbox

TRUE = ["/bin/bash", "-l", "-c", "true"]

creates, runs = [], []
with Client() as client:
    for _ in range(int(sys.argv[1])):
        t = time.perf_counter()
        sbx = Sandbox.create(image="base", client=client)
        sbx.commands.run(TRUE)
        creates.append((time.perf_counter() - t) * 1000)
        for _ in range(int(sys.argv[2])):
            t = time.perf_counter()
            sbx.commands.run(TRUE)
            runs.append((time.perf_counter() - t) * 1000)
        sbx.kill()
print(json.dumps({"create_first_ms": creates, "run_ms": runs}))
