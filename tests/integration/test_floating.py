"""Queries a JS migration does not await ("floating" calls) run in its transaction.

Each folder of ``tests/fixtures/pitfalls/floating`` holds one pattern real apps have (the only
call un-awaited, the last call un-awaited, a ``.then()`` chain nobody returns, an un-returned
``Promise.all``, a floating call that fails). Both the real sequelize-cli and migrunner run
it on fresh databases; exit code, schema, ``SequelizeMeta`` and the data must match, and
migrunner must say once, per migration, what it ran un-awaited.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.conftest import run_cli
from tests.integration.test_pitfalls import APP, sequelize_cli, snapshot
from tests.support.node_apps import ensure_npm_ci
from tests.support.state import meta_rows


@pytest.fixture(scope="session")
def app_modules() -> Path:
    """The pitfalls app with its pinned sequelize-cli installed."""
    return ensure_npm_ci(APP)


FLOATING = APP / "floating"
PARITY = FLOATING / "parity"
FLOATS = {  # migration -> the statement its warning names first
    "20240301000000-only-call.js": 'CREATE TABLE IF NOT EXISTS "gadget_notes"',
    "20240301000100-last-call.js": 'ALTER TABLE "public"."widgets" ADD COLUMN "colour"',
    "20240301000200-chain.js": 'ALTER TABLE "public"."spares" ADD COLUMN "stock"',
    "20240301000300-promise-all.js": 'ALTER TABLE "public"."flanges" ADD COLUMN "sku"',
}


def migrunner(url: str, folder: Path, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return run_cli("up", "--url", url, "--migrations-path", str(folder), *extra, env=env, cwd=APP)


def test_floating_calls_end_as_under_sequelize_cli(
    app_modules: Path, db_url: str, db: psycopg.Connection, other_db_url: str
) -> None:
    ours = migrunner(db_url, PARITY)
    theirs = sequelize_cli(app_modules, other_db_url, PARITY, "db:migrate")
    assert (ours.returncode, theirs.returncode) == (0, 0), ours.stderr + theirs.stderr
    warnings = [line for line in ours.stderr.splitlines() if "not awaited" in line]
    assert len(warnings) == len(FLOATS), ours.stderr  # one per migration
    for line, (name, statement) in zip(warnings, FLOATS.items(), strict=True):
        assert line.startswith(f"warning: {name} (up): not awaited: {statement}"), line
        assert line.endswith("; they ran in the migration's transaction"), line
    assert 'ADD COLUMN "discontinued"' in warnings[3] and 'ADD COLUMN "released"' in warnings[3]
    with psycopg.connect(other_db_url, autocommit=True) as reference:
        expected = snapshot(reference)
        assert list(meta_rows(reference)) == sorted(p.name for p in PARITY.glob("*.js"))
        assert list(meta_rows(db)) == list(meta_rows(reference))
    actual = snapshot(db)
    for key in expected:
        assert actual[key] == expected[key], key
    # what the floating calls wrote, as sequelize-cli wrote it
    assert db.execute("SELECT id, label, weight, colour FROM widgets ORDER BY id").fetchall() == [
        (1, "sprocket", 7, "grey"),
        (2, "gasket", None, "grey"),
    ]
    # the chain's last step used the rows its third step read: all four ran, in order
    assert db.execute("SELECT id, label, stock FROM spares ORDER BY id").fetchall() == [
        (1, "bolt", 40),
        (2, "nut", 0),
        (101, "restock of 1", 1),
    ]


def test_floating_call_that_fails_rolls_the_migration_back_entirely(
    app_modules: Path, db_url: str, db: psycopg.Connection, other_db_url: str
) -> None:
    folder = FLOATING / "fails"
    ours = migrunner(db_url, folder)
    theirs = sequelize_cli(app_modules, other_db_url, folder, "db:migrate")
    assert (ours.returncode, theirs.returncode) == (1, 1)
    errors = [line for line in ours.stderr.splitlines() if line.startswith("error:")]
    assert errors[0] == (
        "error: migration 20240301000100-floating-fails.js failed (up) at "
        f"{folder / '20240301000100-floating-fails.js'}: "
        'column "cost" of relation "gadgets" does not exist [SQLSTATE 42703] in statement: '
        "UPDATE gadgets SET cost = price * 2 (not awaited)"
    )
    with psycopg.connect(other_db_url, autocommit=True) as debris:
        # sequelize-cli: same exit code and SequelizeMeta, but the awaited statements stayed
        assert list(meta_rows(debris)) == ["20240301000000-gadgets.js"]
        assert debris.execute("SELECT to_regclass('price_history')").fetchone() != (None,)
    # migrunner: no trace of the failed migration's earlier, awaited statements
    assert list(meta_rows(db)) == ["20240301000000-gadgets.js"]
    assert db.execute("SELECT to_regclass('price_history')").fetchone() == (None,)
    assert [
        r[0]
        for r in db.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'gadgets' ORDER BY 1"
        )
    ] == ["id", "label"]
    assert db.execute(
        "SELECT outcome FROM migrunner_history WHERE name = '20240301000100-floating-fails.js'"
    ).fetchall() == [("failed",)]


def test_strict_await_refuses_floating_calls(
    app_modules: Path, db_url: str, db: psycopg.Connection
) -> None:
    ours = migrunner(db_url, PARITY, "--strict-await")
    assert ours.returncode == 1
    assert (
        "error: migration 20240301000000-only-call.js failed (up) at "
        f"{PARITY / '20240301000000-only-call.js'}: query issued after up() resolved: "
        'CREATE TABLE IF NOT EXISTS "gadget_notes"' in ours.stderr
    )
    assert "— missing await? (--strict-await)" in ours.stderr
    assert list(meta_rows(db)) == []
    assert db.execute("SELECT to_regclass('gadget_notes')").fetchone() == (None,)


def test_settle_timeout_bounds_the_wait(
    app_modules: Path, db_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    """A migration whose floating work never ends fails after --settle-timeout, rolled back."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "20240301000000-forever.js").write_text(
        "module.exports = {\n"
        "  async up(queryInterface) {\n"
        "    await queryInterface.sequelize.query('CREATE TABLE forever (id int)');\n"
        "    const again = () => queryInterface.sequelize.query('SELECT pg_sleep(0.05)').then(again);\n"
        "    again();\n"
        "  },\n"
        "};\n"
    )
    ours = migrunner(db_url, folder, "--settle-timeout", "1")
    assert ours.returncode == 1
    assert (
        "error: migration 20240301000000-forever.js failed (up) at "
        f"{folder / '20240301000000-forever.js'}: not finished 1 s after up() resolved: queries "
        "nobody awaited are still running (SELECT pg_sleep(0.05)); raise --settle-timeout, or "
        "await them" in ours.stderr
    )
    assert db.execute("SELECT to_regclass('forever')").fetchone() == (None,)
