"""Migration forms sequelize-cli cannot run: ESM, TypeScript without a build step, Sequelize v7's
folder form — run end to end by the CLI on real node and PostgreSQL, up and back down."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg

from tests.conftest import FIXTURES, run_cli
from tests.support.state import meta_rows

FORMS = FIXTURES / "forms" / "migrations"
NAMES = (
    "20240101000000-plain.js",
    "20240101000100-named.mjs",
    "20240101000200-default.mjs",
    "20240101000300-typed.ts",
    "20240101000400-typed.mts",
    "20240101000500-typed.cts",
    "20240101000600-folder",
)
TABLES = (
    "forms_plain",
    "forms_named_esm",
    "forms_default_esm",
    "forms_typed",
    "forms_typed_mts",
    "forms_typed_cts",
    "forms_folder",
)


def tables(db: psycopg.Connection) -> set[str]:
    rows = db.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'forms%'").fetchall()
    return {r[0] for r in rows}


def test_esm_typescript_and_folder_migrations_run_up_and_down(
    db_url: str, db: psycopg.Connection
) -> None:
    base = ("--url", db_url, "--migrations-path", str(FORMS))
    r = run_cli("up", *base)
    assert r.returncode == 0, r.stderr
    assert meta_rows(db_url) == NAMES
    assert tables(db) == set(TABLES)
    # what the migrations wrote: a TS enum and array, an ESM helper's value, the folder's rows
    assert db.execute("SELECT id, status, score FROM forms_typed").fetchall() == [(1, "active", 1)]
    assert db.execute(
        "SELECT column_default FROM information_schema.columns "
        "WHERE table_name = 'forms_default_esm'"
    ).fetchone() == ("'from-esm-helper'::text",)
    assert db.execute("SELECT count(*) FROM forms_folder").fetchone() == (2,)
    # compiler by-products and helper folders are skipped without a word
    assert "ignoring" not in r.stderr, r.stderr

    r = run_cli("down", "--all", *base)
    assert r.returncode == 0, r.stderr
    assert meta_rows(db_url) == ()
    assert tables(db) == set()


def test_typescript_syntax_error_names_file_and_line(tmp_path: Path, db_url: str) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(FORMS / "20240101000000-plain.js", folder)
    (folder / "20240102000000-broken.ts").write_text(
        "import type { QueryInterface } from 'sequelize';\n"
        "\n"
        "export async function up(queryInterface: QueryInterface) {\n"
        "  const x: number = ;\n"
        "}\n"
    )
    r = run_cli("up", "--url", db_url, "--migrations-path", str(folder))
    assert r.returncode != 0
    assert (
        f"migration 20240102000000-broken.ts failed to load at {folder}/20240102000000-broken.ts:4:"
        " SyntaxError: Unexpected token (TypeScript)"
    ) in r.stderr
    assert meta_rows(db_url) == ("20240101000000-plain.js",)


def test_esm_migration_is_loaded_afresh_on_a_re_run(db_url: str) -> None:
    from migrations_compat.bridge import BridgeOptions, NodeBridge
    from runner.log import Log

    path = FIXTURES / "bridge" / "module-state.mjs"
    with (
        psycopg.connect(db_url, autocommit=True) as conn,
        NodeBridge(BridgeOptions(search_dirs=[path.parent]), Log()) as bridge,
    ):
        assert bridge.wants_transaction(path) is None  # a first load (meta), then two runs
        for _ in range(2):
            conn.execute("BEGIN")
            bridge.run(path, "up", conn)
            conn.execute("COMMIT")
        assert conn.execute("SELECT runs FROM esm_state").fetchall() == [(1,), (1,)]
