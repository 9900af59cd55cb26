"""Atomic mode while it gives sequelize-cli's result, pool mode when it cannot.

Each folder of ``tests/fixtures/pitfalls/modes`` holds one migration written for one pattern of
transactions. Each runs through migrunner and through the real sequelize-cli on fresh
databases; exit code, schema, SequelizeMeta and the data written must be the same, and the
history says which mode migrunner used (the list in README "Atomic mode and pool mode").
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from migrations_compat.bridge_pool import POOL_SESSION_OPTIONS, pool_connection
from tests.conftest import popen_cli, run_cli
from tests.integration.test_config_tls import TlsServer, tls_server  # noqa: F401
from tests.integration.test_pitfalls import (  # noqa: F401  (fixtures)
    APP,
    VOLATILE_COLUMNS,
    app_modules,
    sequelize_cli,
)
from tests.support.catalog import Fingerprint, app_schemas, fingerprint
from tests.support.pg import create_database, drop_database
from tests.support.state import backends, wait_for
from tests.support.state import snapshot as dump_snapshot

MODES = APP / "modes"
GATE_KEY = 7_300_001
SECRET = "Pool-Mode-Secret-42"


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@dataclass(frozen=True)
class Pattern:
    name: str  # its migration in modes/parity
    mode: str  # what migrunner must use: atomic | pool
    query: str  # the data the migration wrote, as the test reads it
    rows: list[tuple[Any, ...]]


PATTERNS = [
    Pattern(
        "20240301000100-parallel-transactions.js",
        "pool",
        "SELECT tenant, step FROM tenant_rows ORDER BY tenant, step",
        [("a", 1), ("a", 2), ("a", 3), ("c", 1), ("c", 2), ("c", 3)],
    ),
    Pattern(
        "20240301000200-write-beside-rollback.js",
        "pool",
        "SELECT entry FROM audit_trail ORDER BY id",
        [("beside the transaction",), ("after the rollback",)],
    ),
    Pattern(
        "20240301000300-nested-transactions.js",
        "atomic",
        "SELECT label FROM ledger_lines ORDER BY id",
        [("outer first",), ("inner, kept",), ("outer last",)],
    ),
    Pattern(
        "20240301000400-serializable-first.js",
        "atomic",
        "SELECT level FROM isolation_seen",
        [("serializable",)],
    ),
    Pattern(
        "20240301000500-isolation-later.js",
        "pool",
        "SELECT label, level FROM isolation_later ORDER BY label",
        [("asked", "repeatable read"), ("default", "read committed")],
    ),
    Pattern(
        "20240301000600-unreturned-transaction.js",
        "atomic",
        "SELECT body FROM notes",
        [("from the floating transaction",)],
    ),
]
PARITY = MODES / "parity"


def mode_of(db: psycopg.Connection, name: str, schema: str = "public") -> str:
    row = db.execute(
        f"SELECT note FROM {schema}.migrunner_history WHERE name = %s AND outcome = 'applied'",
        [name],
    ).fetchone()
    assert row is not None, f"{name} has no applied history row"
    return "pool" if row[0] and "pool mode" in row[0] else "atomic"


def only_migration(folder: Path) -> str:
    (path,) = folder.glob("*.js")
    return path.name


def snapshot(conn: psycopg.Connection) -> Fingerprint:
    """Schema and data; serial ids left out: those of rows written by transactions running at
    once depend on their interleaving (the patterns' own queries check the rows)."""
    ignored = VOLATILE_COLUMNS | {"id"}
    return fingerprint(conn, schemas=app_schemas(conn), data=True, ignore_columns=ignored)


def meta_names(db: psycopg.Connection) -> list[str]:
    return [r[0] for r in db.execute('SELECT name FROM "SequelizeMeta" ORDER BY name')]


def test_each_pattern_ends_as_under_sequelize_cli_in_its_mode(
    app_modules: Path,  # noqa: F811
    db_url: str,
    db: psycopg.Connection,
    other_db_url: str,
) -> None:
    names = [p.name for p in PATTERNS]
    assert names == sorted(p.name for p in PARITY.glob("*.js"))
    ours = run_cli("up", "--url", db_url, "--migrations-path", str(PARITY))
    theirs = sequelize_cli(app_modules, other_db_url, PARITY, "db:migrate")
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    assert ours.returncode == 0, ours.stderr
    with psycopg.connect(other_db_url, autocommit=True) as reference:
        for pattern in PATTERNS:
            assert reference.execute(pattern.query).fetchall() == pattern.rows, pattern.name
        expected = snapshot(reference)
        assert meta_names(reference) == names
    for pattern in PATTERNS:
        assert db.execute(pattern.query).fetchall() == pattern.rows, pattern.name
        assert mode_of(db, pattern.name) == pattern.mode, pattern.name
        pool_warning = f"{pattern.name}: running it in pool mode"
        assert (pool_warning in ours.stderr) == (pattern.mode == "pool"), pattern.name
    assert snapshot(db) == expected
    assert meta_names(db) == names


def test_statement_without_its_transaction_completes_where_sequelize_cli_hangs(
    app_modules: Path,  # noqa: F811
    db_url: str,
    db: psycopg.Connection,
    other_db_url: str,
) -> None:
    folder = MODES / "missing-transaction-option"
    name = only_migration(folder)
    ours = run_cli("up", "--url", db_url, "--migrations-path", str(folder), timeout=60)
    assert ours.returncode == 0, ours.stderr
    assert db.execute("SELECT name, value FROM counters").fetchall() == [("visits", 11)]
    assert meta_names(db) == [name] and mode_of(db, name) == "atomic"
    # sequelize-cli: the UPDATE's connection waits for t's row lock, t waits for the UPDATE
    cli = subprocess.Popen(
        [
            str(app_modules / "node_modules" / ".bin" / "sequelize-cli"),
            "db:migrate",
            "--url",
            other_db_url,
            "--migrations-path",
            str(folder),
        ],
        cwd=APP,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: any(b[2] == "Lock" for b in backends(other_db_url, "%")),
            timeout=30,
            what="sequelize-cli's second connection waiting for the transaction's lock",
        )
        assert cli.poll() is None  # still hanging
    finally:
        cli.kill()
        cli.wait(timeout=30)
    with psycopg.connect(other_db_url, autocommit=True) as reference:
        assert meta_names(reference) == []


def test_failure_after_committed_and_nested_transactions_leaves_nothing(
    app_modules: Path,  # noqa: F811
    db_url: str,
    db: psycopg.Connection,
    other_db_url: str,
) -> None:
    folder = MODES / "atomic-failure"
    ours = run_cli("up", "--url", db_url, "--migrations-path", str(folder))
    assert ours.returncode == 1
    assert "carrier API unavailable" in ours.stderr and "pool mode" not in ours.stderr
    assert db.execute("SELECT to_regclass('shipments')").fetchone() == (None,)
    assert meta_names(db) == []
    # sequelize-cli, same folder: the committed transaction's rows and the column stay
    theirs = sequelize_cli(app_modules, other_db_url, folder, "db:migrate")
    assert theirs.returncode == 1
    with psycopg.connect(other_db_url, autocommit=True) as debris:
        rows = debris.execute("SELECT label, weight FROM shipments ORDER BY id").fetchall()
        assert rows == [("committed", None), ("nested", None)]
        assert meta_names(debris) == []


def test_dry_run_of_a_pool_mode_migration_changes_nothing(
    app_modules: Path,  # noqa: F811
    db_url: str,
) -> None:
    before = dump_snapshot(db_url)
    dry = run_cli("up", "--dry-run", "--url", db_url, "--migrations-path", str(PARITY))
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("-- 2024")]
    assert len(at) == len(PATTERNS)
    for pattern, i in zip(PATTERNS, at, strict=True):
        pool = pattern.mode == "pool"
        assert lines[i] == f"-- {pattern.name} (up, {'non-' if pool else ''}transactional)"
        note = "-- runs outside a transaction; not rehearsed: pool mode, because"
        assert lines[i + 1].startswith(note) == pool, lines[i + 1]
    assert "would also discard a statement connection" in lines[at[1] + 1]
    # --analyze: what would run in pool mode is rehearsed on a scratch copy, as the real run
    analyzed = run_cli(
        "up", "--dry-run", "--analyze", "--url", db_url, "--migrations-path", str(PARITY)
    )
    assert analyzed.returncode == 0, analyzed.stderr
    assert f"{PATTERNS[0].name}: it runs in pool mode (the rollback of a transaction" in (
        analyzed.stdout
    )
    after = dump_snapshot(db_url)
    assert (after.schema, after.data, after.meta) == (before.schema, before.data, before.meta)


