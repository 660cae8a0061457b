#!/usr/bin/env bash
# Installs everything Cove needs on this machine and puts the guest assets into a Cove home:
#   Debian packages (QEMU, e2fsprogs, cpio, busybox-static, debootstrap, nftables for the
#   sandboxes' network rules, iproute2)
#   the guest kernel (cached; see guest/kernel/build.sh)
#   cove-agent (static) and the initramfs
#   the default images busybox, python and base (cached OCI layouts, see guest/images/build.sh,
#   imported with `cove image import`; COVE_BIN names the cove binary, else a release build)
# Usage: guest/setup.sh [COVE_HOME]   (default: $COVE_HOME, else /var/lib/cove)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
home="${1:-${COVE_HOME:-/var/lib/cove}}"
log() { echo "setup: $*" >&2; }
t() { date +%s.%N; }
elapsed() { printf '%.1f' "$(echo "$(t) - $1" | bc)"; }

need=()
for p in qemu-system-x86 e2fsprogs cpio busybox-static debootstrap file bc nftables iproute2; do
	dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
	log "installing ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

s=$(t)
vmlinux="$("$repo/guest/kernel/build.sh")"
log "kernel ready ($(elapsed "$s") s)"

s=$(t)
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --profile agent -p cove-agent --target x86_64-unknown-linux-gnu)
agent="$repo/target/x86_64-unknown-linux-gnu/agent/cove-agent"
log "agent built ($(elapsed "$s") s)"

mkdir -p "$home/kernel" "$home/images"
# Hard links where the cache shares the filesystem, copies otherwise; always replaced atomically.
place() {
	local from="$1" to="$2"
	[[ "$from" -ef "$to" ]] && return 0
	rm -f "$to.tmp"
	ln "$from" "$to.tmp" 2>/dev/null || cp --reflink=auto "$from" "$to.tmp"
	mv -f "$to.tmp" "$to"
}
place "$vmlinux" "$home/kernel/vmlinux"
"$repo/guest/initramfs.sh" "$agent" "$home/kernel/initramfs.cpio"

# The default images go through the same import pipeline as any other image.
cove="${COVE_BIN:-}"
if [[ -z "$cove" ]]; then
	(cd "$repo" && cargo build -q --release -p cove-cli -p cove-server -p cove-vm)
	cove="$repo/target/release/cove"
fi
# Homes from before content-addressed images kept disks under images/NAME/.
rm -rf "$home/images/busybox" "$home/images/python"
for img in busybox python base; do
	s=$(t)
	layout="$("$repo/guest/images/build.sh" "$img")"
	"$cove" --home "$home" image import --quiet --name "$img" "$layout" >/dev/null
	log "image $img ready ($(elapsed "$s") s)"
done
log "Cove home $home is ready"
