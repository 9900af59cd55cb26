"""What the CLI says, where, and how it exits: help, run header/counters/summary, heartbeat,
status and history tables, JSON logs, honest waiting, and drift advice (real PostgreSQL)."""

from __future__ import annotations

import json
import queue
import re
import shutil
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import FIXTURES, popen_cli, run_cli

EXAMPLE = FIXTURES / "example" / "migrations"
NAMES = sorted(p.name for p in EXAMPLE.iterdir())
SUCCESS = "Migrations completed successfully"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
MAIN = ["up", "down", "status", "verify", "history", "lock", "wait", "fleet", "snapshot"]


@pytest.fixture
def example(tmp_path: Path) -> Path:
    dst = tmp_path / "migrations"
    shutil.copytree(EXAMPLE, dst)
    return dst


def section(help_text: str, title: str) -> list[str]:
    """The entries (first words) of one section of click's help."""
    lines = help_text.split(f"\n{title}:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [line.split()[0] for line in lines if line.startswith("  ") and line[2] != " "]


# -- help ------------------------------------------------------------------------------------


def test_bare_migrunner_prints_the_usage_and_exits_0() -> None:
    r = run_cli()
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Usage: migrunner [OPTIONS] COMMAND [ARGS]...")
    assert r.stderr == ""


def test_help_lists_main_commands_first_then_sequelize_cli_names() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    main = section(r.stdout, "Commands")
    assert main == [c for c in MAIN if c in main]  # in this order, whoever registered them
    assert {"up", "down", "status", "history", "lock", "wait"} <= set(main)
    aliases = section(r.stdout, "sequelize-cli names")
    assert "db:migrate" in aliases and all(":" in a for a in aliases)
    assert r.stdout.index("\nCommands:") < r.stdout.index("\nsequelize-cli names:")
    body = r.stdout.split("\n", 1)[1]  # the usage line ends with click's "[ARGS]..."
    assert "..." not in body and "…" not in body  # no description cut short
    assert "Examples:" in r.stdout and "Exit codes:" in r.stdout
    for code in range(10):
        assert re.search(rf"^\s+{code}  \S", r.stdout, re.M), code
    assert not URL_WITH_PASSWORD.search(r.stdout)


def test_every_option_with_a_variable_shows_it_and_click_reads_it(
    db_url: str, example: Path
) -> None:
    r = run_cli("up", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())  # click wraps long lines
    for var in [
        "DATABASE_URL",
        "MIGRUNNER_DIRECT_URL",
        "NODE_ENV",
        "MIGRUNNER_MIGRATIONS_PATH",
        "MIGRUNNER_LOCK_TIMEOUT",
        "MIGRUNNER_STATEMENT_LOCK_TIMEOUT",
        "MIGRUNNER_STATEMENT_TIMEOUT",
        "MIGRUNNER_RETRIES",
        "MIGRUNNER_WAIT_TIMEOUT",
        "MIGRUNNER_LOG_FORMAT",
        "MIGRUNNER_ALLOW_DRIFT",
        "MIGRUNNER_STRICT_AWAIT",
        "MIGRUNNER_SETTLE_TIMEOUT",
    ]:
        assert f"[env var: {var}]" in text, var
    assert "Exit codes:" in r.stdout and not URL_WITH_PASSWORD.search(r.stdout)
    # The variables shown are the ones that work: database and folder from the environment.
    st = run_cli("status", env={"DATABASE_URL": db_url, "MIGRUNNER_MIGRATIONS_PATH": str(example)})
    assert st.returncode == 0, st.stderr
    assert st.stdout.splitlines()[-1] == f"0 applied, {len(NAMES)} pending"


def test_hidden_compatibility_options_are_never_suggested() -> None:
    r = run_cli("up", "--seeders")
    assert r.returncode == 2
    assert "No such option '--seeders'" in r.stderr and "seeders-path" not in r.stderr
    typo = run_cli("up", "--dry")
    assert typo.returncode == 2 and "--dry-run" in typo.stderr  # visible ones still are


def test_usage_errors_are_json_when_the_flag_asks() -> None:
    r = run_cli("up", "--log-format", "json", "--no-such-flag")
    assert r.returncode == 2 and r.stdout == ""
    (line,) = r.stderr.splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and record["exit_code"] == 2
    assert "--no-such-flag" in record["msg"] and ISO_UTC.match(record["ts"])
    text = run_cli("up", "--no-such-flag")
    assert text.stderr.startswith("error: No such option")


# -- a run -----------------------------------------------------------------------------------


def test_run_says_where_how_far_and_how_it_ended(db_url: str, example: Path) -> None:
    secret = "Zq9-out-put"
    url = db_url.replace("postgres@", f"postgres:{secret}@")  # trust auth accepts it
    dbname = db_url.rsplit("/", 1)[1]
    r = run_cli("up", "--url", url, "--migrations-path", str(example))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # nothing to warn about: human output is all on stdout
    lines = r.stdout.splitlines()
    assert lines[0] == (
        f"Database postgres@127.0.0.1:5432/{dbname} (from --url); migrations in {example}: "
        f"{len(NAMES)} pending, 0 applied"
    )
    n = len(NAMES)
    for i, name in enumerate(NAMES, 1):
        assert f"[{i}/{n}] == {name}: migrating =======" in lines
        assert any(
            re.fullmatch(rf"\[{i}/{n}\] == {re.escape(name)}: migrated \(\d+\.\d{{3}}s\)", x)
            for x in lines
        )
    assert re.fullmatch(rf"{n} migrations applied in \d+\.\d{{3}}s", lines[-2])
    assert lines[-1] == SUCCESS
    assert secret not in r.stdout + r.stderr

    again = run_cli("up", "--url", url, "--migrations-path", str(example))
    assert again.stdout.splitlines()[-3:] == [
        f"Database postgres@127.0.0.1:5432/{dbname} (from --url); migrations in {example}: "
        f"0 pending, {n} applied",
        "No migrations were executed, database schema was already up to date.",
        SUCCESS,
    ]


def test_config_file_and_environment_are_named_as_sequelize_cli_does(
    db_url: str, tmp_path: Path, example: Path
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text(
        json.dumps({"staging": {"dialect": "postgres", "url": db_url}})
    )
    r = run_cli("up", "--env", "staging", "--migrations-path", str(example), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == [
        'Loaded configuration file "config/config.json".',
        'Using environment "staging".',
    ]
    assert "(from config/config.json [staging])" in r.stdout.splitlines()[2]


def test_json_log_iso_timestamps_integer_durations_plain_storage(
    db_url: str, example: Path
) -> None:
    base = ("--url", db_url, "--migrations-path", str(example))
    r = run_cli("up", "--log-format", "json", *base)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert all(ISO_UTC.match(rec["ts"]) for rec in records)
    durations = [rec["duration_ms"] for rec in records if "duration_ms" in rec]
    assert len(durations) >= len(NAMES) and all(type(d) is int for d in durations)
    first = records[0]
    # the storage schema is resolved once at start (current_schema()), so it is always named
    assert first["pending"] == len(NAMES) and first["storage"] == "public.SequelizeMeta"
    done = [rec for rec in records if rec["msg"].endswith(")") and "index" in rec]
    assert [(rec["index"], rec["total"]) for rec in done] == [
        (i, len(NAMES)) for i in range(1, len(NAMES) + 1)
    ]
    assert records[-1]["msg"] == SUCCESS
    st = run_cli("status", "--json", "--schema", "public", *base)
    assert json.loads(st.stdout)["storage"] == "public.SequelizeMeta"
    history = json.loads(run_cli("history", "--json", *base).stdout)
    assert history and all(type(h["duration_ms"]) is int for h in history)


def test_heartbeat_names_the_long_statement(
    db_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "001-slow.sql").write_text(
        "-- migrate:up\nCREATE TABLE slow (a int);\nSELECT pg_advisory_xact_lock(424242);\n"
    )
    db.execute("SELECT pg_advisory_lock(424242)")  # the migration waits until we release it
    proc = popen_cli(
        "up", "--url", db_url, "--migrations-path", str(folder), env={"MIGRUNNER_HEARTBEAT": "0.3"}
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: [lines.put(x) for x in stdout], daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        beat = ""
        while "still running" not in beat:
            beat = lines.get(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        db.execute("SELECT pg_advisory_unlock(424242)")
    assert proc.wait(timeout=60) == 0
    assert beat.startswith("[1/1] .. 001-slow.sql: still running after ")
    assert "statement running for" in beat and "waiting on Lock:advisory" in beat
    assert beat.rstrip().endswith("SELECT pg_advisory_xact_lock(424242)")


# -- status and history ----------------------------------------------------------------------


def test_status_columns_summary_and_readiness_exit(db_url: str, example: Path) -> None:
    base = ("--url", db_url, "--migrations-path", str(example))
    assert run_cli("up", "--to", NAMES[1], *base).returncode == 0
    (example / NAMES[0]).write_text((example / NAMES[0]).read_text() + "\n-- edited\n")
    r = run_cli("status", "--exit-code", *base)
    assert r.returncode == 3
    *rows, summary = r.stdout.splitlines()
    assert [row.split()[:2] for row in rows] == [
        ["up", NAMES[0]],
        ["up", NAMES[1]],
        ["down", NAMES[2]],
        ["down", NAMES[3]],
    ]
    assert len({row.index(row.split()[1]) for row in rows}) == 1  # names in one column
    assert len({row.index(" sql") for row in rows}) == 1  # kinds in one column
    assert rows[0].endswith("file changed since applied")
    assert summary == "2 applied, 2 pending; drift: 0 file(s) missing, 1 changed since applied"
    assert "error" not in r.stderr and "file changed since applied" in r.stderr


def test_history_has_a_header_and_aligned_columns(db_url: str, example: Path) -> None:
    base = ("--url", db_url, "--migrations-path", str(example))
    assert run_cli("history", *base).stdout == "no history yet\n"
    assert run_cli("up", *base).returncode == 0
    r = run_cli("history", *base)
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert header.split() == [
        "finished", "dir", "outcome", "migration", "duration", "tries", "runner", "note",
    ]  # fmt: skip
    assert len(rows) == len(NAMES)
    col = header.index("migration")
    assert sorted(row[col:].split()[0] for row in rows) == NAMES
    assert all(row[header.index("outcome") :].startswith("applied") for row in rows)


# -- honest connection handling --------------------------------------------------------------


def test_wait_timeout_waits_the_full_time_and_says_so() -> None:
    started = time.monotonic()
    r = run_cli("wait", "--url", "postgresql://postgres@127.0.0.1:1/x", "--wait-timeout", "6")
    waited = time.monotonic() - started
    assert r.returncode == 5
    assert waited >= 6  # the whole --wait-timeout, not a prefix of it
    attempts = [x for x in r.stdout.splitlines() if x.startswith("waiting for the database")]
    assert len(attempts) >= 2 and "(attempt 1, 0s of 6s)" in attempts[0]
    (error,) = r.stderr.splitlines()
    assert re.search(r"gave up after waiting 6s of --wait-timeout 6s, \d+ attempts\)$", error)


def test_every_applied_migration_missing_is_called_a_wrong_folder_not_drift(
    db_url: str, example: Path, tmp_path: Path
) -> None:
    assert run_cli("up", "--url", db_url, "--migrations-path", str(example)).returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "20990101-other.sql").write_text("-- migrate:up\nSELECT 1;\n")
    r = run_cli("up", "--url", db_url, "--migrations-path", str(other))
    assert r.returncode == 6
    (line,) = r.stderr.splitlines()
    assert "that is every migration applied to" in line
    assert "wrong --migrations-path, or the wrong database" in line and "--allow-drift" not in line
    st = run_cli("status", "--url", db_url, "--migrations-path", str(other))
    assert "wrong --migrations-path" in st.stderr and "--allow-drift" not in st.stderr
    # One missing file among present ones is drift, and --allow-drift is the way past it.
    (example / NAMES[0]).unlink()
    partial = run_cli("up", "--url", db_url, "--migrations-path", str(example))
    assert partial.returncode == 6 and "--allow-drift" in partial.stderr


def test_db_migrate_status_keeps_sequelize_cli_lines(db_url: str, example: Path) -> None:
    base = ("--url", db_url, "--migrations-path", str(example))
    assert run_cli("up", "--to", NAMES[0], *base).returncode == 0
    r = run_cli("db:migrate:status", *base)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"up {NAMES[0]}"] + [f"down {n}" for n in NAMES[1:]]
