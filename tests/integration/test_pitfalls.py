"""Every migration pattern of DESIGN.md's compatibility list, run unmodified.

``tests/fixtures/pitfalls`` is a small app (its own node_modules: sequelize, pg, sequelize-cli)
whose ``migrations`` folder holds one real migration per pattern, and whose ``atomicity``
folder holds a migration that fails halfway. They run three ways: through the bridge directly
(the test plays the migrator), through the ``migrunner`` CLI, and through real sequelize-cli,
whose resulting database must be the same.
"""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import psycopg
import pytest

from migrations_compat.bridge import BridgeOptions, NodeBridge
from migrations_compat.bridge_exec import NON_TRANSACTIONAL_SQLSTATES
from runner.errors import MigrationFailed
from runner.log import Log
from tests.conftest import FIXTURES, run_cli
from tests.support.catalog import Fingerprint, app_schemas, fingerprint
from tests.support.node_apps import ensure_npm_ci, run_sequelize_cli
from tests.support.state import exists, meta_rows

APP = FIXTURES / "pitfalls"
MIGRATIONS = APP / "migrations"
ATOMICITY = APP / "atomicity"
ALL = sorted(p.name for p in MIGRATIONS.glob("*.js"))
NEEDS_AUTOCOMMIT = {"20240101000900-concurrent-index.js", "20240101001000-enum-add-value.js"}
#: Written with now() at run time: differ between any two runs.
VOLATILE_COLUMNS = {"createdAt", "updatedAt"}


@pytest.fixture(scope="session")
def app_modules() -> Path:
    """The fixture app, its node_modules installed (by .ci/run, or here when missing)."""
    return ensure_npm_ci(APP)


def sequelize_cli(
    app: Path, url: str, folder: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return run_sequelize_cli(
        app, *args, "--url", url, "--migrations-path", str(folder), env={"DATABASE_URL": url}
    )


def apply_with_bridge(bridge: NodeBridge, conn: psycopg.Connection, folder: Path) -> set[str]:
    """What the migrator does for each file; returns those that had to run without a transaction."""
    conn.execute(
        'CREATE TABLE IF NOT EXISTS "SequelizeMeta" '
        '("name" VARCHAR(255) NOT NULL UNIQUE, PRIMARY KEY ("name"))'
    )
    autocommit = set()
    for path in sorted(folder.glob("*.js")):
        transactional = bridge.wants_transaction(path) is not False
        if transactional:
            conn.execute("BEGIN")
            try:
                bridge.run(path, "up", conn)
            except MigrationFailed as err:
                conn.execute("ROLLBACK")
                if err.sqlstate not in NON_TRANSACTIONAL_SQLSTATES:
                    raise
                transactional = False
        if not transactional:
            autocommit.add(path.name)
            bridge.run(path, "up", conn, transactional=False)
            conn.execute("BEGIN")
        conn.execute('INSERT INTO "SequelizeMeta" (name) VALUES (%s)', [path.name])
        conn.execute("COMMIT")
    return autocommit


def snapshot(conn: psycopg.Connection) -> Fingerprint:
    """Schema and data of the app's objects in every schema, independent of run time."""
    return fingerprint(conn, schemas=app_schemas(conn), data=True, ignore_columns=VOLATILE_COLUMNS)


def column_names(db: psycopg.Connection, table: str, schema: str = "public") -> set[str]:
    return {
        r[0]
        for r in db.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s",
            [schema, table],
        )
    }


# -- through the bridge directly ------------------------------------------------------------------


