"""Bad input: each case asserts the exit code, one clear error line (file, line, SQLSTATE where
relevant), that schema and SequelizeMeta are unchanged, and that the password never shows.

Every case starts from the same database: the example's first migration applied by migrunner,
so SequelizeMeta and the history exist. The URL carries a password (accepted by the local
trust auth) that must appear in no output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from runner.lock import lock_key
from tests.conftest import FIXTURES, ROOT, cli_env, run_cli
from tests.support.cluster import private_cluster
from tests.support.state import meta_rows, snapshot

EXAMPLE = FIXTURES / "example" / "migrations"
FIRST = sorted(p.name for p in EXAMPLE.iterdir())[0]
PASSWORD = "s3cr3t-Pa55:w/rd@x"
QUOTED = "s3cr3t-Pa55%3Aw%2Frd%40x"


@dataclass
class Case:
    id: str
    code: int
    pattern: str  # regex the error line must match
    files: dict[str, str | bytes] = field(default_factory=dict)  # added to the folder
    args: tuple[str, ...] = ("up",)
    env: dict[str, str] = field(default_factory=dict)
    url: bool = True  # pass --url with the password
    folder: str | None = None  # override --migrations-path ("{tmp}" is replaced)
    edit: Callable[[Path, str], None] | None = None  # (folder, url) -> None, before the run
    as_nobody: bool = False
    app_only: bool = False  # a failed migration leaves a 'failed' history row (by design)


def sql(up: str, down: str = "SELECT 1;") -> str:
    return f"-- migrate:up\n{up}\n-- migrate:down\n{down}\n"


def chmod(path_in_folder: str, mode: int) -> Callable[[Path, str], None]:
    def edit(folder: Path, url: str) -> None:
        os.chmod(folder / path_in_folder if path_in_folder else folder, mode)

    return edit


def append_to_first(folder: Path, url: str) -> None:
    with open(folder / FIRST, "a") as f:
        f.write("\n-- edited after it ran\n")


def remove_first(folder: Path, url: str) -> None:
    (folder / FIRST).unlink()


def hold_lock(folder: Path, url: str) -> None:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SELECT pg_advisory_lock(%s)", (lock_key(None, "SequelizeMeta"),))
    HELD.append(conn)


def write_config(text: str, name: str = "database.js") -> Callable[[Path, str], None]:
    def edit(folder: Path, url: str) -> None:
        (folder.parent / "config").mkdir(exist_ok=True)
        (folder.parent / "config" / name).write_text(text)

    return edit


HELD: list[psycopg.Connection] = []

CASES = [
    Case(
        "missing-folder", 2, r"migrations folder not found: /nonexistent/m", folder="/nonexistent/m"
    ),
    Case(
        "path-is-a-file",
        2,
        r"migrations path is not a folder: .*/m/" + re.escape(FIRST),
        folder="{tmp}/m/" + FIRST,
    ),
    Case(
        "unreadable-folder",
        2,
        r"migrations folder is not readable: .*/m$",
        edit=chmod("", 0o000),
        as_nobody=True,
    ),
    Case(
        "unreadable-file",
        2,
        r"002-x\.sql: cannot read migration file: Permission denied",
        files={"002-x.sql": sql("SELECT 1;")},
        edit=chmod("002-x.sql", 0o000),
        as_nobody=True,
    ),
    Case("empty-folder", 2, r"no migrations found in /.*/empty", folder="{tmp}/empty"),
    Case(
        "duplicate-stem",
        2,
        r"duplicate migration name '002-users': 002-users\.js and 002-users\.sql",
        files={
            "002-users.sql": sql("SELECT 1;"),
            "002-users.js": "module.exports = {up: async () => {}};",
        },
    ),
    Case(
        "no-up-header",
        2,
        r"003-x\.sql:1: a SQL migration must start with a '-- migrate:up' section",
        files={"003-x.sql": "CREATE TABLE x (a int);\n"},
    ),
    Case(
        "down-before-up",
        2,
        r"003-x\.sql:1: .*found migrate:down first",
        files={"003-x.sql": "-- migrate:down\nSELECT 1;\n-- migrate:up\nSELECT 1;\n"},
    ),
    Case(
        "sql-before-header",
        2,
        r"003-x\.sql:1: SQL before the '-- migrate:up' header",
        files={"003-x.sql": "SELECT 1;\n-- migrate:up\nSELECT 2;\n"},
    ),
    Case(
        "two-up-sections",
        2,
        r"003-x\.sql:3: second '-- migrate:up' section",
        files={"003-x.sql": "-- migrate:up\nSELECT 1;\n-- migrate:up\nSELECT 2;\n"},
    ),
    Case(
        "unknown-section",
        2,
        r"003-x\.sql:3: unknown section '-- migrate:sideways'",
        files={"003-x.sql": "-- migrate:up\nSELECT 1;\n-- migrate:sideways\n"},
    ),
    Case(
        "syntax-error-mid-file",
        2,
        r"003-bad\.sql:5: syntax error at or near \"CREAT\" \[SQLSTATE 42601\]",
        files={
            "002-good.sql": sql("CREATE TABLE good (a int);", "DROP TABLE good;"),
            "003-bad.sql": "-- migrate:up\nCREATE TABLE b1 (a int);\n\nCREATE TABLE b2 (a int);\nCREAT TABLE b3 (a int);\nCREATE TABLE b4 (a int);\n",
        },
    ),
    Case(
        "runtime-error-mid-file",
        1,
        r"migration 002-bad\.sql failed \(up\) at .*002-bad\.sql:4: relation \"nope\" does not exist \[SQLSTATE 42P01\] in statement: INSERT INTO nope VALUES \(1\)",
        files={
            "002-bad.sql": "-- migrate:up\nCREATE TABLE b1 (a int);\nINSERT INTO b1 VALUES (1);\nINSERT INTO nope VALUES (1);\nCREATE TABLE b2 (a int);\n"
        },
        app_only=True,
    ),
    Case(
        "txn-control-in-txn",
        2,
        r"002-x\.sql:3: 'COMMIT' inside a transactional migration",
        files={"002-x.sql": "-- migrate:up\nCREATE TABLE x (a int);\nCOMMIT;\n"},
    ),
    Case(
        "non-utf8",
        2,
        r"002-x\.sql:3: not valid UTF-8 \(byte 0xe9",
        files={"002-x.sql": b"-- migrate:up\nSELECT 1;\nSELECT 'caf\xe9';\n"},
    ),
    Case(
        "huge-file",
        2,
        r"002-huge\.sql: 65 MiB is too large for a SQL migration \(limit 64 MiB\)",
        files={"002-huge.sql": ""},
        edit=lambda folder, url: os.truncate(folder / "002-huge.sql", 65 * 2**20),
    ),
    Case(
        "to-unknown",
        2,
        r"--to 'nope\.sql': no such migration in the migrations folder",
        args=("up", "--to", "nope.sql"),
        files={"002-x.sql": sql("SELECT 1;")},
    ),
    Case(
        "lock-timeout",
        4,
        r"could not take the migration lock \(key 3768718264265457331\) within 0\.3s: held by pid \d+",
        args=("up", "--lock-timeout", "0.3"),
        files={"002-x.sql": sql("CREATE TABLE x (a int);")},
        edit=hold_lock,
    ),
    Case(
        "applied-file-missing",
        6,
        r"applied but file missing: " + re.escape(FIRST),
        files={"002-x.sql": sql("CREATE TABLE x (a int);")},
        edit=remove_first,
    ),
    Case(
        "applied-file-edited",
        6,
        r"file changed since applied: " + re.escape(FIRST),
        files={"002-x.sql": sql("CREATE TABLE x (a int);")},
        edit=append_to_first,
    ),
    Case(
        "down-without-down-section",
        1,
        r"migration 30000000000000-x\.sql has no '-- migrate:down' section",
        args=("down",),
        files={"30000000000000-x.sql": "-- migrate:up\nCREATE TABLE x (a int);\n"},
        edit=lambda folder, url: apply_x(folder, url),
    ),
    Case("down-step-zero", 2, r"--step must be at least 1", args=("down", "--step", "0")),
    Case(
        "down-to-unknown",
        2,
        r"--to 'nope\.sql': migration is not applied",
        args=("down", "--to", "nope.sql"),
    ),
    Case(
        "down-conflicting",
        2,
        r"give at most one of --step, --to, --all, --name",
        args=("down", "--step", "1", "--all"),
    ),
    Case(
        "unknown-cli-option",
        2,
        r"No such option '--frobnicate'\. \(see 'migrunner up --help'\)",
        args=("up", "--frobnicate"),
    ),
    Case(
        # libpq's own message quotes the whole URL, password included: only redaction hides it
        "malformed-ipv6-url",
        2,
        r"malformed database URL \(--url\): end of string reached when looking for matching "
        r'"\]" in IPv6 host address in URI: "\*\*\*"',
        url=False,
        args=("up", "--url", f"postgres://postgres:{QUOTED}@[::1:5432/x"),
    ),
    Case(
        "malformed-url",
        2,
        r"malformed database URL \(--url\): port must be a number",
        url=False,
        args=("up", "--url", f"postgres://postgres:{QUOTED}@127.0.0.1:port/x"),
    ),
    Case(
        "wrong-scheme",
        2,
        r"malformed database URL \(DATABASE_URL\): expected postgres:// or postgresql://, got mysql://",
        url=False,
        env={"DATABASE_URL": f"mysql://root:{QUOTED}@127.0.0.1/x"},
    ),
    Case(
        "unreachable-host",
        5,
        r"cannot connect to postgres@127\.0\.0\.1:1/x: .*\(gave up after waiting 1s of "
        r"--wait-timeout 1s, \d+ attempts\)",
        url=False,
        args=(
            "up",
            "--wait",
            "--wait-timeout",
            "1",
            "--url",
            f"postgresql://postgres:{QUOTED}@127.0.0.1:1/x",
        ),
    ),
    Case(
        "no-such-database",
        2,
        r"cannot connect to postgres@127\.0\.0\.1:5432/mr_no_such_db: .*database \"mr_no_such_db\" does not exist",
        url=False,
        args=("up", "--url", f"postgresql://postgres:{QUOTED}@127.0.0.1:5432/mr_no_such_db"),
    ),
    Case("no-database-configured", 2, r"no database configured", url=False),
    Case(
        "bad-lock-timeout-env",
        2,
        r"Invalid value for '--lock-timeout' \(env var: 'MIGRUNNER_LOCK_TIMEOUT'\): 'soon' is not "
        r"a valid float",
        env={"MIGRUNNER_LOCK_TIMEOUT": "soon"},
    ),
    Case(
        "bad-log-format", 2, r"Invalid value for '--log-format'", args=("up", "--log-format", "xml")
    ),
    Case(
        "config-throws",
        2,
        r"config/database\.js.*boom from config",
        url=False,
        args=("up", "--config", "{tmp}/config/database.js"),
        edit=write_config("throw new Error('boom from config');\n"),
    ),
    Case(
        "config-unknown-env",
        2,
        r"environment 'staging' not found in .*database\.js \(has: development, production\)",
        url=False,
        args=("up", "--config", "{tmp}/config/database.js", "--env", "staging"),
        edit=write_config(
            "module.exports = {development: {dialect: 'postgres'}, production: {dialect: 'postgres'}};\n"
        ),
    ),
    Case(
        "config-missing-env-var",
        2,
        r"MR_TEST_NOT_SET",
        url=False,
        args=("up", "--config", "{tmp}/config/database.js"),
        edit=write_config(
            "module.exports = {development: {use_env_variable: 'MR_TEST_NOT_SET', dialect: 'postgres'}};\n"
        ),
    ),
    Case(
        "config-json-storage",
        2,
        r"migrationStorage.*json",
        url=False,
        args=("up", "--config", "{tmp}/config/database.json"),
        edit=write_config(
            '{"development": {"dialect": "postgres", "migrationStorage": "json", "host": "127.0.0.1"}}',
            "database.json",
        ),
    ),
    Case(
        "config-mysql",
        2,
        r"mysql",
        url=False,
        args=("up", "--config", "{tmp}/config/database.json"),
        edit=write_config(
            '{"development": {"dialect": "mysql", "host": "127.0.0.1"}}', "database.json"
        ),
    ),
    Case(
        "js-syntax-error",
        1,
        r"migration 002-x\.js failed to load at \S+/002-x\.js:4: SyntaxError: Unexpected identifier",
        files={
            "002-x.js": "module.exports = {\n  async up(queryInterface) {\n    await queryInterface.createTable('x', {});\n    this is not javascript;\n  },\n};\n"
        },
        app_only=True,
    ),
    Case(
        "js-throws-halfway",
        1,
        r"migration 002-x\.js failed \(up\) at \S+/002-x\.js:5: deliberate failure",
        files={
            "002-x.js": "module.exports = {\n  async up(qi, S) {\n    await qi.createTable('x1', {id: {type: S.INTEGER, primaryKey: true}});\n    await qi.sequelize.transaction(async (t) => { await qi.createTable('x2', {id: {type: S.INTEGER, primaryKey: true}}, {transaction: t}); });\n    throw new Error('deliberate failure');\n  },\n};\n"
        },
        app_only=True,
    ),
    Case(
        "js-statement-fails",
        1,
        r"migration 002-x\.js failed \(up\) at \S+/002-x\.js:4: relation \"public\.nope\" does not exist \[SQLSTATE 42P01\] in statement: ALTER TABLE",
        files={
            "002-x.js": "module.exports = {\n  async up(qi, S) {\n    await qi.createTable('x1', {id: {type: S.INTEGER, primaryKey: true}});\n    await qi.addColumn('nope', 'c', S.INTEGER);\n  },\n};\n"
        },
        app_only=True,
    ),
    Case(
        "js-missing-down",
        1,
        r"30000000000000-x\.js.*down",
        args=("down",),
        files={
            "30000000000000-x.js": "module.exports = {\n  async up(qi, S) {\n    await qi.createTable('x1', {id: {type: S.INTEGER, primaryKey: true}});\n  },\n};\n"
        },
        edit=lambda folder, url: apply_x(folder, url),
        app_only=True,
    ),
    Case(
        "js-down-returns-nothing",
        1,
        r"migration 30000000000000-x\.js failed \(down\) at \S+/30000000000000-x\.js: Migration 30000000000000-x\.js \(or wrapper\) didn't return a promise",
        args=("down",),
        files={
            "30000000000000-x.js": "module.exports = {\n  async up(qi, S) {\n    await qi.createTable('x1', {id: {type: S.INTEGER, primaryKey: true}});\n  },\n  down(qi) {\n    qi.dropTable('x1');\n  },\n};\n"
        },
        edit=lambda folder, url: apply_x(folder, url),
        app_only=True,
    ),
]


def apply_x(folder: Path, url: str) -> None:
    r = run_cli("up", "--url", url, "--migrations-path", str(folder))
    assert r.returncode == 0, r.stderr


@pytest.fixture
def base(db_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    url = db_url.replace("postgres@", f"postgres:{QUOTED}@")
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(EXAMPLE / FIRST, folder / FIRST)
    assert run_cli("up", "--url", url, "--migrations-path", str(folder)).returncode == 0
    (tmp_path / "empty").mkdir()
    os.chmod(tmp_path, 0o755)
    yield url, folder
    for conn in HELD:
        conn.close()
    HELD.clear()


def run_without_dac_override(
    args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as root minus the capabilities that bypass file permissions, so a mode-000
    file or folder is unreadable as it would be for the Job's uid 1001."""
    return subprocess.run(
        [
            "setpriv",
            "--bounding-set",
            "-dac_override,-dac_read_search",
            "--",
            sys.executable,
            "-m",
            "runner",
            *args,
        ],
        env=cli_env(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, base: tuple[str, Path], db_url: str, tmp_path: Path) -> None:
    url, folder = base
    for name, content in case.files.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content)
    if case.edit:
        case.edit(folder, url)
    before = snapshot(db_url, app_only=case.app_only)
    args = [a.replace("{tmp}", str(tmp_path)) for a in case.args]
    target = (case.folder or str(folder)).replace("{tmp}", str(tmp_path))
    args += ["--migrations-path", target]
    if case.url:
        args += ["--url", url]
    if case.as_nobody:
        if os.geteuid() != 0 or not shutil.which("setpriv"):
            pytest.skip("permission cases need root and setpriv (util-linux) to drop DAC override")
        r = run_without_dac_override(args, case.env)
        for p in [folder, *folder.iterdir()]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
    else:
        r = run_cli(*args, env=case.env, cwd=tmp_path)
    output = r.stdout + r.stderr
    assert r.returncode == case.code, output
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert re.search(case.pattern, errors[0]), errors[0]
    assert PASSWORD not in output and QUOTED not in output
    after = snapshot(db_url, app_only=case.app_only)
    assert after.schema == before.schema and after.meta == before.meta
    assert after.data == before.data


