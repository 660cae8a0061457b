#!/usr/bin/env bash
# The official E2B SDKs the E2B-compatibility tests drive (tests/e2b.rs), from PyPI and npm:
#   $COVE_CACHE/e2b/py-2.45.1   a venv with e2b 2.45.1 (the oldest 2.x line the tests cover)
#   $COVE_CACHE/e2b/py-latest   a venv with the newest e2b 2.x (>= 2.63)
#   $COVE_CACHE/e2b/npm         node_modules with the newest e2b 2.x for node
# Each is reused while it still imports; a broken or missing one is made again.
set -euo pipefail
cache="${COVE_CACHE:-/var/cache/cove}/e2b"
mkdir -p "$cache"
log() { echo "e2b-sdks: $*" >&2; }
need=()
dpkg -s python3-venv >/dev/null 2>&1 || need+=(python3-venv)
# Node and npm may come from another package set (NodeSource's nodejs holds npm): only when
# there is none is Debian's installed.
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if ((${#need[@]})); then
	log "installing ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

venv() { # NAME SPEC
	local dir="$cache/$1"
	if "$dir/bin/python" -c 'import e2b, httpx' 2>/dev/null; then
		log "$1: e2b $("$dir/bin/python" -c 'import importlib.metadata as m; print(m.version("e2b"))') (cached)"
		return
	fi
	rm -rf "$dir.tmp"
	/usr/bin/python3 -m venv "$dir.tmp"
	"$dir.tmp/bin/pip" install -q --disable-pip-version-check "$2" >&2
	rm -rf "$dir"
	mv "$dir.tmp" "$dir"
	# The venv's scripts name the .tmp path: rewrite nothing, call `bin/python` (it resolves).
	log "$1: e2b $("$dir/bin/python" -c 'import importlib.metadata as m; print(m.version("e2b"))')"
}
venv py-2.45.1 'e2b==2.45.1'
venv py-latest 'e2b>=2.63,<3'

if node -e 'require(process.argv[1])' "$cache/npm/node_modules/e2b" 2>/dev/null; then
	log "npm: e2b $(node -p 'require(process.argv[1]).version' "$cache/npm/node_modules/e2b/package.json") (cached)"
else
	rm -rf "$cache/npm.tmp"
	mkdir -p "$cache/npm.tmp"
	(cd "$cache/npm.tmp" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund 'e2b@2' >&2)
	rm -rf "$cache/npm"
	mv "$cache/npm.tmp" "$cache/npm"
	log "npm: e2b $(node -p 'require(process.argv[1]).version' "$cache/npm/node_modules/e2b/package.json")"
fi
