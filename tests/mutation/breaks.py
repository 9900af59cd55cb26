"""Deliberate breaks of the I/O modules' promises, each of which a deterministic test must catch.

    .venv/bin/python tests/mutation/breaks.py            # every break (~3-5 min on 2 cores)
    .venv/bin/python tests/mutation/breaks.py atomicity-two-transactions redact-noop
    .venv/bin/python tests/mutation/breaks.py --list

Each break is a literal text replacement in one file. It is applied to a throw-away copy of the
repository (tracked files; the fixtures' node_modules are symlinked), then the tests named for
it run there; the break is *caught* when every one of them fails. A break whose text no longer matches the
code is reported as stale, so the list stays honest as the code moves. Not part of CI (slow);
run it after changing a promise or its tests, and add a break for every new promise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROMISES = "tests/reliability/test_promises.py"


@dataclass(frozen=True)
class Break:
    id: str
    promise: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


BREAKS = [
    Break(
        "atomicity-two-transactions",
        "each migration commits with its SequelizeMeta and history rows in one transaction",
        "runner/migrator.py",
        '                if not transactional:\n                    conn.execute(b"BEGIN")\n',
        '                if transactional:\n                    conn.execute(b"COMMIT")\n'
        '                conn.execute(b"BEGIN")\n',
        (
            f"{PROMISES}::test_migration_and_its_rows_commit_in_one_transaction",
            f"{PROMISES}::test_kill_9_while_the_bookkeeping_waits_leaves_no_trace",
        ),
    ),
    Break(
        "redact-noop",
        "passwords never appear in output",
        "runner/settings.py",
        '    """Remove every secret (and the password part of any URL among them) from ``text``."""\n',
        '    """Remove every secret (and the password part of any URL among them) from ``text``."""\n'
        "    return text\n",
        (
            "tests/reliability/test_bad_input.py::test_bad_input[malformed-ipv6-url]",
            f"{PROMISES}::test_secret_in_a_failing_statement_is_redacted_everywhere",
        ),
    ),
    Break(
        "cli-redaction-skipped",
        "passwords never appear in output (the CLI's last line of defence)",
        "runner/cli.py",
        "log.error(redact(err.message, *secrets), exit_code=err.exit_code)",
        "log.error(err.message, exit_code=err.exit_code)",
        (f"{PROMISES}::test_secret_in_a_failing_statement_is_redacted_everywhere",),
    ),
    Break(
        "history-stores-password",
        "passwords never appear in output (`history` prints the stored error)",
        "runner/migrator.py",
        "error=redact(err.message, self.settings.password)[:2000],",
        "error=err.message[:2000],",
        (f"{PROMISES}::test_secret_in_a_failing_statement_is_redacted_everywhere",),
    ),
    Break(
        "last-commit-async",
        "every commit but the last uses synchronous_commit = off; the last is durable",
        "runner/migrator.py",
        "        if transactional and not durable:\n",
        "        if transactional:\n",
        (f"{PROMISES}::test_every_commit_but_the_last_is_asynchronous",),
    ),
    Break(
        "no-async-commits",
        "every commit but the last uses synchronous_commit = off",
        "runner/migrator.py",
        '            parts.append("SET LOCAL synchronous_commit = off")\n',
        "            pass\n",
        (f"{PROMISES}::test_every_commit_but_the_last_is_asynchronous",),
    ),
    Break(
        "no-retry-on-40P01",
        "40P01 (deadlock) is rolled back and retried",
        "runner/migrator.py",
        ', "40P01": "deadlock detected"}',
        "}",
        (f"{PROMISES}::test_real_deadlock_is_rolled_back_and_retried",),
    ),
    Break(
        "exhausted-without-failed-row",
        "retries exhausted: exit 1 and a `failed` history row",
        "runner/migrator.py",
        "                self.record_failure(conn, mig, direction, transactional, started, t0, "
        "err, notes)\n                raise\n",
        "                raise\n",
        (f"{PROMISES}::test_retries_follow_the_backoff_schedule_then_fail_with_a_failed_row",),
    ),
    Break(
        "one-retry-too-few",
        "--retries N means N retries",
        "runner/migrator.py",
        "attempt <= self.settings.retries:",
        "attempt < self.settings.retries:",
        (f"{PROMISES}::test_retries_follow_the_backoff_schedule_then_fail_with_a_failed_row",),
    ),
    Break(
        "flat-backoff",
        "retries back off exponentially from 0.2 s",
        "runner/migrator.py",
        "delay = min(0.2 * 2 ** (attempt - 1), 5.0)",
        "delay = 0.2",
        (f"{PROMISES}::test_retries_follow_the_backoff_schedule_then_fail_with_a_failed_row",),
    ),
    Break(
        "53300-not-retried",
        '"too many clients" (53300) at connect is retried',
        "runner/db.py",
        '            crowded = getattr(exc, "sqlstate", None) == "53300" or "too many clients" '
        "in str(exc)\n",
        "            crowded = False\n",
        (f"{PROMISES}::test_too_many_clients_at_connect_is_retried",),
    ),
    Break(
        "waiter-keeps-its-connection",
        "a waiter holds one connection",
        "runner/migrator.py",
        "                    conn.close()\n                    lock.acquire()\n",
        "                    lock.acquire()\n",
        (f"{PROMISES}::test_a_waiter_holds_one_connection_and_boots_no_node",),
    ),
    Break(
        "waiter-boots-node",
        "a waiter boots no node",
        "runner/migrator.py",
        "                if lock.try_now():\n                    ex.prepare(plan)",
        "                ex.prepare(plan)\n                if lock.try_now():\n"
        "                    pass",
        (f"{PROMISES}::test_a_waiter_holds_one_connection_and_boots_no_node",),
    ),
    Break(
        "status-wait-no-poll",
        "status --exit-code --wait polls until nothing is pending",
        "runner/cli.py",
        "while wait and exit_code and report.pending",
        "while False and wait and exit_code and report.pending",
        (f"{PROMISES}::test_status_wait_flips_from_pending_to_done",),
    ),
    Break(
        "dry-run-commits",
        "a dry run (JS and SQL) leaves SequelizeMeta, the history and the data unchanged",
        "runner/migrator.py",
        "        finally:\n            rollback(conn)\n        if on_copy is not None:",
        '        finally:\n            conn.execute(b"COMMIT")\n        if on_copy is not None:',
        (
            f"{PROMISES}::test_js_dry_run_leaves_meta_and_history_unchanged",
            "tests/integration/test_sql_cli.py::test_dry_run_changes_nothing",
        ),
    ),
    Break(
        "ci-any-value",
        "CI strictness: only CI=true/1 turn skips into failures",
        "tests/support/ci.py",
        'return os.environ.get("CI", "").strip().lower() in ("true", "1")',
        'return bool(os.environ.get("CI"))',
        ("tests/unit/test_ci.py",),
    ),
]


def work_copy() -> Path:
    """Tracked files of the checkout, with the (untracked) node_modules symlinked in."""
    dst = Path(tempfile.mkdtemp(prefix="migrunner-breaks-"))
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():
            target = dst / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    for modules in [ROOT / "migrations_compat/shim", *(ROOT / "tests/fixtures").iterdir()]:
        if (modules / "node_modules").is_dir():
            (dst / modules.relative_to(ROOT) / "node_modules").symlink_to(modules / "node_modules")
    return dst


def run_tests(copy: Path, tests: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("CI", None)  # a skip must read as "not caught", not be promoted to a failure
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *tests],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ids", nargs="*", help="only these breaks (default: all)")
    ap.add_argument("--list", action="store_true", help="list the breaks and their tests")
    ap.add_argument("--keep", action="store_true", help="keep the work copy")
    args = ap.parse_args(argv)
    chosen = [b for b in BREAKS if not args.ids or b.id in args.ids]
    if args.list:
        for b in chosen:
            print(f"{b.id}: {b.promise}\n    {b.path}\n    " + "\n    ".join(b.tests))
        return 0
    copy = work_copy()
    probe = subprocess.run(
        [sys.executable, "-c", "import runner; print(runner.__file__)"],
        cwd=copy,
        env={**os.environ, "PYTHONPATH": str(copy)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert probe.startswith(str(copy)), f"the copy's runner is not the one imported: {probe}"
    missed: list[str] = []
    try:
        for b in chosen:
            target = copy / b.path
            original = (ROOT / b.path).read_text()
            if original.count(b.old) != 1:
                print(f"STALE   {b.id}: its text is not (exactly once) in {b.path}")
                missed.append(b.id)
                continue
            target.write_text(original.replace(b.old, b.new))
            started = time.monotonic()
            done = run_tests(copy, b.tests)
            target.write_text(original)
            took = time.monotonic() - started
            failed = {ln.split()[1] for ln in done.stdout.splitlines() if ln.startswith("FAILED ")}
            escaped = [t for t in b.tests if not any(f.startswith(t) for f in failed)]
            if done.returncode == 1 and not escaped:
                print(f"caught  {b.id} ({took:.0f}s) by " + ", ".join(b.tests))
            elif done.returncode == 1:
                print(f"PARTLY  {b.id} ({took:.0f}s): not caught by " + ", ".join(escaped))
                missed.append(b.id)
            else:
                tail = done.stdout.strip().splitlines()[-1:] or [done.stderr[-300:]]
                print(f"MISSED  {b.id} ({took:.0f}s, exit {done.returncode}): {tail[0]}")
                missed.append(b.id)
    finally:
        if args.keep:
            print(f"work copy: {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)
    print(f"{len(chosen) - len(missed)}/{len(chosen)} breaks caught")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
