"""JS migrations that reach past the bridge: their own database connections during a dry run,
and ``COMMIT AND CHAIN`` / ``ROLLBACK AND CHAIN`` inside the runner's transaction.

Real PostgreSQL, real node, the real sequelize-cli (the pitfalls app's) for the end states.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import run_cli
from tests.integration.test_pitfalls import APP, sequelize_cli, snapshot
from tests.support.node_apps import ensure_npm_ci
from tests.support.pg import create_database, drop_database
from tests.support.state import meta_rows
from tests.support.state import snapshot as dump_snapshot

DRY_OWN = APP / "dry-own"
NOT_REHEARSED = "-- not rehearsed: opens its own database connection"


@pytest.fixture(scope="session")
def seq_cli() -> Path:
    """The pitfalls app with its pinned sequelize-cli installed."""
    return ensure_npm_ci(APP)


@pytest.fixture
def reference_db(pg_server: str) -> Iterator[str]:
    url = create_database(pg_server)
    try:
        yield url
    finally:
        drop_database(pg_server, url)


def migrunner(url: str, folder: Path, *args: str):  # type: ignore[no-untyped-def]
    return run_cli(
        "up",
        "--url",
        url,
        "--migrations-path",
        str(folder),
        *args,
        env={"DATABASE_URL": url},
        cwd=APP,
    )


def plan_sections(out: str) -> dict[str, str]:
    """The dry-run plan, per migration (its header line "-- NAME (up, ...)" and what follows)."""
    sections: dict[str, str] = {}
    name = ""
    for line in out.splitlines():
        if line.startswith("-- 2024"):
            name = line[3:].split(" ", 1)[0]
        sections[name] = sections.get(name, "") + line + "\n"
    return sections


def test_dry_run_never_writes_through_a_migration_own_connection(
    seq_cli: Path, db_url: str, db: psycopg.Connection
) -> None:
    first = migrunner(db_url, DRY_OWN, "--to", "20240401000000-accounts.js")
    assert first.returncode == 0, first.stderr
    before = dump_snapshot(db_url)

    dry = migrunner(db_url, DRY_OWN, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dump_snapshot(db_url) == before  # nothing deleted or rewritten for real
    by_name = plan_sections(dry.stdout)
    for name in (
        "20240401000100-purge-with-own-sequelize.js",  # a second Sequelize instance
        "20240401000200-rewrite-with-raw-pg.js",  # raw pg, its own `options` override PGOPTIONS
        "20240401000050-writes-while-loading.js",  # connects while its file is being loaded
    ):
        assert NOT_REHEARSED in by_name[name], dry.stdout
        assert "read-only transaction [SQLSTATE 25006]" in by_name[name]
        assert "its statements were rolled back" in by_name[name]
    reads_only = by_name["20240401000300-counts-with-own-sequelize.js"]
    assert NOT_REHEARSED in reads_only and "COMMENT ON TABLE accounts IS 'counted 3'" in reads_only
    assert NOT_REHEARSED not in by_name["20240401000400-plain.js"]
    assert 'CREATE TABLE IF NOT EXISTS "sessions"' in by_name["20240401000400-plain.js"]
    assert "5 migration(s) would run; everything was rolled back" in dry.stderr
    assert "4 of them NOT rehearsed (see above)." in dry.stderr

    # the real run does write through those connections, as sequelize-cli would
    real = migrunner(db_url, DRY_OWN)
    assert real.returncode == 0, real.stderr
    assert db.execute("SELECT id, email FROM accounts ORDER BY id").fetchall() == [
        (1, "ann@example.com.invalid"),
        (3, "old@example.com"),  # made active while loading, so not purged
    ]


@pytest.mark.parametrize("folder", ["chain", "chain-fails"])
def test_commit_and_chain_ends_like_sequelize_cli_and_atomically(
    folder: str, seq_cli: Path, db_url: str, db: psycopg.Connection, reference_db: str
) -> None:
    path = APP / folder
    ours = migrunner(db_url, path)
    theirs = sequelize_cli(seq_cli, reference_db, path, "db:migrate")
    assert ours.returncode == theirs.returncode, ours.stderr + theirs.stderr
    ledger = "SELECT id, amount FROM ledger ORDER BY id"
    with psycopg.connect(reference_db, autocommit=True) as reference:
        assert list(meta_rows(db)) == list(meta_rows(reference))
        if folder == "chain":
            assert ours.returncode == 0
            assert snapshot(db) == snapshot(reference)
            # 3 rolled back by ROLLBACK AND CHAIN; the chained transactions saw the same data
            assert db.execute(ledger).fetchall() == [(1, 10), (2, 20), (4, 40), (5, 3)]
        else:
            assert ours.returncode == 1
            assert "refusing to finish after the chained commit" in ours.stderr
            # sequelize-cli keeps the work committed by the chain; migrunner keeps none of it
            assert reference.execute(ledger).fetchall() == [(1, 10), (2, 20)]
            assert db.execute(ledger).fetchall() == []
