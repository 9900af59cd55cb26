#!/usr/bin/env bash
# Install the host tools the deploy tests need (image build without a Docker engine, shell lint).
#
# Idempotent: installs only what is missing, so .ci/run can call it on every run for free.
# buildah builds the Dockerfile rootless-style with vfs storage and chroot isolation,
# debootstrap makes the base image when the registry that hosts it is unreachable, and
# the shell linter (package shellcheck) checks k8s/run-migration.sh.
set -euo pipefail

# package:command pairs; the command proves the package is installed.
wanted=(
  buildah:buildah
  debootstrap:debootstrap
  shellcheck:shellcheck
  uidmap:newuidmap
  ca-certificates:update-ca-certificates
)

missing=()
for pair in "${wanted[@]}"; do
  pkg=${pair%%:*}
  cmd=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  echo "ci-deps: all present (${wanted[*]%%:*})"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "ci-deps: need root to install: ${missing[*]}" >&2
  exit 1
fi

echo "ci-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "ci-deps: done"
