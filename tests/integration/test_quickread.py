"""The no-op path reads the state through libpq without psycopg (runner/quickread.py): it
must read exactly what the ordinary path reads, step aside on anything unusual, and really
keep psycopg out of a no-op run."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from runner.history import HISTORY_TABLE, HistoryTable
from runner.quickread import parse_conninfo, read_state
from runner.storage import MetaTable
from tests.conftest import FIXTURES, cli_env, run_cli

EXAMPLE = FIXTURES / "example" / "migrations"
META = MetaTable()
HISTORY = HistoryTable(META.ref)


def quick(url: str) -> tuple[tuple[str, ...], dict[str, str], bool] | None:
    """(applied, checksums, meta_exists) as read by the libpq path."""
    params = parse_conninfo(url)
    assert params is not None
    got = read_state(
        params,
        "SequelizeMeta",
        HISTORY_TABLE,
        None,
        lambda schema: (
            MetaTable(schema=schema).applied_sql(),
            HistoryTable(META.ref, schema).checksums_sql("$1"),
        ),
        META.ref,
    )
    return None if got is None else (got.applied, got.checksums, got.meta_exists)


def test_reads_what_psycopg_reads(db_url: str, db: psycopg.Connection) -> None:
    assert quick(db_url) == ((), {}, False)
    assert run_cli("up", "--url", db_url, "--migrations-path", str(EXAMPLE)).returncode == 0
    got = quick(db_url)
    assert got is not None
    applied, checksums, exists = got
    assert exists and applied == tuple(META.applied(db))
    assert checksums == HISTORY.applied_checksums(db) and len(checksums) == len(applied) > 0


def test_steps_aside_when_it_cannot_connect(pg_server: str) -> None:
    missing = pg_server.rsplit("/", 1)[0] + "/migrunner_no_such_database"
    assert quick(missing) is None
    assert quick("postgresql://postgres@127.0.0.1:1/x?connect_timeout=2") is None


def test_parses_urls_as_psycopg_does() -> None:
    for url in (
        "postgresql://u:p%40ss@h1:5433,h2/db?sslmode=require&application_name=x",
        "postgres://postgres@127.0.0.1:5432/app",
        "postgresql:///db?host=/var/run/postgresql",
    ):
        assert parse_conninfo(url) == conninfo_to_dict(url)
    assert parse_conninfo("postgresql://h/db?nosuchkeyword=1") is None


@pytest.mark.parametrize("command", ["up", "status"])
def test_a_noop_run_never_imports_psycopg(db_url: str, command: str) -> None:
    """A no-op ``up`` and ``status`` (as lean as it since issue 16) stay psycopg-free."""
    base = ["up", "--url", db_url, "--migrations-path", str(EXAMPLE)]
    assert run_cli(*base).returncode == 0
    base[0] = command
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "runner", *base],
        env=cli_env(),
        capture_output=True,
        text=True,
        cwd=os.getcwd(),
    )
    expected = "already up to date" if command == "up" else "0 pending"
    assert r.returncode == 0 and expected in r.stdout + r.stderr, r.stderr[-500:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    assert "runner.quickread" in imported
    assert not {m for m in imported if m.split(".")[0] == "psycopg"}
