"""Losing the lock: a runner without its lock never commits (by construction: the lock is held
by the session running the migration), lock status/release reach only their own lock, a
migration terminating other backends does not take the lock down, and a waiter whose
connection drops exits 5 with one line."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from runner.lock import lock_key, pg_locks_ids
from tests.conftest import popen_cli, run_cli
from tests.support.runners import DEFAULT_KEY, finish
from tests.support.state import backends, history_rows, wait_for

GATE = 7171


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


DEFERRED = f"""-- migrate:up
CREATE TABLE audit (id int);
CREATE FUNCTION wait_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock({GATE});
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER audit_commit AFTER INSERT ON audit
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION wait_at_commit();
INSERT INTO audit VALUES (1);
"""


def holder_pid(db: psycopg.Connection, key: int = DEFAULT_KEY) -> int | None:
    classid, objid = pg_locks_ids(key)
    row = db.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s::oid "
        "AND objid = %s::oid AND objsubid = 1 "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (classid, objid),
    ).fetchone()
    return row[0] if row else None


def committing(db_url: str, name: str) -> bool:
    """The runner's COMMIT is running the deferred trigger, which waits on the gate: the COMMIT
    alone, or a migration sent as one message (pg_stat_activity shows its first 1 KiB, not
    the COMMIT at its end; the trigger is deferred, so a lock wait there is the commit's)."""
    with psycopg.connect(db_url, autocommit=True) as c:
        row = c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s "
            "AND wait_event_type = 'Lock' "
            "AND (query ILIKE 'COMMIT%%' OR query ILIKE '%%CREATE CONSTRAINT TRIGGER audit_commit%%')",
            (f"migrunner/% running {name}",),
        ).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("how", ["dba-terminates-holder", "lock-release-force"])
def test_no_commit_without_the_lock_even_inside_commit(
    db: psycopg.Connection, db_url: str, tmp_path: Path, how: str
) -> None:
    folder = write(tmp_path / "m", {"001-deferred.sql": DEFERRED})
    db.execute("SELECT pg_advisory_lock(%s)", (GATE,))
    proc = popen_cli(
        "up", "--url", db_url, "--migrations-path", str(folder), "--statement-lock-timeout", "60"
    )
    wait_for(lambda: committing(db_url, "001-deferred.sql"), what="COMMIT waiting on the gate")
    if how == "dba-terminates-holder":
        pid = holder_pid(db)
        assert pid is not None
        db.execute("SELECT pg_terminate_backend(%s)", (pid,))  # the session in pg_locks
    else:
        r = run_cli("lock", "release", "--force", "--url", db_url)
        assert r.returncode == 0, r.stderr
    db.execute("SELECT pg_advisory_unlock(%s)", (GATE,))  # the trigger may go on: too late
    code, err = finish(proc)
    assert code == 4, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: lost the migration lock while running 001-deferred.sql")
    assert "rolled it back" in last
    assert db.execute("SELECT to_regclass('audit')").fetchone() == (None,)
    assert db.execute('SELECT count(*) FROM "SequelizeMeta"').fetchone() == (0,)
    assert history_rows(db_url) == [("001-deferred.sql", "up", "failed")]
    error = db.execute("SELECT error FROM migrunner_history").fetchone()
    assert error is not None and "lost the migration lock" in error[0]


def test_a_migration_that_terminates_other_sessions_keeps_the_lock(
    db: psycopg.Connection, db_url: str, tmp_path: Path
) -> None:
    folder = write(
        tmp_path / "m",
        {
            "001-kick.sql": "-- migrate:up\n"
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity\n"
            "  WHERE datname = current_database() AND pid <> pg_backend_pid();\n"
            "CREATE TABLE after_kick (id int);\n",
            "002-next.sql": "-- migrate:up\nCREATE TABLE next_one (id int);\n",
        },
    )
    r = run_cli("up", "--url", db_url, "--migrations-path", str(folder))
    assert r.returncode == 0, r.stderr
    with psycopg.connect(db_url, autocommit=True) as fresh:  # `db` was one of those kicked
        assert fresh.execute('SELECT count(*) FROM "SequelizeMeta"').fetchone() == (2,)
        assert fresh.execute("SELECT to_regclass('next_one')").fetchone() != (None,)


