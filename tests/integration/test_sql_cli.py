"""The CLI on SQL migrations against a real PostgreSQL: up/down/status/dry-run, atomicity,
drift, interop with a sequelize-cli SequelizeMeta, connection sources, JSON logs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg
import pytest

from runner.lock import lock_key
from tests.conftest import FIXTURES, run_cli
from tests.support.pg import url_parts
from tests.support.state import history_rows, meta_rows, snapshot

EXAMPLE = FIXTURES / "example" / "migrations"
NAMES = sorted(p.name for p in EXAMPLE.iterdir())
SUCCESS = "Migrations completed successfully"


def mig(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def example(tmp_path: Path) -> Path:
    dst = tmp_path / "migrations"
    shutil.copytree(EXAMPLE, dst)
    return dst


def tables(db: psycopg.Connection) -> set[str]:
    return {
        r[0]
        for r in db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    }


def test_up_status_down_round_trip(db_url: str, db: psycopg.Connection, example: Path) -> None:
    r = run_cli("up", "--url", db_url, "--migrations-path", str(example))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == SUCCESS
    assert meta_rows(db_url) == tuple(NAMES)
    assert {"users", "posts", "post_counts"} <= tables(db)
    assert db.execute("SELECT count(*) FROM posts").fetchone() == (1,)
    idx = db.execute("SELECT indexname FROM pg_indexes WHERE indexname = 'posts_author_idx'")
    assert idx.fetchone() == ("posts_author_idx",)
    assert history_rows(db_url) == [(n, "up", "applied") for n in NAMES]
    checks = db.execute("SELECT name, checksum, runner_version FROM migrunner_history").fetchall()
    assert all(len(c[1]) == 64 and c[2] for c in checks)

    st = run_cli("status", "--url", db_url, "--migrations-path", str(example))
    assert st.returncode == 0
    *rows, summary = st.stdout.splitlines()
    assert [row.split() for row in rows] == [["up", n, "sql"] for n in NAMES]
    assert summary == f"{len(NAMES)} applied, 0 pending"

    again = run_cli("up", "--url", db_url, "--migrations-path", str(example))
    assert again.returncode == 0
    assert "No migrations were executed" in again.stdout and SUCCESS in again.stdout

    d = run_cli("down", "--all", "--url", db_url, "--migrations-path", str(example))
    assert d.returncode == 0, d.stderr
    assert meta_rows(db_url) == ()
    assert tables(db) == {"SequelizeMeta", "migrunner_history"}
    assert db.execute("SELECT count(*) FROM pg_type WHERE typname = 'post_state'").fetchone() == (
        0,
    )


def test_to_step_and_name(db_url: str, example: Path) -> None:
    base = ("--url", db_url, "--migrations-path", str(example))
    assert run_cli("up", "--to", NAMES[1], *base).returncode == 0
    assert meta_rows(db_url) == tuple(NAMES[:2])
    r = run_cli("up", "--to", "nope.sql", *base)
    assert r.returncode == 2 and "--to 'nope.sql': no such migration" in r.stderr
    assert run_cli("up", *base).returncode == 0
    assert run_cli("down", "--step", "2", *base).returncode == 0
    assert meta_rows(db_url) == tuple(NAMES[:2])
    assert run_cli("db:migrate:undo", *base).returncode == 0
    assert meta_rows(db_url) == tuple(NAMES[:1])
    assert run_cli("db:migrate", *base).returncode == 0
    assert run_cli("db:migrate:undo:all", "--to", NAMES[2], *base).returncode == 0
    assert meta_rows(db_url) == tuple(NAMES[:2])


def test_dry_run_changes_nothing(db_url: str, example: Path) -> None:
    base = ("--url", db_url, "--migrations-path", str(example))
    assert run_cli("up", "--to", NAMES[0], *base).returncode == 0
    before = snapshot(db_url)
    r = run_cli("up", "--dry-run", *base)
    assert r.returncode == 0, r.stderr
    assert "CREATE TYPE post_state AS ENUM" in r.stdout
    assert "-- [non-transactional (not executed in dry run)]" in r.stdout
    assert "CREATE VIEW post_counts" in r.stdout
    assert SUCCESS not in r.stdout + r.stderr
    after = snapshot(db_url)
    assert (after.schema, after.meta, after.data) == (before.schema, before.meta, before.data)
    assert after.sequences != before.sequences  # the documented cost: the INSERT used an id

    fresh_before = snapshot(db_url)
    assert run_cli("down", "--all", "--dry-run", *base).returncode == 0
    assert snapshot(db_url) == fresh_before


def test_dry_run_on_empty_database_creates_no_tables(db_url: str, example: Path) -> None:
    before = snapshot(db_url)
    r = run_cli("up", "--dry-run", "--url", db_url, "--migrations-path", str(example))
    assert r.returncode == 0, r.stderr
    assert snapshot(db_url) == before


def test_dry_run_reports_a_failing_migration(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    mig(folder, "001-ok.sql", "-- migrate:up\nCREATE TABLE a (id int);\n")
    mig(folder, "002-bad.sql", "-- migrate:up\nINSERT INTO missing VALUES (1);\n")
    before = snapshot(db_url)
    r = run_cli("up", "--dry-run", "--url", db_url, "--migrations-path", str(folder))
    assert r.returncode == 1
    assert "002-bad.sql:2" in r.stderr and "42P01" in r.stderr
    assert snapshot(db_url) == before


def test_failing_migration_leaves_no_trace(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    mig(
        folder,
        "001-ok.sql",
        "-- migrate:up\nCREATE TABLE a (id int);\n-- migrate:down\nDROP TABLE a;\n",
    )
    base = ("--url", db_url, "--migrations-path", str(folder))
    assert run_cli("up", *base).returncode == 0
    before = snapshot(db_url)
    mig(
        folder,
        "002-half.sql",
        "-- migrate:up\n"
        "CREATE TABLE b (id int);\n"
        "INSERT INTO a VALUES (1);\n"
        "\n"
        "INSERT INTO a\n"
        "  VALUES ('not a number');\n"
        "CREATE TABLE c (id int);\n",
    )
    r = run_cli("up", *base)
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert "002-half.sql" in line and "002-half.sql:6" in line, line
    assert "[SQLSTATE 22P02]" in line and "INSERT INTO a VALUES ('not a number')" in line
    after = snapshot(db_url)
    assert after.schema == before.schema and after.meta == before.meta
    assert history_rows(db_url)[-1] == ("002-half.sql", "up", "failed")


def test_picks_up_a_sequelize_cli_meta_table(
    db_url: str, db: psycopg.Connection, example: Path
) -> None:
    # Exactly what sequelize-cli 6 (umzug SequelizeStorage) creates, with timestamps enabled.
    db.execute(
        'CREATE TABLE IF NOT EXISTS "SequelizeMeta" ("name" VARCHAR(255) NOT NULL UNIQUE , '
        '"createdAt" TIMESTAMP WITH TIME ZONE NOT NULL, "updatedAt" TIMESTAMP WITH TIME ZONE '
        'NOT NULL, PRIMARY KEY ("name"))'
    )
    run_first = run_cli("up", "--to", NAMES[0], "--url", db_url, "--migrations-path", str(example))
    assert run_first.returncode == 0
    r = run_cli("up", "--url", db_url, "--migrations-path", str(example))
    assert r.returncode == 0, r.stderr
    rows = db.execute('SELECT name, "createdAt" IS NOT NULL FROM "SequelizeMeta" ORDER BY name')
    assert rows.fetchall() == [(n, True) for n in NAMES]


def test_sequelize_cli_applied_names_are_skipped(
    db_url: str, db: psycopg.Connection, example: Path
) -> None:
    db.execute(
        'CREATE TABLE "SequelizeMeta" ("name" VARCHAR(255) NOT NULL UNIQUE , PRIMARY KEY ("name"))'
    )
    db.execute(
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text, display_name text, "
        "created_at timestamptz, updated_at timestamptz)"
    )
    db.execute(
        "CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN RETURN NEW; END$$"
    )
    db.execute('INSERT INTO "SequelizeMeta" VALUES (%s)', (NAMES[0],))
    r = run_cli("status", "--json", "--url", db_url, "--migrations-path", str(example))
    doc = json.loads(r.stdout)
    assert doc["pending"] == NAMES[1:] and doc["missing"] == [] and doc["changed"] == []
    assert run_cli("up", "--url", db_url, "--migrations-path", str(example)).returncode == 0
    assert meta_rows(db_url) == tuple(NAMES)


def test_drift_blocks_up_until_allowed(db_url: str, example: Path) -> None:
    base = ("--url", db_url, "--migrations-path", str(example))
    assert run_cli("up", "--to", NAMES[1], *base).returncode == 0
    first = example / NAMES[0]
    first.write_text(first.read_text() + "\n-- edited after it ran\n")
    st = run_cli("status", "--json", *base)
    assert json.loads(st.stdout)["changed"] == [NAMES[0]]
    before = snapshot(db_url)
    r = run_cli("up", *base)
    assert r.returncode == 6 and "file changed since applied: " + NAMES[0] in r.stderr
    assert snapshot(db_url) == before
    (example / NAMES[1]).unlink()
    r = run_cli("up", *base)
    assert r.returncode == 6 and "applied but file missing: " + NAMES[1] in r.stderr
    assert run_cli("up", "--allow-drift", *base).returncode == 0
    assert set(meta_rows(db_url)) == set(NAMES)


def test_concurrent_index_is_detected_and_rerun_outside_transaction(
    db_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    mig(folder, "001-t.sql", "-- migrate:up\nCREATE TABLE t (a int);\n")
    mig(folder, "002-idx.sql", "-- migrate:up\nCREATE INDEX CONCURRENTLY t_a ON t (a);\n")
    r = run_cli("up", "--url", db_url, "--migrations-path", str(folder))
    assert r.returncode == 0, r.stderr
    assert "SQLSTATE 25001" in r.stderr and "outside a transaction" in r.stderr
    row = db.execute(
        "SELECT transactional, note FROM migrunner_history WHERE name = '002-idx.sql'"
    ).fetchone()
    assert row == (False, "re-run outside a transaction after SQLSTATE 25001")
    assert db.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_a'::regclass"
    ).fetchone() == (True,)


def test_transaction_control_in_transactional_sql_is_refused(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    mig(folder, "001-t.sql", "-- migrate:up\nBEGIN;\nCREATE TABLE t (a int);\nCOMMIT;\n")
    before = snapshot(db_url)
    r = run_cli("up", "--url", db_url, "--migrations-path", str(folder))
    assert r.returncode == 2 and "001-t.sql:2" in r.stderr and "transaction:false" in r.stderr
    assert snapshot(db_url) == before


def test_db_env_parts_as_the_job_passes_them(db_url: str, example: Path) -> None:
    r = run_cli("db:migrate", "--migrations-path", str(example), env=url_parts(db_url))
    assert r.returncode == 0, r.stderr
    assert meta_rows(db_url) == tuple(NAMES)
    r = run_cli("status", "--migrations-path", str(example), env={"DATABASE_URL": db_url})
    assert r.returncode == 0 and r.stdout.count("up ") == len(NAMES)


def test_json_log_format(db_url: str, example: Path) -> None:
    r = run_cli("up", "--log-format", "json", "--url", db_url, "--migrations-path", str(example))
    assert r.returncode == 0
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert records[-1]["msg"] == SUCCESS and records[-1]["applied"] == NAMES
    assert {"ts", "level", "msg"} <= set(records[0])
    bad = run_cli("up", "--log-format", "json", "--url", db_url, "--migrations-path", "/nope")
    err = json.loads(bad.stderr.strip().splitlines()[-1])
    assert err["level"] == "error" and err["exit_code"] == 2


def test_status_exit_code_for_readiness_gates(db_url: str, example: Path) -> None:
    base = ("--url", db_url, "--migrations-path", str(example))
    r = run_cli("status", "--exit-code", *base)
    # Pending is the expected state of a readiness gate: exit 3, a summary, no error line.
    assert r.returncode == 3 and r.stdout.splitlines()[-1] == f"0 applied, {len(NAMES)} pending"
    assert "error" not in r.stderr
    assert run_cli("up", *base).returncode == 0
    assert run_cli("status", "--exit-code", *base).returncode == 0


def test_noop_run_needs_no_lock_but_a_real_run_waits_for_it(
    db_url: str, db: psycopg.Connection, example: Path
) -> None:
    base = ("--url", db_url, "--migrations-path", str(example), "--lock-timeout", "0.5")
    db.execute("SELECT pg_advisory_lock(%s)", (lock_key(None, "SequelizeMeta"),))
    r = run_cli("up", *base)
    assert r.returncode == 4, r.stderr
    assert (
        "could not take the migration lock" in r.stderr and f"pid {db.info.backend_pid}" in r.stderr
    )
    assert meta_rows(db_url) == ()
    db.execute("SELECT pg_advisory_unlock_all()")
    assert run_cli("up", *base).returncode == 0
    db.execute("SELECT pg_advisory_lock(%s)", (lock_key(None, "SequelizeMeta"),))
    noop = run_cli("up", *base)
    assert noop.returncode == 0 and "already up to date" in noop.stdout


def test_wait_and_unreachable_database(tmp_path: Path) -> None:
    r = run_cli("wait", "--url", "postgresql://postgres@127.0.0.1:1/x", "--wait-timeout", "1")
    assert r.returncode == 5 and "gave up after waiting 1s" in r.stderr
    r = run_cli("wait", "--url", "postgresql://postgres@127.0.0.1:5432/postgres")
    assert r.returncode == 0 and "is ready" in r.stdout


def test_noop_run_starts_no_node(db_url: str, tmp_path: Path) -> None:
    """With node off the PATH, a JS run fails to start its bridge, but a no-op run (every pod
    start) succeeds: it never needs node."""
    sweep = FIXTURES / "sweep" / "migrations"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # nothing on PATH, and no node from the [node] extra either
    no_node = {"PATH": str(bin_dir), "MIGRUNNER_NODE": str(bin_dir / "node")}
    base = ("--url", db_url, "--migrations-path", str(sweep))
    r = run_cli("up", *base, env=no_node)
    assert r.returncode == 2 and "node not found" in r.stderr, r.stderr
    assert meta_rows(db_url) == ()  # node is started before the first migration runs
    assert run_cli("up", *base).returncode == 0
    noop = run_cli("up", *base, env=no_node)
    assert noop.returncode == 0, noop.stderr
    assert "already up to date" in noop.stdout
    assert run_cli("status", "--exit-code", *base, env=no_node).returncode == 0


def test_password_never_shows(db_url: str, db: psycopg.Connection, example: Path) -> None:
    """Dry run, JSON logs, status/history/lock JSON and application_name: no password."""
    secret = "Zq9-s3cret-xyz"
    url = db_url.replace("postgres@", f"postgres:{secret}@")  # trust auth accepts it
    base = ("--url", url, "--migrations-path", str(example))
    outputs = [
        run_cli("up", "--dry-run", "--log-format", "json", *base),
        run_cli("up", "--log-format", "json", *base, env={"POD_NAME": "p", "DB_PASSWORD": secret}),
        run_cli("status", "--json", *base),
        run_cli("history", "--json", *base),
        run_cli("lock", "status", "--json", *base),
        run_cli("up", *base, env={"DATABASE_URL": url}),
        run_cli("down", "--all", "--dry-run", *base),
    ]
    assert [r.returncode for r in outputs] == [0, 0, 0, 0, 0, 0, 0]
    for r in outputs:
        assert secret not in r.stdout + r.stderr
    names = db.execute(
        "SELECT string_agg(coalesce(runner_host, '') || coalesce(runner_pod, '') || coalesce(note, '') || coalesce(error, ''), ' ') FROM migrunner_history"
    ).fetchone()
    assert names is not None and secret not in (names[0] or "")


def test_statement_timeout(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    mig(folder, "001-slow.sql", "-- migrate:up\nCREATE TABLE t (a int);\nSELECT pg_sleep(10);\n")
    r = run_cli(
        "up", "--statement-timeout", "0.3", "--url", db_url, "--migrations-path", str(folder)
    )
    assert r.returncode == 1
    assert "canceling statement due to statement timeout [SQLSTATE 57014]" in r.stderr
    assert "001-slow.sql:3" in r.stderr
    assert meta_rows(db_url) == ()
