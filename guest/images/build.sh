#!/usr/bin/env bash
# Builds Cove's default images as OCI image layouts, offline from Debian packages:
#   busybox  Debian's busybox-static and its applet links
#   python   debootstrap minbase (bookworm) with python3
#   base     E2B's base image's kind: minbase with bash, python3, git, sudo, tput (ncurses-bin),
#            setfattr (attr), ca-certificates; a user `user` (uid 1000, home and working
#            directory /home/user, passwordless sudo) that commands run as by default
# Usage: build.sh NAME  → prints the OCI layout directory (one gzip layer), which
# `cove image import` installs through the same pipeline as any other image.
# Results are cached under $COVE_CACHE/images/<name>-<key>; a cached layout is used only if its
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

ensure e2fsprogs gzip
base_packages="python3,git,sudo,ncurses-bin,attr,ca-certificates,procps"
user=root
workdir=/
case "$name" in
busybox) ensure busybox-static; inputs="busybox-static $(dpkg-query -W -f='${Version}' busybox-static)" ;;
python) ensure debootstrap; inputs="bookworm minbase python3" ;;
base) ensure debootstrap; inputs="bookworm minbase $base_packages" ;;
*) log "unknown default image (busybox, python, base)"; exit 2 ;;
esac
key="$( { echo "$inputs"; cat "$0"; } | sha256sum | cut -c1-16)"
out="$cache/images/$name-$key"
if [[ -f "$out/SHA256SUMS" ]] && (cd "$out" && sha256sum --quiet -c SHA256SUMS >/dev/null 2>&1); then
	log "cached $out"
	echo "$out/layout"
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
python | base)
	mirror="${COVE_DEBIAN_MIRROR:-$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')}"
	[[ -n "$mirror" ]] || mirror="$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)"
	include=python3
	[[ "$name" == base ]] && include="$base_packages"
	log "debootstrap bookworm ($include) from the configured Debian mirror"
	debootstrap --variant=minbase --include="$include" bookworm "$root" "$mirror" >&2
	# Trim what a sandbox never needs: package caches, docs, locales.
	rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
		"$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
	echo "cove" >"$root/etc/hostname"
	cmd='["python3"]'
	if [[ "$name" == base ]]; then
		# The default user, as in E2B's base image: uid 1000, passwordless sudo.
		chroot "$root" useradd --create-home --uid 1000 --shell /bin/bash user
		echo 'user ALL=(ALL:ALL) NOPASSWD: ALL' >"$root/etc/sudoers.d/user"
		chmod 0440 "$root/etc/sudoers.d/user"
		user=user
		workdir=/home/user
		cmd='["/bin/bash"]'
	fi
	;;
esac

# The OCI layout: one gzip layer, a config with the defaults, a manifest, an index.
layout="$stage/layout"
mkdir -p "$layout/blobs/sha256"
blob() { # FILE → moves it into the layout, prints its digest
	local d
	d="$(sha256sum "$1" | cut -d' ' -f1)"
	mv "$1" "$layout/blobs/sha256/$d"
	echo "$d"
}
tar --numeric-owner --sort=name --xattrs -C "$root" -cf "$stage/layer.tar" .
diff_id="$(sha256sum "$stage/layer.tar" | cut -d' ' -f1)"
gzip -1 -n "$stage/layer.tar"
layer_size=$(stat -c %s "$stage/layer.tar.gz")
layer="$(blob "$stage/layer.tar.gz")"
rm -rf "$root"
cat >"$stage/config.json" <<J
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"$workdir","User":"$user","Cmd":$cmd},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]}}
J
config_size=$(stat -c %s "$stage/config.json")
config="$(blob "$stage/config.json")"
cat >"$stage/manifest.json" <<J
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer","size":$layer_size}]}
J
manifest_size=$(stat -c %s "$stage/manifest.json")
manifest="$(blob "$stage/manifest.json")"
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
cat >"$layout/index.json" <<J
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest","size":$manifest_size,"annotations":{"org.opencontainers.image.ref.name":"$name"}}]}
J
(cd "$stage" && find layout -type f | sort | xargs sha256sum >SHA256SUMS && sync -f SHA256SUMS)
rm -rf "$out"
mv "$stage" "$out"
trap - EXIT
log "built in $(($(date +%s) - start)) s: layer $((layer_size / 1048576)) MiB"
echo "$out/layout"
