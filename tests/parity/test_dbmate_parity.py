"""dbmate's folder format, read as dbmate reads it, compared with the real dbmate from npm.

The fixture folder has what public dbmate apps have: a ``schema.sql`` dump beside the
migrations (not a migration: no version), a ``-- migrate:down`` section with a syntax error
(dbmate reads it only to roll back), a section option dbmate does not know, and a URL with
``?search_path=`` (which libpq alone refuses). Both tools migrate their own database; the
schemas, the data and where each keeps its bookkeeping must agree.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.conftest import FIXTURES, cli_env, run_cli
from tests.support.catalog import diff_fingerprints, fingerprint
from tests.support.node_apps import ensure_npm_ci
from tests.support.pg import create_database, drop_database

APP = FIXTURES / "dbmate"
# The binary package for this platform (x86_64 Linux, as our machines and CI): the `dbmate`
# wrapper's optional packages for other platforms cannot all be resolved from the registry
# mirror here, and `npm ci` refuses a lock file that lacks them.
DBMATE = APP / "node_modules" / "@dbmate" / "linux-x64" / "bin" / "dbmate"
MIGRATIONS = APP / "db" / "migrations"
VERSIONS = ["20240101000000", "20240101000100", "20240101000200"]
BOOKKEEPING = ("schema_migrations", "SequelizeMeta", "migrunner_history", "migrunner_verified")


@pytest.fixture(scope="module")
def dbmate() -> Path:
    """The dbmate binary from npm (``npm ci`` of the fixture, as .ci/run does, if missing)."""
    ensure_npm_ci(APP)
    assert DBMATE.is_file(), f"npm ci of {APP} installed no {DBMATE}"
    return DBMATE


@pytest.fixture
def two_dbs(pg_server: str) -> Iterator[tuple[str, str]]:
    a, b = create_database(pg_server), create_database(pg_server)
    try:
        yield a, b
    finally:
        drop_database(pg_server, a)
        drop_database(pg_server, b)


def with_query(url: str, query: str) -> str:
    return urlunsplit(urlsplit(url)._replace(query=query))


def app_rows(url: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT email, note, plan FROM app.accounts ORDER BY id").fetchall()


def test_dbmate_folder_and_url_match_dbmate(dbmate: Path, two_dbs: tuple[str, str]) -> None:
    query = "sslmode=disable&search_path=app,public"
    by_dbmate, by_migrunner = (with_query(u, query) for u in two_dbs)
    done = subprocess.run(
        [
            str(dbmate),
            "--url",
            by_dbmate,
            "--migrations-dir",
            str(MIGRATIONS),
            "--no-dump-schema",
            "up",
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    r = run_cli("up", "--url", by_migrunner, "--migrations-path", str(MIGRATIONS))
    assert r.returncode == 0, r.stderr
    # one notice for the dump, one for the unknown option; nothing refused
    assert r.stderr.count("schema.sql") == 1
    assert "a .sql migration's name starts with its version" in r.stderr
    assert "ignoring unknown section option 'reviewed:yes'" in r.stderr

    a = fingerprint(two_dbs[0], schemas=("app", "public"), exclude_tables=BOOKKEEPING)
    b = fingerprint(two_dbs[1], schemas=("app", "public"), exclude_tables=BOOKKEEPING)
    assert a == b, diff_fingerprints(a, b, ("dbmate", "migrunner"))
    assert app_rows(two_dbs[0]) == app_rows(two_dbs[1]) == [("first@example.com", "none", "free")]

    # bookkeeping: each tool's table in the first schema of the search_path
    with psycopg.connect(two_dbs[0]) as conn:
        versions = conn.execute("SELECT version FROM app.schema_migrations ORDER BY 1").fetchall()
    assert [v[0] for v in versions] == VERSIONS
    with psycopg.connect(two_dbs[1]) as conn:
        names = conn.execute('SELECT name FROM app."SequelizeMeta" ORDER BY 1').fetchall()
        where = conn.execute(
            "SELECT relnamespace::regnamespace::text FROM pg_class "
            "WHERE relname IN ('SequelizeMeta', 'migrunner_history') ORDER BY relname"
        ).fetchall()
    assert [n[0] for n in names] == sorted(p.name for p in MIGRATIONS.glob("2*.sql"))
    assert where == [("app",), ("app",)]


def test_broken_down_section_fails_only_when_rolled_back(db_url: str) -> None:
    url = with_query(db_url, "search_path=app,public")
    base = ("--url", url, "--migrations-path", str(MIGRATIONS))
    assert run_cli("up", *base).returncode == 0
    undo_index = run_cli("down", *base)
    assert undo_index.returncode == 0, undo_index.stderr
    before = fingerprint(db_url, schemas=("app",))
    r = run_cli("down", *base)
    assert r.returncode == 2
    assert f"{MIGRATIONS / '20240101000100_broken_down.sql'}:7: syntax error" in r.stderr
    assert fingerprint(db_url, schemas=("app",)) == before
