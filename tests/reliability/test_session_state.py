"""What a migration does to its session never reaches the bookkeeping or the next migration;
the runner's own sessions survive hostile server settings (idle timeouts, LATIN1).

Database- and role-level settings (ALTER DATABASE/ROLE ... SET) on the test's own database and
role stand in for a managed server's configuration: the shared server is never reconfigured.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql as psql

from runner.lock import lock_key
from tests.conftest import popen_cli, run_cli
from tests.support.pg import with_database
from tests.support.runners import finish
from tests.support.state import backends, dump, wait_for


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def up(db_url: str, folder: Path, *extra: str) -> None:
    r = run_cli("up", "--url", db_url, "--migrations-path", str(folder), *extra)
    assert r.returncode == 0, r.stderr


def schema_of(db: psycopg.Connection, table: str) -> list[str]:
    return [
        r[0]
        for r in db.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = %s ORDER BY 1",
            (table,),
        )
    ]


def test_pg_dump_header_in_a_sql_migration(db: psycopg.Connection, db_url: str, tmp_path: Path):
    folder = write(
        tmp_path / "m",
        {
            "001-dump.sql": "-- migrate:up\n"
            "SET statement_timeout = 0;\n"
            "SELECT pg_catalog.set_config('search_path', '', false);\n"
            "CREATE TABLE public.dumped (id integer);\n",
            "002-next.sql": "-- migrate:up\nCREATE TABLE after_dump (id integer);\n",
        },
    )
    up(db_url, folder)
    assert schema_of(db, "after_dump") == ["public"]  # the next one saw a reset search_path
    names = [r[0] for r in db.execute('SELECT name FROM public."SequelizeMeta" ORDER BY 1')]
    assert names == ["001-dump.sql", "002-next.sql"]


FOLDER = {
    "001-elsewhere.sql": "-- migrate:up\nSET search_path = other;\nCREATE TABLE x (id int);\n",
    "002-plain.sql": "-- migrate:up\nCREATE TABLE y (id int);\n",
}


@pytest.mark.parametrize("batched", [True, False], ids=["one-run", "up-to-then-up"])
def test_search_path_never_reaches_the_next_migration_or_another_apps_table(
    db: psycopg.Connection, db_url: str, tmp_path: Path, batched: bool
) -> None:
    db.execute("CREATE SCHEMA other")
    # another app's SequelizeMeta, in the schema the first migration switches to
    db.execute('CREATE TABLE other."SequelizeMeta" (name varchar(255) PRIMARY KEY)')
    folder = write(tmp_path / "m", FOLDER)
    if batched:
        up(db_url, folder)
    else:
        up(db_url, folder, "--to", "001-elsewhere.sql")
        up(db_url, folder)
    assert schema_of(db, "x") == ["other"]
    assert schema_of(db, "y") == ["public"]
    assert db.execute('SELECT count(*) FROM other."SequelizeMeta"').fetchone() == (0,)
    names = [r[0] for r in db.execute('SELECT name FROM public."SequelizeMeta" ORDER BY 1')]
    assert names == sorted(FOLDER)
    assert run_cli("up", "--url", db_url, "--migrations-path", str(folder)).returncode == 0


@pytest.fixture
def role(db: psycopg.Connection) -> Iterator[str]:
    name = f"mrt_role_{uuid.uuid4().hex[:8]}"
    db.execute(psql.SQL("CREATE ROLE {} NOLOGIN").format(psql.Identifier(name)))
    try:
        yield name
    finally:
        db.execute(psql.SQL("DROP OWNED BY {}").format(psql.Identifier(name)))
        db.execute(psql.SQL("DROP ROLE {}").format(psql.Identifier(name)))


def test_set_role_and_temp_tables_stay_in_their_migration(
    db: psycopg.Connection, db_url: str, tmp_path: Path, role: str
) -> None:
    db.execute(psql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(psql.Identifier(role)))
    folder = write(
        tmp_path / "m",
        {
            "001-as-role.sql": f"-- migrate:up\nSET ROLE {role};\nCREATE TABLE by_role (id int);\n"
            "CREATE TEMP TABLE scratch (id int);\n",
            "002-next.sql": "-- migrate:up\nCREATE TEMP TABLE scratch (id int);\n"
            "CREATE TABLE by_runner (id int);\n",
        },
    )
    up(db_url, folder)
    owners = dict(
        db.execute(
            "SELECT tablename, tableowner FROM pg_tables WHERE tablename IN ('by_role', 'by_runner')"
        ).fetchall()
    )
    assert owners == {"by_role": role, "by_runner": "postgres"}
    assert len(db.execute('SELECT * FROM "SequelizeMeta"').fetchall()) == 2


def test_lock_key_follows_the_schema_the_table_resolves_to(
    db: psycopg.Connection, db_url: str, tmp_path: Path
) -> None:
    """Without --schema, a role whose search_path leads to `app` uses app."SequelizeMeta":
    it must share the lock of a runner given --schema app."""
    db.execute("CREATE SCHEMA app")
    dbname = db.info.dbname
    db.execute(psql.SQL("ALTER DATABASE {} SET search_path = app").format(psql.Identifier(dbname)))
    folder = write(tmp_path / "m", {"001-a.sql": "-- migrate:up\nCREATE TABLE a (id int);\n"})
    other = psycopg.connect(db_url, autocommit=True)  # stands in for `up --schema app`
    other.execute("SELECT pg_advisory_lock(%s)", (lock_key("app", "SequelizeMeta"),))
    proc = popen_cli("up", "--url", db_url, "--migrations-path", str(folder))
    wait_for(lambda: backends(db_url, "migrunner/% waiting %"), what="the runner waits")
    other.close()
    code, err = finish(proc)
    assert code == 0, err
    assert schema_of(db, "SequelizeMeta") == ["app"]
    status = run_cli("lock", "status", "--json", "--url", db_url)
    assert f'"key": {lock_key("app", "SequelizeMeta")}' in status.stdout


@pytest.fixture
def latin1_url(pg_server: str) -> Iterator[str]:
    name = f"mrt_latin1_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(
            psql.SQL(
                "CREATE DATABASE {} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
                "TEMPLATE template0"
            ).format(psql.Identifier(name))
        )
    try:
        yield with_database(pg_server, name)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(
                psql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psql.Identifier(name))
            )


def test_sql_text_reaches_a_latin1_database_intact(latin1_url: str, tmp_path: Path) -> None:
    folder = write(
        tmp_path / "m",
        {
            "001-city.sql": "-- migrate:up\nCREATE TABLE city (name text);\n"
            "INSERT INTO city VALUES ('Zürich');\n",
            "002-js.js": "module.exports = { async up(qi) {\n"
            "  await qi.sequelize.query(\"INSERT INTO city VALUES ('Genève')\");\n"
            "  await qi.bulkInsert('city', [{ name: 'Köln' }]);\n"
            "}, async down() {} };\n",
        },
    )
    up(latin1_url, folder)
    with psycopg.connect(latin1_url, client_encoding="UTF8") as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM city ORDER BY name")]
    assert names == ["Genève", "Köln", "Zürich"]


def test_idle_timeouts_on_the_database_do_not_end_the_runner(
    db: psycopg.Connection, db_url: str, tmp_path: Path
) -> None:
    """A JS backfill pausing between batches (sequelize-cli completes it), and a waiter idle
    between polls, on a database with 300 ms idle timeouts."""
    dbname = db.info.dbname
    for setting in ("idle_session_timeout", "idle_in_transaction_session_timeout"):
        db.execute(
            psql.SQL("ALTER DATABASE {} SET {} = '300ms'").format(
                psql.Identifier(dbname), psql.Identifier(setting)
            )
        )
    folder = write(
        tmp_path / "m",
        {
            "001-backfill.js": "module.exports = { async up(qi) {\n"
            "  await qi.sequelize.query('CREATE TABLE filled (n int)');\n"
            "  for (let i = 0; i < 3; i++) {\n"
            "    await qi.sequelize.query(`INSERT INTO filled VALUES (${i})`);\n"
            "    await new Promise((r) => setTimeout(r, 500));  // throttled\n"
            "  }\n"
            "}, async down() {} };\n",
        },
    )
    holder = psycopg.connect(db_url, autocommit=True)
    holder.execute("SET idle_session_timeout = 0")
    holder.execute("SELECT pg_advisory_lock(%s)", (lock_key(None, "SequelizeMeta"),))
    proc = popen_cli("up", "--url", db_url, "--migrations-path", str(folder))
    (waiter, *_), *_ = wait_for(
        lambda: backends(db_url, "migrunner/% waiting %"), what="the runner waits"
    )

    seen: set[object] = set()

    def polled_again() -> bool:
        assert proc.poll() is None, proc.communicate()[1]
        row = holder.execute(
            "SELECT query_start FROM pg_stat_activity WHERE pid = %s", (waiter,)
        ).fetchone()
        assert row is not None, "the waiter's session was ended"
        seen.add(row[0])
        return len(seen) >= 3

    # polled twice more (1 s apart, idle in between for longer than the timeout), same session
    wait_for(polled_again, what="two more polls by the same waiter")
    holder.close()
    code, err = finish(proc)
    assert code == 0, err
    assert [r[0] for r in db.execute("SELECT n FROM filled ORDER BY n")] == [0, 1, 2]
    assert "001-backfill.js" in dump(db_url, "--data-only", "-t", '"SequelizeMeta"')
