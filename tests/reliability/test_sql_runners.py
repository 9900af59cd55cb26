"""Many runners at once, CREATE INDEX CONCURRENTLY under waiting runners, and kill -9.

All synchronisation is on what PostgreSQL reports (pg_stat_activity, pg_locks), never sleeps.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from runner.lock import lock_key
from tests.conftest import FIXTURES, popen_cli, run_cli
from tests.support.runners import advisory_held, finish, gated_copy, start_blocked
from tests.support.state import backends, history_rows, meta_rows, snapshot, wait_for

EXAMPLE = FIXTURES / "example" / "migrations"
NAMES = sorted(p.name for p in EXAMPLE.iterdir())
KEY = lock_key(None, "SequelizeMeta")


def test_sixteen_runners_apply_each_migration_once(db_url: str, db: psycopg.Connection) -> None:
    procs = [popen_cli("up", "--url", db_url, "--migrations-path", str(EXAMPLE)) for _ in range(16)]
    outputs = [p.communicate(timeout=120) for p in procs]
    results = [(p.returncode, out + err) for p, (out, err) in zip(procs, outputs, strict=True)]
    assert [code for code, _ in results] == [0] * 16, [err for _, err in results]
    assert all("Migrations completed successfully" in out for out, _ in outputs)
    assert meta_rows(db_url) == tuple(NAMES)
    applied = Counter(n for n, d, o in history_rows(db_url) if d == "up" and o == "applied")
    assert applied == Counter(NAMES)
    assert not advisory_held(db)


def test_concurrent_index_with_waiting_runners_does_not_deadlock(
    db_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "001-t.sql").write_text(
        "-- migrate:up\nCREATE TABLE t (a int);\nSELECT pg_advisory_xact_lock(4242);\n"
    )
    (folder / "002-idx.sql").write_text(
        "-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY t_a ON t (a);\n"
    )
    gate = psycopg.connect(db_url, autocommit=True)
    gate.execute("SELECT pg_advisory_lock(4242)")  # holds the first runner inside migration 001
    args = (
        "up",
        "--url",
        db_url,
        "--migrations-path",
        str(folder),
        "--statement-lock-timeout",
        "60",
    )
    first = popen_cli(*args)
    wait_for(
        lambda: any(b[2] == "Lock" for b in backends(db_url, "migrunner/% running 001-t.sql")),
        what="runner 1 blocked inside migration 001",
    )
    others = [popen_cli(*args) for _ in range(4)]
    wait_for(
        lambda: len(backends(db_url, "migrunner/% waiting %")) == 4,
        what="4 runners polling for the migration lock",
    )
    gate.execute("SELECT pg_advisory_unlock(4242)")  # runner 1 goes on to the CIC migration
    gate.close()
    codes = [p.wait(timeout=60) for p in [first, *others]]
    for p in [first, *others]:
        p.stdout and p.stdout.close()
        p.stderr and p.stderr.close()
    assert codes == [0] * 5
    assert meta_rows(db_url) == ("001-t.sql", "002-idx.sql")
    assert db.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_a'::regclass"
    ).fetchone() == (True,)


@pytest.mark.parametrize("where", ["first", "middle"])
def test_kill_9_mid_migration_leaves_nothing_half_done(
    db_url: str, db: psycopg.Connection, tmp_path: Path, where: str
) -> None:
    target = NAMES[0] if where == "first" else NAMES[1]
    folder = gated_copy(EXAMPLE, tmp_path / "m", target, 4243)
    if where == "middle":
        first = run_cli("up", "--to", NAMES[0], "--url", db_url, "--migrations-path", str(folder))
        assert first.returncode == 0, first.stderr
    before = snapshot(db_url, app_only=True)
    gate = psycopg.connect(db_url, autocommit=True)
    gate.execute("SELECT pg_advisory_lock(4243)")
    proc = start_blocked(db_url, folder, target)
    os.kill(proc.pid, signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL
    # The server notices the dead client (client_connection_check_interval) and ends its
    # sessions, rolling back and freeing the lock, although the gate still blocks the statement.
    wait_for(lambda: not backends(db_url, "migrunner/%"), what="runner backends to go away")
    assert not advisory_held(db)
    after = snapshot(db_url, app_only=True)
    assert (after.schema, after.meta) == (before.schema, before.meta)
    gate.execute("SELECT pg_advisory_unlock(4243)")
    gate.close()
    r = run_cli("up", "--url", db_url, "--migrations-path", str(folder))
    assert r.returncode == 0, r.stderr
    assert meta_rows(db_url) == tuple(NAMES)
