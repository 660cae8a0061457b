#!/usr/bin/env bash
# Builds Cove's default images as ext4 disks, offline from Debian packages:
#   busybox  Debian's busybox-static and its applet links
#   python   debootstrap minbase (bookworm) with python3
# Usage: build.sh NAME  → prints the directory holding rootfs.ext4 and image.json.
# Results are cached under $COVE_CACHE/images/<name>-<key>; a cached image is used only if its
# recorded checksums still match.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${COVE_CACHE:-/var/cache/cove}"
name="$1"
log() { echo "image $name: $*" >&2; }

ensure() {
	local need=()
	for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
	if ((${#need[@]})); then
		log "installing ${need[*]}"
		apt-get update -qq >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
	fi
}

ensure e2fsprogs
case "$name" in
busybox) ensure busybox-static; inputs="busybox-static $(dpkg-query -W -f='${Version}' busybox-static)" ;;
python) ensure debootstrap; inputs="bookworm minbase python3" ;;
*) log "unknown default image (busybox, python)"; exit 2 ;;
esac
key="$( { echo "$inputs"; cat "$0"; } | sha256sum | cut -c1-16)"
out="$cache/images/$name-$key"
if [[ -f "$out/SHA256SUMS" ]] && (cd "$out" && sha256sum --quiet -c SHA256SUMS >/dev/null 2>&1); then
	log "cached $out"
	echo "$out"
	exit 0
fi

stage="$cache/images/stage-$name-$$"
rm -rf "$stage"
mkdir -p "$stage"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
start=$(date +%s)

case "$name" in
busybox)
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,home,proc,sys,dev,run,var/tmp}
	chmod 1777 "$root/tmp" "$root/var/tmp"
	cp /bin/busybox "$root/bin/busybox"
	for applet in $(/bin/busybox --list-full); do
		[[ -e "$root/$applet" ]] || ln -s /bin/busybox "$root/$applet"
	done
	cat >"$root/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
	cat >"$root/etc/group" <<'G'
root:x:0:
tty:x:5:
nogroup:x:65534:
G
	echo "cove" >"$root/etc/hostname"
	cmd='["sh"]'
	;;
python)
	mirror="${COVE_DEBIAN_MIRROR:-$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')}"
	[[ -n "$mirror" ]] || mirror="$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)"
	log "debootstrap bookworm from the configured Debian mirror"
	debootstrap --variant=minbase --include=python3 bookworm "$root" "$mirror" >&2
	# Trim what a sandbox never needs: package caches, docs, locales.
	rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
		"$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
	echo "cove" >"$root/etc/hostname"
	cmd='["python3"]'
	;;
esac

cat >"$stage/image.json" <<J
{
  "name": "$name",
  "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
  "workdir": "/",
  "user": "root",
  "cmd": $cmd
}
J
# Size: content plus a quarter (at least 16 MiB) for ext4's own metadata.
kib=$(du -sk "$root" | cut -f1)
size=$((kib + kib / 4 + 16384))
mkfs.ext4 -q -F -L cove-image -O ^has_journal -E root_owner=0:0 -d "$root" "$stage/rootfs.ext4" "${size}k" >&2
rm -rf "$root"
(cd "$stage" && sha256sum rootfs.ext4 image.json >SHA256SUMS && sync -f rootfs.ext4)
rm -rf "$out"
mv "$stage" "$out"
trap - EXIT
log "built in $(($(date +%s) - start)) s: $(du -h --apparent-size "$out/rootfs.ext4" | cut -f1)"
echo "$out"
