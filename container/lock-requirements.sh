#!/bin/sh
# Refresh container/requirements.lock: the exact versions, with hashes, of migrunner's runtime
# Python dependencies (pyproject.toml's [project] dependencies, plus what
# container/requirements-image.in adds: Node.js LTS from PyPI) that the image installs with
# `pip install --require-hashes`. Run it after changing those dependencies, or to take upstream
# fixes; commit the result. It resolves with pip-tools in a throw-away venv, for the image's
# Python (Debian bookworm's 3.11: environment markers are evaluated for it).
#
#   container/lock-requirements.sh            # PYTHON=python3.11 by default
#   PYTHON=/usr/bin/python3.11 container/lock-requirements.sh
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$version" != "3.11" ]; then
  echo "lock-requirements: $python is Python $version; the image runs 3.11 (set PYTHON)" >&2
  exit 2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --disable-pip-version-check "pip-tools>=7.4"
cd "$root"
"$tmp/venv/bin/pip-compile" --quiet --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links \
  --resolver=backtracking --annotation-style=line \
  --output-file container/requirements.lock pyproject.toml container/requirements-image.in
# pip-compile names its temporary paths in the header; keep the header reproducible.
sed -i 's|^#    pip-compile .*|#    container/lock-requirements.sh|' container/requirements.lock
echo "container/requirements.lock refreshed:" >&2
grep -E '^[A-Za-z0-9_.-]+==' container/requirements.lock | sed 's/ .*//' >&2
