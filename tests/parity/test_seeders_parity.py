"""Seeders and the other sequelize-cli commands, compared with the real sequelize-cli 6.6.5.

Each tool gets its own copy of the seeders fixture (``.sequelizerc``, a JSON config with one
environment per ``seederStorage``, a migration and two seeders) and its own database, runs the
same command lines, and after every step both databases must hold the same rows, the same
``SequelizeData``-style table, and (JSON storage) the same ``sequelize-data.json``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.conftest import FIXTURES, run_cli
from tests.parity.conftest import SequelizeCli
from tests.support.catalog import diff_fingerprints, fingerprint
from tests.support.runners import DEFAULT_KEY

APP = FIXTURES / "seeders"
DEMO = "20240101000000-demo-people.js"
MORE = "20240101000100-more-people.js"


def people(url: str) -> list[tuple[str, bool]]:
    with psycopg.connect(url) as conn:
        return conn.execute('SELECT name, "isBetaMember" FROM "People" ORDER BY id').fetchall()


def recorded(url: str, table: str) -> list[str] | None:
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass(%s)", (f'"{table}"',)).fetchone() == (None,):
            return None
        return [r[0] for r in conn.execute(f'SELECT name FROM "{table}" ORDER BY name')]


def copy_app(tmp_path: Path, who: str) -> Path:
    dst = tmp_path / who
    shutil.copytree(APP, dst)
    return dst


def both(
    sequelize_cli: SequelizeCli,
    apps: tuple[Path, Path],
    urls: tuple[str, str],
    env_name: str,
    *args: str,
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    ref = sequelize_cli(*args, "--env", env_name, env={"DATABASE_URL": urls[0]}, cwd=apps[0])
    ours = run_cli(*args, "--env", env_name, env={"DATABASE_URL": urls[1]}, cwd=apps[1])
    return ref, ours


PEOPLE = (
    'CREATE TABLE "People" (id serial PRIMARY KEY, name varchar(255) NOT NULL, '
    '"isBetaMember" boolean NOT NULL DEFAULT false, "createdAt" timestamptz NOT NULL, '
    '"updatedAt" timestamptz NOT NULL)'
)
STEPS_SEQUELIZE = [
    ("db:seed:all",),
    ("db:seed:undo",),
    ("db:seed", "--seed", "20240101000100-more"),  # umzug's prefix match
    ("db:seed:undo:all",),
]
STEPS_NONE = [
    ("db:seed:all",),
    ("db:seed:all",),  # nothing recorded: everything runs again, as in sequelize-cli
    ("db:seed:undo",),  # with nothing recorded: the last file
]
# sequelize-data.json keeps insertion order: undo reverts the last seeded, not the last name
STEPS_JSON = [("db:seed", "--seed", MORE), ("db:seed", "--seed", DEMO), ("db:seed:undo",)]


@pytest.mark.parametrize(
    ("env_name", "steps"),
    [("sequelize", STEPS_SEQUELIZE), ("none", STEPS_NONE), ("json", STEPS_JSON)],
)
def test_seed_commands_match_sequelize_cli(
    sequelize_cli: SequelizeCli,
    tmp_path: Path,
    db_url: str,
    other_db_url: str,
    env_name: str,
    steps: list[tuple[str, ...]],
) -> None:
    apps = (copy_app(tmp_path, "sequelize-cli"), copy_app(tmp_path, "migrunner"))
    urls = (db_url, other_db_url)
    for url in urls:
        with psycopg.connect(url) as conn:
            conn.execute(PEOPLE)
    for step in steps:
        ref, ours = both(sequelize_cli, apps, urls, env_name, *step)
        assert ref.returncode == 0, (step, ref.stdout + ref.stderr)
        assert ours.returncode == 0, (step, ours.stderr)
        assert people(db_url) == people(other_db_url), step
        assert recorded(db_url, "SeedHistory") == recorded(other_db_url, "SeedHistory"), step
        if env_name == "json":
            stored = [json.loads((a / "sequelize-data.json").read_text()) for a in apps]
            assert stored[0] == stored[1], step
    a = fingerprint(db_url, exclude_tables=("migrunner_history", "migrunner_verified"))
    b = fingerprint(other_db_url, exclude_tables=("migrunner_history", "migrunner_verified"))
    assert a == b, diff_fingerprints(a, b, ("sequelize-cli", "migrunner"))


def test_failing_seeder_is_rolled_back_whole(tmp_path: Path, db_url: str) -> None:
    app = copy_app(tmp_path, "app")
    (app / "seeders" / "20240101000200-broken.js").write_text(
        "module.exports = { async up(qi) {\n"
        "  await qi.bulkInsert('People', [{ name: 'Half', createdAt: new Date(), "
        "updatedAt: new Date() }]);\n"
        "  await qi.sequelize.query('SELECT no_such_column FROM \"People\"');\n"
        "} };\n"
    )
    env = {"DATABASE_URL": db_url}
    assert run_cli("db:migrate", "--env", "sequelize", env=env, cwd=app).returncode == 0
    r = run_cli("db:seed:all", "--env", "sequelize", env=env, cwd=app)
    assert r.returncode == 1
    assert "error: seeder 20240101000200-broken.js failed (up) at " in r.stderr, r.stderr
    assert "20240101000200-broken.js:3: column" in r.stderr, r.stderr
    assert "42703" in r.stderr
    # the two good seeders committed, the broken one left nothing behind
    assert [n for n, _ in people(db_url)] == ["Ada", "Grace", "Linus (after 2)"]
    assert recorded(db_url, "SeedHistory") == [DEMO, MORE]


def test_seeders_wait_for_the_migration_lock(tmp_path: Path, db_url: str) -> None:
    from tests.conftest import popen_cli
    from tests.support.state import backends, wait_for

    app = copy_app(tmp_path, "app")
    env = {"DATABASE_URL": db_url}
    assert run_cli("db:migrate", "--env", "none", env=env, cwd=app).returncode == 0
    with psycopg.connect(db_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (DEFAULT_KEY,))
        proc = popen_cli("db:seed:all", "--env", "none", env=env, cwd=app)
        wait_for(lambda: backends(db_url, "migrunner/% waiting %"), what="seeder waiting")
        assert people(db_url) == []
        holder.execute("SELECT pg_advisory_unlock(%s)", (DEFAULT_KEY,))
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(people(db_url)) == 3


def test_db_migrate_name_and_from_match_sequelize_cli(
    sequelize_cli: SequelizeCli, tmp_path: Path, db_url: str, other_db_url: str
) -> None:
    apps = (copy_app(tmp_path, "sequelize-cli"), copy_app(tmp_path, "migrunner"))
    for app in apps:
        for n in (1, 2, 3):
            (app / "migrations" / f"2024010200000{n}-t{n}.js").write_text(
                "module.exports = {\n"
                f"  up: (qi) => qi.sequelize.query('CREATE TABLE t{n} (id int)'),\n"
                f"  down: (qi) => qi.sequelize.query('DROP TABLE t{n}'),\n"
                "};\n"
            )
    urls = (db_url, other_db_url)
    steps = [
        ("db:migrate", "--name", "20240102000002"),  # prefix: only t2, earlier ones stay pending
        ("db:migrate", "--from", "20240102000001-t1.js"),  # after t1 (excluded): t3
        ("db:migrate", "--from", "20240102000002-t2.js"),  # not pending: nothing
    ]
    for step in steps:
        ref, ours = both(sequelize_cli, apps, urls, "none", *step)
        assert ref.returncode == 0 and ours.returncode == 0, (step, ref.stdout, ours.stderr)
        assert recorded(db_url, "SequelizeMeta") == recorded(other_db_url, "SequelizeMeta"), step
    assert recorded(other_db_url, "SequelizeMeta") == [
        "20240102000002-t2.js",
        "20240102000003-t3.js",
    ]
    ref, ours = both(sequelize_cli, apps, urls, "none", "db:migrate", "--name", "20240102000002")
    assert ref.returncode == 1 and "is not pending" in ref.stdout + ref.stderr
    assert ours.returncode == 2 and "is not pending" in ours.stderr


def test_generate_names_and_skeletons(sequelize_cli: SequelizeCli, tmp_path: Path) -> None:
    apps = (copy_app(tmp_path, "sequelize-cli"), copy_app(tmp_path, "migrunner"))
    for command, folder in (("migration:generate", "migrations"), ("seed:generate", "seeders")):
        ref = sequelize_cli(command, "--name", "add-things", cwd=apps[0])
        ours = run_cli(command, "--name", "add-things", cwd=apps[1])
        assert ref.returncode == 0 and ours.returncode == 0, ours.stderr
        made = [sorted((a / folder).glob("*-add-things.js")) for a in apps]
        assert len(made[0]) == len(made[1]) == 1
        assert re.fullmatch(r"\d{14}-add-things\.js", made[1][0].name)
        # same skeleton, loadable: node sees up and down functions
        shape = subprocess.run(
            [
                "node",
                "-e",
                "const m = require(process.argv[1]); console.log(typeof m.up, typeof m.down)",
                str(made[1][0]),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert shape == "function function"
    sql = run_cli("migration:generate", "--name", "raw", "--sql", cwd=apps[1])
    assert sql.returncode == 0
    (made_sql,) = (apps[1] / "migrations").glob("*-raw.sql")
    assert made_sql.read_text().startswith("-- migrate:up\n")
    # --seeders-path wins over the rc's seeders-path; the folder is created
    other = run_cli("seed:generate", "--name", "x", "--seeders-path", "db/seeds", cwd=apps[1])
    assert other.returncode == 0, other.stderr
    assert len(list((apps[1] / "db" / "seeds").glob("*-x.js"))) == 1


def test_db_create_and_drop_match_sequelize_cli(
    sequelize_cli: SequelizeCli, tmp_path: Path, pg_server: str
) -> None:
    import uuid

    from tests.support.pg import drop_database, with_database

    names = [f"mrt_create_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    # sequelize-cli takes the dialect from the scheme and knows "postgres" only for db:create
    urls = [with_database(pg_server, n).replace("postgresql://", "postgres://", 1) for n in names]
    apps = (copy_app(tmp_path, "sequelize-cli"), copy_app(tmp_path, "migrunner"))
    try:
        args = ("--env", "none", "--encoding", "UTF8", "--template", "template0")
        ref = sequelize_cli("db:create", *args, env={"DATABASE_URL": urls[0]}, cwd=apps[0])
        ours = run_cli("db:create", *args, env={"DATABASE_URL": urls[1]}, cwd=apps[1])
        assert ref.returncode == 0 and ours.returncode == 0, ours.stderr
        assert f"Database {names[1]} created." in ours.stdout
        with psycopg.connect(pg_server) as conn:
            rows = conn.execute(
                "SELECT pg_encoding_to_char(encoding), datcollate FROM pg_database "
                "WHERE datname = ANY(%s)",
                (names,),
            ).fetchall()
        assert len(rows) == 2 and rows[0] == rows[1]
        again = run_cli("db:create", "--env", "none", env={"DATABASE_URL": urls[1]}, cwd=apps[1])
        assert again.returncode == 1 and "42P04" in again.stderr
        ours = run_cli("db:drop", "--env", "none", env={"DATABASE_URL": urls[1]}, cwd=apps[1])
        assert ours.returncode == 0 and f"Database {names[1]} dropped." in ours.stdout
        with psycopg.connect(pg_server) as conn:
            left = conn.execute(
                "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (names,)
            ).fetchall()
        assert left == [(names[0],)]
    finally:
        for url in urls:
            drop_database(pg_server, url)