def test_kill_in_the_middle_of_a_pool_mode_migration_is_flagged_by_status(
    app_modules: Path,  # noqa: F811
    db_url: str,
    db: psycopg.Connection,
) -> None:
    folder = MODES / "gated-pool"
    name = only_migration(folder)
    # a password the local trust authentication ignores: node gets it, nobody may see it
    url = db_url.replace("postgres@", f"postgres:{SECRET}@", 1)
    gate = psycopg.connect(db_url, autocommit=True)
    try:
        gate.execute("SELECT pg_advisory_lock(%s)", [GATE_KEY])
        proc = popen_cli(
            "up",
            "--url",
            url,
            "--migrations-path",
            str(folder),
            env={"GATE_KEY": str(GATE_KEY), "MIGRUNNER_BRIDGE_DEBUG": "1"},
        )
        wait_for(
            lambda: any(
                b[2] == "Lock" for b in backends(db_url, f"migrunner/% pool-mode running {name}")
            ),
            what="the pool-mode migration waiting at the gate",
        )
        nodes = children(proc.pid)
        assert nodes, "the runner's node child"
        for pid in nodes:  # the settings came over the socket, not argv or the environment
            for what in ("cmdline", "environ"):
                assert SECRET.encode() not in Path(f"/proc/{pid}/{what}").read_bytes()
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        assert SECRET not in out + err
    finally:
        gate.close()  # opens the gate: the orphaned backend finishes its SELECT and exits
    assert db.execute("SELECT label FROM batches").fetchall() == [("before the gate",)]
    assert meta_names(db) == []
    status = run_cli("status", "--url", db_url, "--migrations-path", str(folder))
    assert status.returncode == 0, status.stderr
    (line,) = [line for line in status.stdout.splitlines() if name in line]
    assert line.startswith("down ") and "started in pool mode, never finished" in line
    as_json = run_cli("status", "--json", "--url", db_url, "--migrations-path", str(folder))
    assert f'"unfinished": ["{name}"]' in as_json.stdout
    history = run_cli("history", "--url", db_url, "--migrations-path", str(folder))
    assert "started" in history.stdout and "pool mode: it declares useTransaction: false" in (
        history.stdout
    )