def test_every_pattern_through_the_bridge(
    app_modules: Path, db_url: str, db: psycopg.Connection
) -> None:
    log = Log(stream=io.StringIO())
    env = {**os.environ, "DATABASE_URL": db_url}
    with (
        psycopg.connect(db_url, autocommit=True) as conn,
        NodeBridge(BridgeOptions(search_dirs=(MIGRATIONS, APP), env=env), log) as bridge,
    ):
        timeout_before = conn.execute("SHOW statement_timeout").fetchone()[0]
        autocommit = apply_with_bridge(bridge, conn, MIGRATIONS)
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == timeout_before
        assert conn.execute("SHOW search_path").fetchone()[0] == '"$user", public'
    assert autocommit == NEEDS_AUTOCOMMIT
    # the app's own copy of sequelize, not the shim's
    assert f"using sequelize 6.37.8 from {(APP / 'node_modules' / 'sequelize').resolve()}" in (
        log.stream.getvalue()  # type: ignore[attr-defined]
    )
    assert meta_rows(db) == tuple(ALL)

    # add / change / rename / removeColumn
    assert {"bio", "displayName"} <= column_names(db, "users")
    assert "nickname" not in column_names(db, "users")
    assert "legacyScore" not in column_names(db, "posts")
    bio = db.execute(
        "SELECT data_type, is_nullable, column_default FROM information_schema.columns "
        "WHERE table_name = 'users' AND column_name = 'bio'"
    ).fetchone()
    assert bio == ("text", "NO", "''::character varying")
    # indexes, constraints
    indexes = dict(
        db.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
    )
    assert indexes["users_email_unique"].startswith("CREATE UNIQUE INDEX")
    assert "WHERE (status = 'published'" in indexes["posts_published_by_user"]
    assert "posts_title_idx" in indexes  # CONCURRENTLY, re-run outside a transaction
    constraints = {r[0] for r in db.execute("SELECT conname FROM pg_constraint")}
    assert {"posts_title_not_empty", "posts_user_title_unique"} <= constraints
    assert "users_display_name_unique" not in constraints
    # bulkInsert / bulkDelete, SELECT-driven updates, the un-awaited update, the new enum value
    assert [r[0] for r in db.execute("SELECT email FROM users ORDER BY email")] == [
        "ada@example.com",
        "bob@example.com",
        "eve@example.com",
    ]
    posts = db.execute(
        'SELECT title, body, status, views, "catégorie" FROM posts ORDER BY id'
    ).fetchall()
    assert posts == [
        (
            "Hello from bob@example.com",
            "Hello from bob@example.com by Bob [intro|n0]",
            "published",
            1,
            "actualités — 日本語",
        ),
        ("Hello from eve@example.com", "post #1", "archived", 0, "général"),
    ]
    # sequelize.transaction(): committed, nested-and-rolled-back, rolled back, raw BEGIN/COMMIT
    assert [r[0] for r in db.execute("SELECT event FROM audit_log ORDER BY id")] == [
        "managed",
        "with-actor",
        "unmanaged",
        "after-nested",
        "raw-begin-commit",
    ]
    assert db.execute("SELECT bio FROM users WHERE email = 'ada@example.com'").fetchone() == (
        "forgot the transaction",
    )
    # the ad-hoc model
    assert db.execute("SELECT name, slug FROM tags ORDER BY id").fetchall() == [
        ("Intro", "intro"),
        ("News", "news"),
        ("Releases", "releases"),
    ]
    # raw DDL
    assert exists(db, "audit.published_posts") and exists(db, "audit.deleted_posts")
    assert exists(db, "audit.post_archive")  # created under the migration's search_path
    assert db.execute(
        "SELECT udt_name FROM information_schema.columns WHERE table_name = 'users' "
        "AND column_name = 'email'"
    ).fetchone() == ("citext",)
    assert {"posts_trim_title"} <= {r[0] for r in db.execute("SELECT tgname FROM pg_trigger")}
    assert db.execute("SELECT rulename FROM pg_rules WHERE tablename = 'posts'").fetchone() == (
        "keep_deleted",
    )
    assert db.execute('SELECT count(*) FROM users WHERE "legacyId" = id').fetchone() == (3,)
    assert exists(db, "bookmarks")  # tsc output with exports.default
    assert db.execute("SELECT obj_description('posts'::regclass)").fetchone() == (
        "a second connection counted 3 users",
    )


def test_down_that_throws_and_missing_down_through_the_bridge(
    app_modules: Path, db_url: str
) -> None:
    with (
        psycopg.connect(db_url, autocommit=True) as conn,
        NodeBridge(BridgeOptions(search_dirs=(MIGRATIONS,)), Log(stream=io.StringIO())) as bridge,
    ):
        for name, message in [
            (
                "20240101001200-down-throws.js",
                "migration 20240101001200-down-throws.js failed (down) at "
                f"{MIGRATIONS / '20240101001200-down-throws.js'}:10: irreversible migration: "
                "legacy ids cannot be restored",
            ),
            (
                "20240101001300-no-down.js",
                "migration 20240101001300-no-down.js failed (down) at "
                f"{MIGRATIONS / '20240101001300-no-down.js'}: Could not find migration method: down",
            ),
        ]:
            conn.execute("BEGIN")
            with pytest.raises(MigrationFailed) as info:
                bridge.run(MIGRATIONS / name, "down", conn)
            conn.execute("ROLLBACK")
            assert info.value.message == message
            assert info.value.sqlstate is None


def test_failure_halfway_leaves_nothing_through_the_bridge(
    app_modules: Path, db_url: str, db: psycopg.Connection
) -> None:
    with (
        psycopg.connect(db_url, autocommit=True) as conn,
        NodeBridge(BridgeOptions(search_dirs=(ATOMICITY,)), Log(stream=io.StringIO())) as bridge,
        pytest.raises(MigrationFailed, match=r"boom: failed halfway through"),
    ):
        apply_with_bridge(bridge, conn, ATOMICITY)
    assert_nothing_of_the_failed_migration(db)


def assert_nothing_of_the_failed_migration(db: psycopg.Connection) -> None:
    assert column_names(db, "ledger") == {"id", "amount"}
    assert db.execute("SELECT count(*) FROM ledger").fetchone() == (0,)
    assert not exists(db, "ledger_archive")
    assert db.execute("SELECT to_regtype('ledger_kind')").fetchone() == (None,)
    assert meta_rows(db) == ("20240201000000-create-ledger.js",)