def test_lock_status_and_release_reach_only_their_own_lock(
    db: psycopg.Connection, db_url: str, tmp_path: Path
) -> None:
    gate_a, gate_b = GATE + 1, GATE + 2
    folder_a = write(
        tmp_path / "a",
        {
            "001-a.sql": f"-- migrate:up\nCREATE TABLE ta (id int);\nSELECT pg_advisory_xact_lock({gate_a});\n"
        },
    )
    folder_b = write(
        tmp_path / "b",
        {
            "001-b.sql": f"-- migrate:up\nCREATE TABLE tb (id int);\nSELECT pg_advisory_xact_lock({gate_b});\n"
        },
    )
    db.execute("SELECT pg_advisory_lock(%s), pg_advisory_lock(%s)", (gate_a, gate_b))

    def runner(folder: Path, table: str):  # type: ignore[no-untyped-def]
        return popen_cli(
            "up", "--url", db_url, "--migrations-path", str(folder), "--table", table,
            "--statement-lock-timeout", "60",
        )  # fmt: skip

    a = runner(folder_a, "MetaA")
    wait_for(lambda: backends(db_url, "migrunner/% running 001-a.sql"), what="A runs")
    a_waiter = runner(folder_a, "MetaA")
    b = runner(folder_b, "MetaB")
    wait_for(lambda: backends(db_url, "migrunner/% running 001-b.sql"), what="B runs")
    wait_for(lambda: backends(db_url, "migrunner/% waiting %"), what="A's waiter")
    ((a_pid, *_),) = backends(db_url, "migrunner/% running 001-a.sql")

    status = run_cli("lock", "status", "--json", "--table", "MetaB", "--url", db_url)
    info = json.loads(status.stdout)
    assert info["key"] == lock_key("public", "MetaB")
    assert info["running_migration"] == "001-b.sql" and info["waiters"] == []
    assert [w["pid"] for w in info["running_backends"]] == [info["holder"]["pid"]]

    r = run_cli("lock", "release", "--force", "--table", "MetaB", "--url", db_url)
    assert r.returncode == 0, r.stderr
    code, err = finish(b)
    assert code == 4, err
    assert a.poll() is None and backends(db_url, "migrunner/% running 001-a.sql")[0][0] == a_pid
    db.execute("SELECT pg_advisory_unlock(%s), pg_advisory_unlock(%s)", (gate_a, gate_b))
    assert finish(a)[0] == 0 and finish(a_waiter)[0] == 0
    assert db.execute("SELECT to_regclass('ta') IS NOT NULL, to_regclass('tb')").fetchone() == (
        True,
        None,
    )


def test_waiter_whose_connection_drops_exits_5(
    db: psycopg.Connection, db_url: str, tmp_path: Path
) -> None:
    folder = write(tmp_path / "m", {"001-a.sql": "-- migrate:up\nCREATE TABLE a (id int);\n"})
    db.execute("SELECT pg_advisory_lock(%s)", (DEFAULT_KEY,))
    proc = popen_cli("up", "--url", db_url, "--migrations-path", str(folder))
    ((pid, *_),) = wait_for(lambda: backends(db_url, "migrunner/% waiting %"), what="waiter")
    db.execute("SELECT pg_terminate_backend(%s)", (pid,))
    code, err = finish(proc)
    assert code == 5, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: lost the connection while waiting for the migration lock")
    assert lines[-1].endswith("nothing ran")


def test_a_js_migration_writing_through_its_own_connection_stops_with_the_lock(
    db: psycopg.Connection, db_url: str, tmp_path: Path
) -> None:
    """Its own Sequelize instance is outside the runner's session: when the lock's session
    ends while node waits, node is killed at once, so its next write never happens."""
    folder = write(
        tmp_path / "m",
        {
            "001-own.js": "const { Sequelize } = require('sequelize');\n"
            "module.exports = { useTransaction: false, async up() {\n"
            "  const own = new Sequelize(process.env.DATABASE_URL, { logging: false });\n"
            "  await own.query('CREATE TABLE own_rows (n int)');\n"
            "  await own.query('INSERT INTO own_rows VALUES (1)');\n"
            f"  await own.query('SELECT pg_advisory_lock({GATE})');\n"
            "  await own.query('INSERT INTO own_rows VALUES (2)');\n"
            "  await own.close();\n"
            "}, async down() {} };\n",
        },
    )
    db.execute("SELECT pg_advisory_lock(%s)", (GATE,))
    proc = popen_cli(
        "up", "--url", db_url, "--migrations-path", str(folder), env={"DATABASE_URL": db_url}
    )
    wait_for(
        lambda: (
            db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'SELECT pg_advisory_lock%%'"
            ).fetchone()
            == (1,)
        ),
        what="the migration's own connection waiting on the gate",
    )
    pid = holder_pid(db)
    assert pid is not None
    db.execute("SELECT pg_terminate_backend(%s)", (pid,))
    code, err = finish(proc, timeout=20)  # without the gate opening: node was stopped
    assert code == 4, err
    assert "lost the migration lock while running 001-own.js" in err.strip().splitlines()[-1]
    db.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
    wait_for(
        lambda: (
            db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            ).fetchone()
            == (0,)
        ),
        what="every other session gone",
    )
    assert [r[0] for r in db.execute("SELECT n FROM own_rows")] == [1]
    assert db.execute('SELECT count(*) FROM "SequelizeMeta"').fetchone() == (0,)
