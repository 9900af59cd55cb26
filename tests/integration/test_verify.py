"""``migrunner verify`` on a real PostgreSQL and real node: the round trip of the forum app,
the first down() that does not restore its schema (named, with the difference), declared
irreversibility (stops the walk; fails only with --strict), a non-empty target refused, and
the embedded server when no database is named."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from runner.embedded import available as embedded_available
from tests.conftest import FIXTURES, run_cli
from tests.support.state import meta_rows

FORUM = FIXTURES / "forum" / "src" / "migrations"
VERIFY_FAILED = 9


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def verify_json(*args: str) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    r = run_cli("verify", "--json", *args)
    doc = json.loads(r.stdout) if r.stdout.strip() else {}
    return r.returncode, doc, r.stderr


def test_forum_round_trip_holds_and_ends_fully_applied(db_url: str) -> None:
    code, doc, err = verify_json("--url", db_url, "--migrations-path", str(FORUM))
    assert code == 0, err
    names = sorted(p.name for p in FORUM.iterdir())
    assert doc["ok"] is True and doc["problem"] is None
    assert [m["name"] for m in doc["migrations"]] == names
    assert {(m["up"], m["down"], m["reapply"]) for m in doc["migrations"]} == {("ok", "ok", "ok")}
    # the last phase applied everything again: the database ends as `up` leaves it
    assert meta_rows(db_url) == tuple(names)
    assert "verify passed" in err.splitlines()[-1]


SQL_FOLDER = {
    "001-table.sql": "-- migrate:up\nCREATE TABLE t (id int PRIMARY KEY, a int);\n"
    "-- migrate:down\nDROP TABLE t;\n",
    # down forgets the CHECK constraint
    "002-index-and-check.sql": "-- migrate:up\nCREATE INDEX t_a ON t (a);\n"
    "ALTER TABLE t ADD CONSTRAINT t_a_positive CHECK (a > 0);\n"
    "-- migrate:down\nDROP INDEX t_a;\n",
    "003-column.sql": "-- migrate:up\nALTER TABLE t ADD COLUMN b text DEFAULT 'x';\n"
    "-- migrate:down\nALTER TABLE t DROP COLUMN b;\n",
}


def test_names_the_first_down_that_does_not_restore_the_schema(db_url: str, tmp_path: Path) -> None:
    folder = write(tmp_path / "migrations", SQL_FOLDER)
    code, doc, err = verify_json("--url", db_url, "--migrations-path", str(folder))
    assert code == VERIFY_FAILED, err
    steps = {m["name"]: m for m in doc["migrations"]}
    assert steps["003-column.sql"]["down"] == "ok"
    assert steps["002-index-and-check.sql"]["down"] == "not restored"
    assert steps["002-index-and-check.sql"]["differences"] == [
        "constraints public.t.t_a_positive: only after down"
    ]
    assert steps["001-table.sql"]["down"] == "not run"  # the walk stopped at the first problem
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert error == [
        "error: verify failed: 002-index-and-check.sql: down() did not restore the schema: "
        "constraints public.t.t_a_positive: only after down"
    ]
    # the database is left as the failed walk left it: a second verify refuses to touch it
    again = run_cli("verify", "--url", db_url, "--migrations-path", str(folder))
    assert again.returncode == 2 and "verify needs an empty database" in again.stderr


JS_TABLE = """module.exports = {
  async up(qi, S) { await qi.createTable('things', { id: { type: S.INTEGER, primaryKey: true } }); },
  async down(qi) { await qi.dropTable('things'); },
};
"""
JS_THROWS = """module.exports = {
  async up(qi, S) { await qi.addColumn('things', 'legacy', { type: S.INTEGER }); },
  async down() { throw new Error('irreversible: legacy ids cannot be restored'); },
};
"""
JS_NO_DOWN = """module.exports = {
  async up(qi) { await qi.sequelize.query('UPDATE things SET legacy = id'); },
};
"""
JS_TYPO = """module.exports = {
  async up(qi, S) { await qi.addColumn('things', 'note', { type: S.TEXT }); },
  async down(qi) { await qi.removeColum('things', 'note'); },
};
"""


def test_declared_irreversible_stops_the_walk_and_fails_only_when_strict(
    pg_server: str, tmp_path: Path
) -> None:
    from tests.support.pg import create_database, drop_database

    folder = write(
        tmp_path / "migrations",
        {"001-things.js": JS_TABLE, "002-throws.js": JS_THROWS, "003-no-down.js": JS_NO_DOWN},
    )
    for strict, expected in ((False, 0), (True, VERIFY_FAILED)):
        url = create_database(pg_server)
        try:
            args = ["--url", url, "--migrations-path", str(folder)]
            code, doc, err = verify_json(*args, *(["--strict"] if strict else []))
        finally:
            drop_database(pg_server, url)
        assert code == expected, err
        steps = {m["name"]: m for m in doc["migrations"]}
        assert steps["003-no-down.js"]["down"] == "irreversible (declared)"
        assert steps["003-no-down.js"]["detail"] == "no down()"
        assert steps["002-throws.js"]["down"] == "not run"
        assert doc["problem"] == ("003-no-down.js: irreversible (declared)" if strict else None)

    # without 003, the walk reaches 002, whose down() throws on purpose
    (folder / "003-no-down.js").unlink()
    url = create_database(pg_server)
    try:
        code, doc, err = verify_json("--url", url, "--migrations-path", str(folder))
    finally:
        drop_database(pg_server, url)
    assert code == 0, err
    step = doc["migrations"][1]
    assert (step["name"], step["down"]) == ("002-throws.js", "irreversible (declared)")
    assert "legacy ids cannot be restored" in step["detail"]


def test_a_down_that_fails_by_mistake_fails_verify(db_url: str, tmp_path: Path) -> None:
    folder = write(tmp_path / "migrations", {"001-things.js": JS_TABLE, "002-typo.js": JS_TYPO})
    code, doc, err = verify_json("--url", db_url, "--migrations-path", str(folder))
    assert code == VERIFY_FAILED, err
    step = doc["migrations"][1]
    assert step["down"] == "failed" and "removeColum" in step["detail"]
    assert "error: verify failed: 002-typo.js: down() failed:" in err


def test_refuses_a_database_that_is_not_empty(db_url: str, db: psycopg.Connection) -> None:
    db.execute("CREATE TABLE keep_me (id int)")
    r = run_cli("verify", "--url", db_url, "--migrations-path", str(FORUM))
    assert r.returncode == 2, r.stderr
    assert "verify needs an empty database" in r.stderr and "keep_me" in r.stderr
    assert db.execute("""SELECT to_regclass('"SequelizeMeta"')""").fetchone() == (None,)
    assert db.execute("SELECT to_regclass('keep_me') IS NOT NULL").fetchone() == (True,)


def test_embedded_when_no_database_is_named_and_never_for_up(tmp_path: Path) -> None:
    """verify without --url starts a throwaway server, even with DATABASE_URL set (never the
    target); up/down/status without a database keep failing with "no database configured"."""
    assert embedded_available(), "the embedded extra is part of the test extras"
    folder = write(tmp_path / "migrations", {"001-things.js": JS_TABLE})
    unreachable = {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/never"}
    r = run_cli("verify", "--migrations-path", str(folder), env=unreachable)
    assert r.returncode == 0, r.stderr
    assert "throwaway PostgreSQL 18" in r.stdout
    assert "001-things.js  up ok, down ok, up again ok" in r.stdout
    for cmd in ("up", "status", "down"):
        r = run_cli(cmd, "--migrations-path", str(folder))
        assert r.returncode == 2, (cmd, r.stderr)
        assert "no database configured" in r.stderr
