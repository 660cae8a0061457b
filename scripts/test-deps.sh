#!/usr/bin/env bash
# What the test suite needs beyond guest/setup.sh: a real OCI registry (Debian's
# docker-registry, CNCF distribution), skopeo to push images into it, and htpasswd (bcrypt) for
# its basic-auth configuration. Each test starts its own registry on 127.0.0.1. binutils: the
# kvm engine's tests assemble their purpose-built guest programs with GNU as and ld.
# postgresql: the state store's suite and coved on PostgreSQL; each test starts its own server
# (initdb in a throw-away directory, loopback only). s3s-fs: a real S3-compatible server over a
# folder (no S3 server is packaged in Debian), built once from crates.io into the cache (about
# ten minutes); the blob store's tests start their own on 127.0.0.1.
set -euo pipefail
need=()
for p in docker-registry skopeo apache2-utils e2fsprogs binutils postgresql; do
	dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
	echo "test-deps: installing ${need[*]}" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The package starts a registry on :5000 with its own config; the tests start their own.
systemctl disable --now docker-registry >/dev/null 2>&1 || true
# Likewise the package's own cluster: the tests start theirs.
systemctl disable --now postgresql >/dev/null 2>&1 || true
# The S3 server: kept in the cache, checked by running it, rebuilt when it does not run.
s3s=/var/cache/cove/tools/s3s-fs-0.14.1
if ! "$s3s/bin/s3s-fs" --help >/dev/null 2>&1; then
	echo "test-deps: building s3s-fs 0.14.1 (the S3 server of the tests; cached in $s3s)" >&2
	rm -rf "$s3s.partial"
	cargo install -q s3s-fs --version 0.14.1 --features binary --locked --root "$s3s.partial"
	rm -rf "$s3s"
	mv "$s3s.partial" "$s3s"
fi