def test_unknown_file_types_are_ignored_with_a_warning(base: tuple[str, Path], db_url: str) -> None:
    url, folder = base
    (folder / "notes.txt").write_text("not a migration")
    (folder / "002-x.py").write_text("print('not a migration')")
    r = run_cli("up", "--url", url, "--migrations-path", str(folder))
    assert r.returncode == 0
    assert f"ignoring {folder / '002-x.py'}: not a .js/.cjs/.mjs/.ts/.cts/.mts/.sql migration" in (
        r.stderr
    )
    assert "notes.txt" in r.stderr
    assert meta_rows(db_url) == (FIRST,)


def test_quotes_in_table_name_are_identifiers_not_sql(
    base: tuple[str, Path], db_url: str, db: psycopg.Connection
) -> None:
    url, _ = base
    folder = base[1].parent / "other"
    folder.mkdir()
    (folder / "001-y.sql").write_text(sql("CREATE TABLE y (a int);"))
    evil = 'Meta"; DROP TABLE "SequelizeMeta"; --'
    r = run_cli(
        "up",
        "--table",
        evil,
        "--schema",
        'odd"schema',
        "--url",
        url,
        "--migrations-path",
        str(folder),
    )
    assert r.returncode == 0, r.stderr
    assert meta_rows(db_url) == (FIRST,)  # the real SequelizeMeta is untouched
    row = db.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        ('odd"schema', evil),
    ).fetchone()
    assert row == (1,)
    names = db.execute(
        f'SELECT name FROM "odd""schema"."{evil.replace(chr(34), chr(34) * 2)}"'
    ).fetchall()
    assert names == [("001-y.sql",)]
    lock = run_cli(
        "lock", "status", "--json", "--table", evil, "--schema", 'odd"schema', "--url", url
    )
    assert lock.returncode == 0


