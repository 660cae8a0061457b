#!/usr/bin/env bash
# Cove's main job, with embedded defaults: a Python sandbox in a microVM runs a snippet.
set -euo pipefail
cove="${1:-cove}"
now() { date +%s%N; }
ms() { echo $((($(now) - $1) / 1000000)); }

echo "== cove info"
"$cove" info
echo
t=$(now)
id=$("$cove" create --image python --name "demo-$$")
create_ms=$(ms "$t")
trap '"$cove" rm -f "$id" >/dev/null 2>&1 || true' EXIT
echo "== created sandbox $id from image python in ${create_ms} ms (boot to agent ready)"

echo "== running a Python snippet inside it:"
t=$(now)
"$cove" exec -i "$id" -- python3 <<'PY' | sed 's/^/   | /'
import os, platform, hashlib
print("hello from", platform.node(), "running Linux", platform.release())
print("pid", os.getpid(), "as uid", os.getuid(), "in", os.getcwd())
print("sha256('cove') =", hashlib.sha256(b"cove").hexdigest()[:16], "...")
print("sum of squares below 10**6:", sum(i * i for i in range(10**6)))
PY
exec_ms=$(ms "$t")
echo "== snippet ran in ${exec_ms} ms (round trip, including Python's start under emulation)"

echo "== its network policy: $("$cove" network "$id" | paste -sd ' ')"
"$cove" exec -i "$id" -- python3 - <<'PY' | sed 's/^/   | /'
import socket
# Refused inside the sandbox's own network namespace on the host: nothing leaves the machine.
try:
    socket.create_connection(("169.254.169.254", 80), timeout=5)
    print("the metadata address answered (it should not)")
except OSError as e:
    print("the cloud metadata address is walled off:", e.strerror or e)
PY

t=$(now)
"$cove" exec "$id" -- true
echo "== exec round trip of \`true\`: $(ms "$t") ms (including the cove CLI's own start)"

t=$(now)
"$cove" rm -f "$id" >/dev/null
trap - EXIT
echo "== removed the sandbox in $(ms "$t") ms"
echo
echo "timings: create ${create_ms} ms, python snippet ${exec_ms} ms"
