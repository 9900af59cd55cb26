"""Configs that must reach the real PostgreSQL, and parity with sequelize-cli's own helpers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from migrations_compat.config import AppConfig, ConfigRequest, load_app_config
from tests.support.node_apps import ensure_npm_ci
from tests.support.pg import url_parts

ROOT = Path(__file__).resolve().parents[2]
ORACLE = ROOT / "tests" / "fixtures" / "config" / "sequelize-cli-readconfig.js"
# every character that breaks naive URL or conninfo building
PASSWORD = "p@ss:w/rd#?%&=+;'\" \\ü€$1"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], **(extra or {})}


@pytest.fixture
def role(pg_server: str) -> Iterator[str]:
    """A login role whose password is PASSWORD; dropped afterwards."""
    name = f"mrt_cfg_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(PASSWORD)
            )
        )
    try:
        yield name
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def scram_matches(stored: str, password: str) -> bool:
    """Whether ``password`` is the one PostgreSQL stored as a SCRAM-SHA-256 verifier."""
    method, rest = stored.split("$", 1)
    assert method == "SCRAM-SHA-256"
    iter_salt, keys = rest.split("$")
    iterations, salt = iter_salt.split(":")
    stored_key = keys.split(":")[0]
    salted = hashlib.pbkdf2_hmac(
        "sha256",
        unicodedata.normalize("NFKC", password).encode(),
        base64.b64decode(salt),
        int(iterations),
    )
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return base64.b64encode(hashlib.sha256(client_key).digest()).decode() == stored_key


def check_reaches_server(cfg: AppConfig, role: str, pg_server: str) -> None:
    assert cfg.conninfo["password"] == PASSWORD
    with psycopg.connect(pg_server, autocommit=True) as admin:
        row = admin.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)
        ).fetchone()
    assert row is not None
    # both the keyword form and a conninfo string built from it carry the password intact
    for conn in (
        psycopg.connect(**cfg.conninfo),  # type: ignore[arg-type]
        psycopg.connect(make_conninfo(**cfg.conninfo)),
    ):
        with conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
            assert conn.info.password == PASSWORD
            assert scram_matches(row[0], conn.info.password)
    assert PASSWORD not in repr(cfg)


def test_special_char_password_in_js_config(
    tmp_path: Path, db_url: str, role: str, pg_server: str
) -> None:
    parts = url_parts(db_url)
    entry = {
        "dialect": "postgres",
        "host": parts["DB_HOST"],
        "port": int(parts["DB_PORT"]),
        "database": parts["DB_NAME"],
        "username": role,
        "password": PASSWORD,
    }
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.js").write_text(
        f"module.exports = async () => ({{ production: {json.dumps(entry)} }});\n"
    )
    cfg = load_app_config(ConfigRequest(cwd=tmp_path, environ=node_env({"NODE_ENV": "production"})))
    assert cfg is not None
    check_reaches_server(cfg, role, pg_server)


def test_special_char_password_in_use_env_variable_url(
    tmp_path: Path, db_url: str, role: str, pg_server: str
) -> None:
    parts = url_parts(db_url)
    url = (
        f"postgres://{role}:{quote(PASSWORD, safe='')}@{parts['DB_HOST']}:{parts['DB_PORT']}"
        f"/{parts['DB_NAME']}"
    )
    (tmp_path / "db.js").write_text(
        "module.exports = {production: {dialect: 'postgres', use_env_variable: 'DATABASE_URL'}};"
    )
    cfg = load_app_config(
        ConfigRequest(
            cwd=tmp_path,
            config_path=Path("db.js"),
            env_name="production",
            environ=node_env({"DATABASE_URL": url}),
        )
    )
    assert cfg is not None
    check_reaches_server(cfg, role, pg_server)


def test_special_char_password_in_json_config(
    tmp_path: Path, db_url: str, role: str, pg_server: str
) -> None:
    parts = url_parts(db_url)
    config = {
        "development": {
            "dialect": "postgres",
            "host": parts["DB_HOST"],
            "port": parts["DB_PORT"],
            "database": parts["DB_NAME"],
            "username": role,
            "password": PASSWORD,
        }
    }
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text(json.dumps(config, ensure_ascii=False))
    cfg = load_app_config(ConfigRequest(cwd=tmp_path, environ={"PATH": ""}))
    assert cfg is not None
    check_reaches_server(cfg, role, pg_server)


# --- parity with sequelize-cli's own helpers ----------------------------------------------------


def sequelize_cli_dir() -> Path | None:
    for base in (ROOT / "tests" / "fixtures" / "forum", ROOT / "migrations_compat" / "shim"):
        cli = base / "node_modules" / "sequelize-cli"
        if (cli / "lib" / "helpers" / "config-helper.js").is_file():
            return cli
    return None


def oracle(cwd: Path, argv: list[str], environ: dict[str, str]) -> dict[str, Any]:
    cli = sequelize_cli_dir()
    assert cli is not None
    out = cwd / ".oracle.json"
    subprocess.run(
        ["node", str(ORACLE), *argv],
        cwd=cwd,
        env={**environ, "SEQUELIZE_CLI_DIR": str(cli), "ORACLE_OUT": str(out)},
        check=True,
        capture_output=True,
        timeout=60,
    )
    answer: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    return answer


def request_from_argv(cwd: Path, argv: list[str], environ: dict[str, str]) -> ConfigRequest:
    flags = dict(zip(argv[::2], argv[1::2], strict=True))
    path = lambda k: Path(flags[k]) if k in flags else None  # noqa: E731
    return ConfigRequest(
        cwd=cwd,
        options_path=path("--options-path"),
        config_path=path("--config"),
        env_name=flags.get("--env"),
        url=flags.get("--url"),
        migrations_path=path("--migrations-path"),
        environ=environ,
    )


ENCODED = quote(PASSWORD, safe="")
PARITY_CASES: dict[str, tuple[dict[str, str], list[str], dict[str, str]]] = {
    "forum-job": (
        {
            "src/config/database.js": (
                "module.exports = {\n"
                "  development: {dialect: 'postgres', host: '127.0.0.1', database: 'dev'},\n"
                "  production: {\n"
                "    username: process.env.DB_USER, password: process.env.DB_PASSWORD,\n"
                "    database: process.env.DB_NAME, host: process.env.DB_HOST,\n"
                "    port: process.env.DB_PORT, dialect: 'postgres',\n"
                "    migrationStorageTableName: 'SequelizeMeta',\n"
                "  },\n"
                "};\n"
            )
        },
        [
            "--config",
            "src/config/database.js",
            "--migrations-path",
            "src/migrations",
            "--env",
            "production",
        ],
        {
            "NODE_ENV": "production",
            "DB_HOST": "pg.forum.svc",
            "DB_PORT": "6432",
            "DB_NAME": "forum",
            "DB_USER": "forum_app",
            "DB_PASSWORD": PASSWORD,
        },
    ),
    "rc-function-use-env-variable": (
        {
            ".sequelizerc": (
                "const path = require('path');\n"
                "module.exports = {config: path.resolve('db', 'config.js'),\n"
                "  'migrations-path': path.resolve('db', 'migrations')};\n"
            ),
            "db/config.js": (
                "module.exports = async () => ({production: {dialect: 'postgres',\n"
                "  use_env_variable: 'DATABASE_URL', port: 7777, host: 'ignored',\n"
                "  migrationStorageTableSchema: 'ops', migrationTimestamps: true}});\n"
            ),
        },
        [],
        {"NODE_ENV": "production", "DATABASE_URL": f"postgres://app:{ENCODED}@pg.internal/forum"},
    ),
    "flat-json-with-url": (
        {
            "config/config.json": json.dumps(
                {"dialect": "postgres", "url": "postgresql://u@h:5555/flat", "username": "x"}
            )
        },
        [],
        {},
    ),
    "cli-url": ({}, ["--url", f"postgres://a:{ENCODED}@urlhost:1234/urldb"], {}),
    "options-path-rc-env": (
        {
            "ops/rc.js": "module.exports = {config: 'ops/db.json', env: 'staging'};",
            "ops/db.json": json.dumps(
                {
                    "staging": {
                        "dialect": "postgres",
                        "database": "stg",
                        "username": "s",
                        "migrationStorageTableName": "meta",
                    },
                    "development": {"dialect": "postgres", "database": "dev"},
                }
            ),
        },
        ["--options-path", "ops/rc.js"],
        {"NODE_ENV": "development"},
    ),
    "dotenv-style-rc": (
        {
            ".sequelizerc": (
                "process.env.NODE_ENV = 'test';\n"
                "process.env.TEST_DB = 'postgres://t:tp@testhost:6000/tdb';\n"
                "module.exports = {};\n"
            ),
            "config/config.js": (
                "module.exports = {test: {dialect: 'postgres', use_env_variable: 'TEST_DB'}};"
            ),
        },
        [],
        {},
    ),
}


@pytest.fixture(scope="module")
def sequelize_cli_installed() -> Path:
    """The forum fixture's real sequelize-cli (``npm ci`` here when .ci/run has not)."""
    ensure_npm_ci(ROOT / "tests" / "fixtures" / "forum")
    cli = sequelize_cli_dir()
    assert cli is not None, "npm ci of the forum fixture installed no sequelize-cli"
    return cli


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_same_answer_as_sequelize_cli(
    tmp_path: Path, case: str, sequelize_cli_installed: Path
) -> None:
    files, argv, extra = PARITY_CASES[case]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    environ = node_env(extra)
    expected = oracle(tmp_path, argv, environ)
    assert "error" not in expected, expected
    cfg = load_app_config(request_from_argv(tmp_path, argv, environ))
    assert cfg is not None
    got = {
        "host": cfg.conninfo["host"],
        "port": cfg.conninfo["port"],
        "database": cfg.conninfo.get("dbname"),
        "username": cfg.conninfo.get("user"),
        "password": cfg.conninfo.get("password"),
        "table": cfg.storage_table,
        "schema": cfg.storage_schema,
        "timestamps": cfg.timestamps,
    }
    want = {k: expected[k] for k in got}
    assert got == want
    assert expected["storage"] == "sequelize"
    assert expected["dialect"] in ("postgres", "postgresql")
    if cfg.source.endswith("]"):  # an environment entry was selected
        assert cfg.env_name == expected["env"]
    # None means "not configured": the CLI then uses <cwd>/migrations, as sequelize-cli does
    assert (cfg.migrations_path or tmp_path / "migrations") == Path(expected["migrationsPath"])