def test_insufficient_privileges(
    base: tuple[str, Path], db_url: str, pg_server: str, tmp_path: Path
) -> None:
    _url, folder = base
    role = f"mr_ro_{os.getpid()}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
    (folder / "002-x.sql").write_text(sql("CREATE TABLE x (a int);"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "001-y.sql").write_text(sql("CREATE TABLE y (a int);"))
    before = snapshot(db_url)
    weak = db_url.replace("postgres@", f"{role}@")
    try:
        r = run_cli("up", "--url", weak, "--migrations-path", str(folder))
        assert r.returncode == 2, r.stderr  # reading SequelizeMeta is refused: nothing ran
        (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert "permission denied" in line and "42501" in line, line
        r = run_cli("up", "--url", weak, "--migrations-path", str(other), "--table", "OtherMeta")
        assert r.returncode == 2
        assert "permission denied for schema public [SQLSTATE 42501]" in r.stderr
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')
    after = snapshot(db_url)
    assert after.schema == before.schema and after.meta == before.meta


def test_wrong_password_and_special_characters(tmp_path: Path) -> None:
    """One role must authenticate by password (scram): a private cluster whose pg_hba.conf
    asks it for one (the shared server is never reconfigured)."""
    role = "mr_pw_role"
    secret = "pä$$ w0rd:@/?#%'\"x"

    def hba(base: Path) -> None:
        (base / "pg_hba.conf").write_text(
            f"local all all trust\nhost all {role} 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 trust\n"
        )

    with private_cluster(conf={"hba_file": "'{base}/pg_hba.conf'"}, prepare=hba) as cluster:
        db_url = cluster.url.rsplit("/", 1)[0] + "/pwtest"
        with psycopg.connect(cluster.url, autocommit=True) as admin:
            admin.execute("SET password_encryption = 'scram-sha-256'")
            admin.execute(
                psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    psycopg.sql.Identifier(role), psycopg.sql.Literal(secret)
                )
            )
            admin.execute(f'CREATE DATABASE pwtest OWNER "{role}"')
        folder = tmp_path / "m"
        folder.mkdir()
        (folder / "001-x.sql").write_text(sql("SELECT 1;"))
        parts = {
            "DB_HOST": "127.0.0.1",
            "DB_PORT": str(psycopg.conninfo.conninfo_to_dict(db_url).get("port") or 5432),
            "DB_NAME": db_url.rsplit("/", 1)[1],
            "DB_USER": role,
        }
        bad = run_cli(
            "status",
            "--migrations-path",
            str(folder),
            env={**parts, "DB_PASSWORD": secret + "-wrong"},
        )
        assert bad.returncode == 2, bad.stderr
        (line,) = [x for x in bad.stderr.splitlines() if x.startswith("error:")]
        assert "password authentication failed" in line
        assert "(credentials from: DB_USER/DB_PASSWORD)" in line
        assert secret not in bad.stdout + bad.stderr
        # No password at all is the same mistake: same exit code, the hint says where
        # libpq looked; waiting (--wait) cannot fix it, so it is not retried.
        nopass = {**parts, "HOME": str(tmp_path), "PGPASSWORD": ""}
        missing = run_cli("status", "--wait", "--migrations-path", str(folder), env=nopass)
        assert missing.returncode == 2, missing.stderr
        (line,) = [x for x in missing.stderr.splitlines() if x.startswith("error:")]
        assert "no password supplied" in line
        assert (
            "(credentials from: no password in DB_* environment, PGPASSWORD or ~/.pgpass)" in line
        )
        assert "waiting for the database" not in missing.stdout
        from_pg = run_cli(
            "status",
            "--migrations-path",
            str(folder),
            env={**nopass, "PGPASSWORD": secret + "-wrong"},
        )
        assert from_pg.returncode == 2, from_pg.stderr
        assert "(credentials from: PGPASSWORD)" in from_pg.stderr
        assert secret not in from_pg.stdout + from_pg.stderr
        good = run_cli(
            "status", "--migrations-path", str(folder), env={**parts, "DB_PASSWORD": secret}
        )
        assert good.returncode == 0, good.stderr
        assert "down 001-x.sql" in good.stdout and secret not in good.stdout + good.stderr
