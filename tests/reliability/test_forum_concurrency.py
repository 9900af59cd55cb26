"""Sixteen ``migrunner db:migrate`` processes on one empty database with the forum app.

This is the situation that breaks sequelize-cli (75-86% of 8 concurrent runs fail): N replicas'
initContainers, or a retried Job, starting at once. With the advisory lock, one process applies
every migration exactly once and the others wait, then find nothing to do.

Two ways to start them together, neither by sleeping: ``cold`` just starts all processes (they
race from process start, through connecting, to the lock); ``barrier`` holds the migration lock
from the test until the database shows all sixteen waiting for it, then releases it, so every
process competes for the lock at the same instant.
"""

from __future__ import annotations

import subprocess
import time

import psycopg
import pytest

from runner.lock import channel, lock_key
from tests.conftest import popen_cli
from tests.parity.conftest import (  # noqa: F401  (forum_app is a fixture)
    COMPLETED,
    FORUM,
    FORUM_ARGS,
    MIGRATIONS,
    forum_app,
    forum_env,
    migrunner,
    ok,
)
from tests.support.catalog import diff_fingerprints, fingerprint
from tests.support.pg import create_database, drop_database
from tests.support.state import meta_rows

RUNNERS = 16
WAIT_FOR_RUNNERS = 60.0


def waiting_runners(conn: psycopg.Connection, dbname: str) -> int:
    """Sessions of this database whose application_name says they wait for the lock."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = %s AND application_name LIKE 'migrunner/%% waiting %%'",
        (dbname,),
    ).fetchone()
    return int(row[0]) if row else 0


def start_behind_barrier(db_url: str, env: dict[str, str]) -> list[subprocess.Popen[str]]:
    key = lock_key(None, "SequelizeMeta")
    dbname = env["DB_NAME"]
    with psycopg.connect(db_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        procs = [popen_cli("db:migrate", *FORUM_ARGS, env=env, cwd=FORUM) for _ in range(RUNNERS)]
        deadline = time.monotonic() + WAIT_FOR_RUNNERS
        with psycopg.connect(db_url, autocommit=True) as watcher:
            while (n := waiting_runners(watcher, dbname)) < RUNNERS:
                early = [p.returncode for p in procs if p.poll() is not None]
                if early or time.monotonic() > deadline:
                    for p in procs:
                        p.kill()
                    outputs = "\n".join((p.communicate()[1] or "")[-500:] for p in procs[:2])
                    pytest.fail(
                        f"only {n}/{RUNNERS} runners reached the lock; exited {early}\n{outputs}"
                    )
                # The barrier is what the database says; this only paces the polling.
                time.sleep(0.02)
        holder.execute("SELECT pg_advisory_unlock(%s)", (key,))
        holder.execute(f"NOTIFY {channel(key)}")
    return procs


@pytest.mark.usefixtures("forum_app")
@pytest.mark.parametrize("start", ["cold", "barrier"])
def test_sixteen_runners_apply_each_migration_once(start: str, pg_server: str, db_url: str) -> None:
    env = forum_env(db_url)
    if start == "barrier":
        procs = start_behind_barrier(db_url, env)
    else:
        procs = [popen_cli("db:migrate", *FORUM_ARGS, env=env, cwd=FORUM) for _ in range(RUNNERS)]
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append((p.returncode, out + err))

    failed = [(rc, text[-2000:]) for rc, text in results if rc != 0]
    assert not failed, f"{len(failed)}/{RUNNERS} runners failed; first: {failed[0]}"
    for _, text in results:
        assert COMPLETED in text

    # The logs agree with the database: eleven "migrated" lines in all, one per migration.
    applied_lines = [
        name
        for _, text in results
        for line in text.splitlines()
        for name in MIGRATIONS
        if name.removesuffix(".js") in line and "migrated" in line
    ]
    assert sorted(applied_lines) == sorted(MIGRATIONS), applied_lines

    assert meta_rows(db_url) == MIGRATIONS
    with psycopg.connect(db_url, autocommit=True) as conn:
        history = conn.execute(
            "SELECT name, direction, outcome FROM migrunner_history ORDER BY id"
        ).fetchall()
    assert sorted(history) == sorted((name, "up", "applied") for name in MIGRATIONS), history

    single_url = create_database(pg_server)
    try:
        ok(migrunner("db:migrate", url=single_url), "migrunner")
        single = fingerprint(single_url)
    finally:
        drop_database(pg_server, single_url)
    raced = fingerprint(db_url)
    assert raced == single, diff_fingerprints(single, raced, ("single run", "16 racing runs"))