def test_pool_connection_settings_are_the_runners(db_url: str) -> None:
    with psycopg.connect(db_url, options="-c search_path=tenant_7,public") as conn:
        settings = pool_connection(conn, {"options": "-c search_path=tenant_7,public"}, "app")
        assert settings["database"] == conn.info.dbname
        assert (settings["host"], settings["port"], settings["user"]) == (
            conn.info.host,
            conn.info.port,
            conn.info.user,
        )
        assert settings["ssl"] is False and settings["applicationName"] == "app"
        assert settings["options"] == f"-c search_path=tenant_7,public {POOL_SESSION_OPTIONS}"
    with psycopg.connect(db_url) as conn:
        plain = pool_connection(conn, {}, "app", environ={"PGOPTIONS": "-c work_mem=8MB"})
        assert plain["options"] == f"-c work_mem=8MB {POOL_SESSION_OPTIONS}"


def test_pool_mode_connects_with_the_runners_verified_tls(
    tls_server: TlsServer,  # noqa: F811
) -> None:
    base = f"postgresql://postgres@localhost:{tls_server.port}"
    url = f"{base}/postgres"
    database = create_database(url)
    try:
        name = database.rsplit("/", 1)[1]
        tls_url = f"{base}/{name}?sslmode=verify-full&sslrootcert={tls_server.ca_file}"
        folder = MODES / "tls-pool"
        done = run_cli("up", "--url", tls_url, "--migrations-path", str(folder))
        assert done.returncode == 0, done.stderr
        with psycopg.connect(tls_url) as conn:
            (ssl, app), *_ = conn.execute("SELECT ssl, app FROM connection_seen").fetchall()
        assert ssl is True
        assert app.endswith(f"pool-mode running {only_migration(folder)}")
    finally:
        drop_database(url, database)


def test_fleet_of_schemas_runs_pool_mode_in_each_tenants_schema(db_url: str) -> None:
    schemas = ["tenant_one", "tenant_two"]
    with psycopg.connect(db_url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f"CREATE SCHEMA {schema}")
    folder = MODES / "tls-pool"  # useTransaction: false, creates an unqualified table
    select = "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant%' ORDER BY 1"
    done = run_cli(
        "fleet", "up", "--url", db_url, "--schemas-sql", select, "--parallel", "2",
        "--migrations-path", str(folder),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with psycopg.connect(db_url, autocommit=True) as conn:
        for schema in schemas:
            assert conn.execute(f"SELECT count(*) FROM {schema}.connection_seen").fetchone() == (1,)
            assert mode_of(conn, only_migration(folder), schema) == "pool"
        assert conn.execute("SELECT to_regclass('public.connection_seen')").fetchone() == (None,)


def test_pool_mode_never_refuses_and_leaves_nothing(db_url: str, db: psycopg.Connection) -> None:
    refused = run_cli(
        "up", "--pool-mode", "never", "--url", db_url, "--migrations-path", str(PARITY)
    )
    assert refused.returncode == 1
    assert (
        f"{PATTERNS[0].name} (up) would need pool mode (not atomic) because the rollback of a "
        "transaction would also discard"
    ) in refused.stderr
    assert "refused by --pool-mode never" in refused.stderr
    assert db.execute("SELECT to_regclass('tenant_rows')").fetchone() == (None,)
    assert meta_names(db) == []
