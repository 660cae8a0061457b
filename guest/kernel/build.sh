#!/usr/bin/env bash
# Builds the guest kernel (ELF vmlinux) from Debian's linux-source-6.1 with
# guest/kernel/cove.config applied on top of `make tinyconfig`.
#
# The result is cached under $COVE_CACHE/kernel/<key>/vmlinux, where <key> hashes the
# source package version, the fragment and this script; a cached build is used only if
# its recorded checksum still matches. Prints the path of vmlinux on stdout.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${COVE_CACHE:-/var/cache/cove}"
fragment="$here/cove.config"
pkg=linux-source-6.1

log() { echo "kernel: $*" >&2; }

need=()
dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
for p in build-essential flex bison bc libelf-dev libssl-dev xz-utils; do
	dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
	log "installing ${need[*]}"
	apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi

version="$(dpkg-query -W -f='${Version}' "$pkg")"
key="$( { echo "$pkg $version"; cat "$fragment" "$0"; } | sha256sum | cut -c1-16)"
out="$cache/kernel/$key"

if [[ -f "$out/vmlinux" && -f "$out/vmlinux.sha256" ]] &&
	(cd "$out" && sha256sum --quiet -c vmlinux.sha256 >/dev/null 2>&1); then
	log "cached $out/vmlinux ($pkg $version)"
	echo "$out/vmlinux"
	exit 0
fi

work="$cache/kernel/build-$key"
rm -rf "$work"
mkdir -p "$work"
start=$(date +%s)
log "extracting $pkg $version"
tar -C "$work" -xf "/usr/src/$pkg.tar.xz"
src="$work/$pkg"

log "configuring (tinyconfig + cove.config)"
make -C "$src" -s ARCH=x86_64 tinyconfig >&2
KCONFIG_CONFIG="$src/.config" "$src/scripts/kconfig/merge_config.sh" -m -O "$src" \
	"$src/.config" "$fragment" >&2
make -C "$src" -s ARCH=x86_64 olddefconfig >&2

# Dependencies drop options silently: every option of the fragment must survive.
missing=0
while IFS= read -r line; do
	if [[ "$line" =~ ^(CONFIG_[A-Z0-9_]+)=y$ ]]; then
		opt="${BASH_REMATCH[1]}"
		grep -qx "$opt=y" "$src/.config" || { log "option $opt=y was dropped"; missing=1; }
	elif [[ "$line" =~ ^#\ (CONFIG_[A-Z0-9_]+)\ is\ not\ set$ ]]; then
		opt="${BASH_REMATCH[1]}"
		if grep -q "^$opt=" "$src/.config"; then log "option $opt is set but must not be"; missing=1; fi
	fi
done <"$fragment"
if ((missing)); then
	log "the final .config does not honour cove.config; fix the fragment"
	exit 1
fi

log "building vmlinux with $(nproc) jobs"
make -C "$src" -s ARCH=x86_64 -j"$(nproc)" vmlinux >&2

mkdir -p "$out.tmp"
cp "$src/vmlinux" "$src/.config" "$out.tmp/"
(cd "$out.tmp" && sha256sum vmlinux >vmlinux.sha256 && sync -f vmlinux)
rm -rf "$out"
mv "$out.tmp" "$out"
rm -rf "$work"
log "built $out/vmlinux in $(($(date +%s) - start)) s"
echo "$out/vmlinux"
