#!/usr/bin/env bash
# Mutation testing of the pure modules with mutmut (not run by CI: ~10-20 min on 2 cores).
#
#   .venv/bin/pip install 'mutmut==3.8.1'
#   bash tests/mutation/run_mutmut.sh            # results summary at the end
#   bash tests/mutation/run_mutmut.sh --keep     # keep the work copy to inspect survivors
#
# It works on a throw-away copy of the repository (mutmut writes a `mutants/` tree and a
# setup.cfg of its own), mutates only runner/{plan,source,sqlfile,settings}.py and runs the
# unit tests that exercise them (no database needed).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
work="$(mktemp -d /tmp/migrunner-mutmut.XXXXXX)"
keep=0; [ "${1:-}" = "--keep" ] && keep=1
trap '[ $keep = 1 ] || rm -rf "$work"' EXIT
(cd "$root" && git ls-files -z runner migrations_compat tests pyproject.toml \
  | grep -zv '^tests/fixtures/' | xargs -0 cp --parents -t "$work")
cat > "$work/setup.cfg" <<'CFG'
[mutmut]
source_paths = runner
only_mutate =
    runner/plan.py
    runner/source.py
    runner/sqlfile.py
    runner/settings.py
also_copy =
    migrations_compat
pytest_add_cli_args_test_selection =
    tests/unit/test_plan.py
    tests/unit/test_source.py
    tests/unit/test_sqlfile.py
    tests/unit/test_settings.py
pytest_add_cli_args =
    -p no:cacheprovider
    -q
CFG
# pyproject.toml's [tool.pytest] stays: mutmut reads its own settings from setup.cfg only when
# pyproject.toml has no [tool.mutmut] table.
cd "$work"
"$py" -m mutmut run --max-children "${MUTMUT_CHILDREN:-2}" >mutmut.log 2>&1 || { tail -40 mutmut.log; exit 1; }
"$py" -m mutmut results --all true >results.txt 2>&1 || true
tail -c 300 mutmut.log | tr '\r' '\n' | tail -1
echo "by outcome:"; awk -F': ' '{print $2}' results.txt | sort | uniq -c
echo "survivors by function:"
grep ': survived$' results.txt | sed 's/__mutmut_[0-9]*: survived//' | sort | uniq -c | sort -rn
if [ $keep = 1 ]; then echo "work copy: $work (run '$py -m mutmut show NAME' there)"; fi
