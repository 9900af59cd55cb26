"""Inputs that used to end in a traceback, a wrong exit code, a leaked secret or SQL built from
a file name: each ends in one line, the right exit code, and an untouched database."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
from psycopg import sql as psql

from tests.conftest import run_cli
from tests.support.state import history_rows, meta_rows, snapshot


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def one_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_unescaped_at_in_the_url_password_is_parsed_as_node_does(
    db_url: str, tmp_path: Path
) -> None:
    folder = write(tmp_path / "m", {"001-a.sql": "-- migrate:up\nCREATE TABLE a (id int);\n"})
    password = "Pa@Ssw0rd-X"  # node's url.parse: the LAST '@' ends the userinfo
    url = db_url.replace("postgres@", f"postgres:{password}@", 1)
    ok = run_cli("up", "--url", url, "--migrations-path", str(folder))
    assert ok.returncode == 0, ok.stderr
    assert meta_rows(db_url) == ("001-a.sql",)
    wrong = run_cli("status", "--url", url + "_missing", "--migrations-path", str(folder))
    assert wrong.returncode == 2
    line = one_error(wrong.stderr)
    assert "does not exist" in line
    for text in (wrong.stdout + wrong.stderr, ok.stdout + ok.stderr):
        assert password not in text and "Ssw0rd-X" not in text


def test_dangling_symlink_is_an_error_before_anything_runs(db_url: str, tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"001-a.sql": "-- migrate:up\nCREATE TABLE a (id int);\n"})
    (folder / "002-b.sql").symlink_to(tmp_path / "gone" / "002-b.sql")  # a half-updated volume
    before = snapshot(db_url)
    r = run_cli("up", "--url", db_url, "--migrations-path", str(folder))
    assert r.returncode == 2, r.stderr
    assert "002-b.sql: dangling symlink" in one_error(r.stderr)
    assert snapshot(db_url) == before


def test_file_name_that_is_not_utf8(db_url: str, tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"001-a.sql": "-- migrate:up\nCREATE TABLE a (id int);\n"})
    raw = os.path.join(os.fsencode(folder), b"002-caf\xe9.sql")
    with open(raw, "wb") as f:
        f.write(b"-- migrate:up\nCREATE TABLE b (id int);\n")
    before = snapshot(db_url)
    r = run_cli("up", "--url", db_url, "--migrations-path", str(folder))
    assert r.returncode == 2, r.stderr
    assert "'002-caf\\xe9.sql' is not valid UTF-8" in one_error(r.stderr)
    assert snapshot(db_url) == before


def test_secrets_never_printed_even_in_a_dry_run_plan(db_url: str, tmp_path: Path) -> None:
    db_password, pg_password, url_password = "Db-Secret-4711", "Pg-Secret-0815", "Url-Secret-42"
    folder = write(
        tmp_path / "m",
        {
            "001-role.js": "module.exports = { async up(qi) {\n"
            "  await qi.sequelize.query(`COMMENT ON SCHEMA public IS "
            "'${process.env.DB_PASSWORD} ${process.env.PGPASSWORD} ${process.env.APP_URL}'`);\n"
            "}, async down() {} };\n",
            "002-plain.sql": f"-- migrate:up\nCOMMENT ON SCHEMA public IS '{pg_password}';\n",
        },
    )
    url = db_url.replace("postgres@", f"postgres:{url_password}@", 1)
    env = {"DB_PASSWORD": db_password, "PGPASSWORD": pg_password, "APP_URL": url}
    r = run_cli("up", "--dry-run", "--url", url, "--migrations-path", str(folder), env=env)
    assert r.returncode == 0, r.stderr
    assert "COMMENT ON SCHEMA public IS '*** ***" in r.stdout
    for secret in (db_password, pg_password, url_password):
        assert secret not in r.stdout + r.stderr


def test_file_name_is_never_sql_with_standard_conforming_strings_off(
    db: psycopg.Connection, db_url: str, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE victim (id int)")
    db.execute(
        psql.SQL("ALTER DATABASE {} SET standard_conforming_strings = off").format(
            psql.Identifier(db.info.dbname)
        )
    )
    name = "001-x\\';DROP TABLE victim;--.sql"
    folder = write(tmp_path / "m", {name: "-- migrate:up\nCREATE TABLE a (id int);\n"})
    r = run_cli("up", "--url", db_url, "--migrations-path", str(folder))
    assert r.returncode == 0, r.stderr
    assert db.execute("SELECT to_regclass('victim') IS NOT NULL").fetchone() == (True,)
    assert meta_rows(db_url) == (name,)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (("up", "--lock-timeout", "nan"), "--lock-timeout nan: expected a finite"),
        (("up", "--lock-timeout", "-1"), "--lock-timeout -1.0: expected a finite"),
        (("up", "--migration-timeout", "inf"), "--migration-timeout inf: expected a finite"),
        (("history", "--limit", "-1"), "Invalid value for '--limit'"),
    ],
)
def test_bad_numbers_are_usage_errors(
    db_url: str, tmp_path: Path, args: tuple[str, ...], pattern: str
) -> None:
    folder = write(tmp_path / "m", {"001-a.sql": "-- migrate:up\nCREATE TABLE a (id int);\n"})
    r = run_cli(*args, "--url", db_url, "--migrations-path", str(folder), timeout=30)
    assert r.returncode == 2, r.stderr
    assert pattern in one_error(r.stderr)
    assert meta_rows(db_url) == ()


def test_no_exit_2_once_migrations_ran(db_url: str, tmp_path: Path) -> None:
    """node turns out broken at the first JS migration, after a SQL one committed: exit 2
    ("nothing ran") would be a lie."""
    folder = write(
        tmp_path / "m",
        {
            "001-a.sql": "-- migrate:up\nCREATE TABLE a (id int);\n",
            "002-b.js": "module.exports = { async up() {}, async down() {} };\n",
        },
    )
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "node").write_text("#!/bin/sh\necho 'node: cannot start' >&2\nexit 1\n")
    (fake / "node").chmod(0o755)
    # named explicitly: with the [node] extra installed a broken node on PATH is passed over
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "MIGRUNNER_NODE": str(fake / "node")}
    r = run_cli("up", "--url", db_url, "--migrations-path", str(folder), env=env)
    assert r.returncode == 1, r.stderr
    line = one_error(r.stderr)
    assert "after 1 migration(s) of this run were applied: 001-a.sql" in line
    assert meta_rows(db_url) == ("001-a.sql",)


def test_lone_surrogate_in_a_js_parameter_is_stored_as_replacement_character(
    db: psycopg.Connection, db_url: str, tmp_path: Path
) -> None:
    folder = write(
        tmp_path / "m",
        {
            "001-s.js": "module.exports = { async up(qi, S) {\n"
            "  await qi.createTable('notes', { body: S.TEXT });\n"
            "  await qi.bulkInsert('notes', [{ body: 'a\\uD800b' }]);\n"
            "  await qi.sequelize.query('INSERT INTO notes VALUES ($1)',"
            " { bind: ['c\\uDC00d'] });\n"
            "}, async down() {} };\n",
        },
    )
    r = run_cli("up", "--url", db_url, "--migrations-path", str(folder))
    assert r.returncode == 0, r.stderr
    rows = [row[0] for row in db.execute("SELECT body FROM notes ORDER BY body")]
    assert rows == ["a\ufffdb", "c\ufffdd"]  # what sequelize-cli (node's pg) stores
    assert history_rows(db_url) == [("001-s.js", "up", "applied")]
