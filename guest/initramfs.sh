#!/usr/bin/env bash
# Packs the initramfs: only the static cove-agent as /init, plus /dev/console.
# Usage: initramfs.sh AGENT_BINARY OUTPUT.cpio
set -euo pipefail
agent="$1"
out="$2"
if ! file -b "$agent" 2>/dev/null | grep -q "static"; then
	if ldd "$agent" >/dev/null 2>&1; then
		echo "initramfs: $agent is dynamically linked; build it with +crt-static" >&2
		exit 1
	fi
fi
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/dev"
install -m 0755 "$agent" "$stage/init"
mknod -m 0600 "$stage/dev/console" c 5 1
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$out.tmp"
mv "$out.tmp" "$out"