# -- through the CLI --------------------------------------------------------------------------


def test_cli_runs_every_pattern_and_matches_sequelize_cli(
    app_modules: Path, db_url: str, db: psycopg.Connection, other_db_url: str
) -> None:
    ours = run_cli(
        "up", "--url", db_url, "--migrations-path", str(MIGRATIONS), env={"DATABASE_URL": db_url}
    )
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.rstrip().endswith("Migrations completed successfully")
    for name in NEEDS_AUTOCOMMIT:
        assert f"{name}: " in ours.stderr and "re-running it outside a transaction" in ours.stderr
    theirs = sequelize_cli(app_modules, other_db_url, MIGRATIONS, "db:migrate")
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    with psycopg.connect(other_db_url, autocommit=True) as reference:
        expected = snapshot(reference)
        assert meta_rows(reference) == tuple(ALL)
    assert len(expected["indexes"]) >= 8 and len(expected["data"]["public.posts"]) == 2
    actual = snapshot(db)
    assert meta_rows(db) == tuple(ALL)
    # 20240101000600-promise-all.js adds two columns with Promise.all: sequelize-cli runs them
    # on two connections racing for the table's lock, so their order varies from run to run
    # (migrunner issues them in the order the migration does). Same columns, either order.
    racing = ("public.posts.likes", "public.posts.pinned")
    for cols in (actual["columns"], expected["columns"]):
        assert sorted(cols[c]["position"] for c in racing) == sorted(
            expected["columns"][c]["position"] for c in racing
        )
        for c in racing:
            cols[c] = {**cols[c], "position": "either"}
    for key in expected:
        assert actual[key] == expected[key], key


def test_cli_down_stops_at_the_migration_without_down(
    app_modules: Path, db_url: str, db: psycopg.Connection
) -> None:
    env = {"DATABASE_URL": db_url}
    assert (
        run_cli("up", "--url", db_url, "--migrations-path", str(MIGRATIONS), env=env).returncode
        == 0
    )
    three = run_cli(
        "down", "--step", "3", "--url", db_url, "--migrations-path", str(MIGRATIONS), env=env
    )
    assert three.returncode == 0, three.stderr
    assert not exists(db, "bookmarks")
    assert "catégorie" not in column_names(db, "posts")
    assert db.execute("SELECT obj_description('posts'::regclass)").fetchone() == (None,)
    stuck = run_cli("down", "--url", db_url, "--migrations-path", str(MIGRATIONS), env=env)
    assert stuck.returncode == 1
    assert (
        "migration 20240101001300-no-down.js failed (down) at "
        f"{MIGRATIONS / '20240101001300-no-down.js'}: Could not find migration method: down"
    ) in stuck.stderr
    assert meta_rows(db) == tuple(ALL[:-3])


def test_cli_up_then_down_all_is_reversible(
    app_modules: Path, db_url: str, db: psycopg.Connection
) -> None:
    env = {"DATABASE_URL": db_url}
    last = "20240101001100-raw-ddl.js"
    up = run_cli("up", "--to", last, "--url", db_url, "--migrations-path", str(MIGRATIONS), env=env)
    assert up.returncode == 0, up.stderr
    assert meta_rows(db) == tuple(ALL[: ALL.index(last) + 1])
    down = run_cli("down", "--all", "--url", db_url, "--migrations-path", str(MIGRATIONS), env=env)
    assert down.returncode == 0, down.stderr
    assert meta_rows(db) == ()
    tables = {
        r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {t for t in tables if not t.startswith("migrunner")} == {"SequelizeMeta"}
    assert db.execute("SELECT count(*) FROM pg_type WHERE typtype = 'e'").fetchone() == (0,)
    assert db.execute("SELECT to_regnamespace('audit')").fetchone() == (None,)


def test_cli_failure_halfway_leaves_nothing_where_sequelize_cli_leaves_debris(
    app_modules: Path, db_url: str, db: psycopg.Connection, other_db_url: str
) -> None:
    ours = run_cli("up", "--url", db_url, "--migrations-path", str(ATOMICITY))
    assert ours.returncode == 1
    assert (
        "migration 20240201000100-throws-halfway.js failed (up) at "
        f"{ATOMICITY / '20240201000100-throws-halfway.js'}:22: boom: failed halfway through"
    ) in ours.stderr
    assert_nothing_of_the_failed_migration(db)
    # sequelize-cli, same folder: the statements before the throw stay, unrecorded
    theirs = sequelize_cli(app_modules, other_db_url, ATOMICITY, "db:migrate")
    assert theirs.returncode == 1
    with psycopg.connect(other_db_url, autocommit=True) as debris:
        assert column_names(debris, "ledger") == {"id", "amount", "note"}
        assert exists(debris, "ledger_archive")
        assert meta_rows(debris) == ("20240201000000-create-ledger.js",)
