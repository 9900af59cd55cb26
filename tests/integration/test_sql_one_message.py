"""A transactional SQL migration goes to the server as ONE message (issue 16): statements,
SequelizeMeta row, history row, lock check and COMMIT. What must not change with it: the
history row's content, the exact error of a failing migration, and that nothing commits once
the lock is gone."""

from __future__ import annotations

import hashlib
from pathlib import Path

import psycopg

from tests.conftest import FIXTURES, run_cli
from tests.support.runners import block_in_second_migration, finish
from tests.support.state import history_rows, meta_rows, snapshot

EXAMPLE = FIXTURES / "example" / "migrations"
NAMES = sorted(p.name for p in EXAMPLE.iterdir())


def test_history_rows_of_one_message_migrations(db_url: str) -> None:
    r = run_cli("up", "--url", db_url, "--migrations-path", str(EXAMPLE))
    assert r.returncode == 0, r.stderr
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT name, checksum, transactional, attempts, duration_ms, "
            "started_at <= finished_at, finished_at <= now() FROM migrunner_history ORDER BY id"
        ).fetchall()
    sums = [hashlib.sha256((EXAMPLE / n).read_bytes()).hexdigest() for n in NAMES]
    assert [(x[0], x[1]) for x in rows] == list(zip(NAMES, sums, strict=True))
    # the concurrently-built index declares transaction:false: the step-by-step path
    assert [x[2] for x in rows] == ["concurrently" not in n for n in NAMES]
    assert all(x[3] == 1 and x[4] >= 0 and x[5] and x[6] for x in rows)
    assert meta_rows(db_url) == tuple(NAMES)


def test_failing_statement_is_named_and_nothing_commits(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "001-ok.sql").write_text("-- migrate:up\nCREATE TABLE ok (id int);\n")
    (folder / "002-bad.sql").write_text(
        "-- migrate:up\nCREATE TABLE half (id int);\nINSERT INTO half VALUES (1);\n"
        "INSERT INTO nope VALUES (1);\nCREATE TABLE never (id int);\n"
    )
    r = run_cli("up", "--url", db_url, "--migrations-path", str(folder))
    assert r.returncode != 0
    assert "002-bad.sql:4" in r.stderr and "42P01" in r.stderr, r.stderr
    assert meta_rows(db_url) == ("001-ok.sql",)
    assert history_rows(db_url) == [
        ("001-ok.sql", "up", "applied"),
        ("002-bad.sql", "up", "failed"),
    ]
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('half'), to_regclass('ok')").fetchone() == (
            None,
            "ok",
        )


def test_nothing_commits_after_the_lock_was_taken_away(db_url: str, tmp_path: Path) -> None:
    """``lock release --force`` while a migration waits inside its message: when it goes on,
    the lock check aborts the message, and the step-by-step path reports the lost lock."""
    run = block_in_second_migration(db_url, EXAMPLE, tmp_path, 5656)
    released = run_cli("lock", "release", "--force", "--url", db_url)
    assert released.returncode == 0, released.stderr
    run.open_gate()
    code, err = finish(run.proc)
    assert code in (4, 5), err  # lock session terminated (4), or the lock was the worker's (5)
    assert "lost the migration lock" in err or "connection lost" in err, err
    after = snapshot(db_url)
    assert (after.schema, after.meta) == (run.before.schema, run.before.meta)
