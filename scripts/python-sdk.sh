#!/usr/bin/env bash
# The Python SDK's test environment (tests/python_sdk.rs runs it; make test calls this first):
#   $COVE_CACHE/python-sdk/venv   a venv with the SDK's dependencies, pytest, mypy and hatchling
# The venv is reused while it imports them; the SDK itself (sdk/python) is installed into it
# again on every run, from this checkout, the way a user installs it (`pip install ./sdk/python`).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${COVE_CACHE:-/var/cache/cove}/python-sdk/venv"
log() { echo "python-sdk: $*" >&2; }
dpkg -s python3-venv >/dev/null 2>&1 || {
	log "installing python3-venv"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
}
if ! "$dir/bin/python" -c 'import httpx, websockets, pytest, mypy, anyio, hatchling' 2>/dev/null; then
	rm -rf "$dir.tmp"
	mkdir -p "$(dirname "$dir")"
	/usr/bin/python3 -m venv "$dir.tmp"
	"$dir.tmp/bin/python" -m pip install -q --disable-pip-version-check \
		'httpx>=0.27,<1' 'websockets>=15,<18' 'pytest>=8' 'anyio>=4' 'mypy>=1.10' 'hatchling>=1.21' >&2
	rm -rf "$dir"
	mv "$dir.tmp" "$dir"
fi
"$dir/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
	--force-reinstall ./sdk/python >&2
log "cove-sdk $("$dir/bin/python" -c 'import cove; print(cove.__version__)') in $dir"
