"""Real node evaluating real `.sequelizerc` and config files, as sequelize-cli would."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from migrations_compat.config import AppConfig, ConfigRequest, load_app_config, start_loading
from runner.errors import ConfigError

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")

PASSWORD = "p@ss:w/rd#?%&'\" \\ü€"


def app(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def load(cwd: Path, **kw: object) -> AppConfig | None:
    environ = {"PATH": os.environ["PATH"]}
    environ.update(kw.pop("environ", {}))  # type: ignore[arg-type]
    return load_app_config(ConfigRequest(cwd=cwd, environ=environ, **kw))  # type: ignore[arg-type]


def must(cfg: AppConfig | None) -> AppConfig:
    assert cfg is not None
    return cfg


ENTRY = json.dumps({"dialect": "postgres", "host": "dbhost", "database": "forum"})


@pytest.mark.parametrize(
    "source",
    [
        f"module.exports = {{ production: {ENTRY} }};",
        f"module.exports = () => ({{ production: {ENTRY} }});",
        f"module.exports = async () => ({{ production: {ENTRY} }});",
        f"module.exports = Promise.resolve({{ production: {ENTRY} }});",
        f"module.exports = (cb) => setImmediate(() => cb(null, {{ production: {ENTRY} }}));",
        f"module.exports = new Promise((r) => setTimeout(() => r(() => ({{ production: {ENTRY} }})), 5));",
    ],
    ids=["object", "function", "async-function", "promise", "callback", "promise-of-function"],
)
def test_export_shapes(tmp_path: Path, source: str) -> None:
    cwd = app(tmp_path, {"src/config/database.js": source})
    cfg = must(load(cwd, config_path=Path("src/config/database.js"), env_name="production"))
    assert cfg.conninfo == {"host": "dbhost", "port": "5432", "dbname": "forum"}
    assert cfg.source == "src/config/database.js [production]"
    assert cfg.config_path == cwd / "src" / "config" / "database.js"


def test_esm_config(tmp_path: Path) -> None:
    cwd = app(tmp_path, {"db/config.mjs": f"export default {{ development: {ENTRY} }};"})
    cfg = must(load(cwd, config_path=Path("db/config.mjs")))
    assert cfg.conninfo["dbname"] == "forum" and cfg.env_name == "development"


def test_esm_package_with_top_level_await(tmp_path: Path) -> None:
    cwd = app(
        tmp_path,
        {
            "package.json": '{"type": "module"}',
            "config/config.js": (
                "const entry = await Promise.resolve(" + ENTRY + ");\n"
                "export default { development: entry };\n"
            ),
        },
    )
    assert must(load(cwd)).conninfo["host"] == "dbhost"


def test_default_config_js_wins_over_json(tmp_path: Path) -> None:
    cwd = app(
        tmp_path,
        {
            "config/config.js": 'module.exports = {development: {dialect: "postgres", database: "js"}};',
            "config/config.json": '{"development": {"dialect": "postgres", "database": "json"}}',
        },
    )
    assert must(load(cwd)).conninfo["dbname"] == "js"


def test_json_config_is_read_without_node(tmp_path: Path) -> None:
    cwd = app(
        tmp_path,
        {"config/config.json": '\ufeff{"test": {"dialect": "postgres", "database": "j"}}'},
    )
    # no node on PATH: a JSON config must not need it
    cfg = load_app_config(ConfigRequest(cwd=cwd, environ={"PATH": "", "NODE_ENV": "test"}))
    assert must(cfg).conninfo["dbname"] == "j"
    app(tmp_path, {"config/config.js": "module.exports = {}"})
    with pytest.raises(ConfigError, match=r"node is needed to evaluate config/config\.js"):
        # MIGRUNNER_NODE names a missing node: none from the [node] extra either
        load_app_config(
            ConfigRequest(cwd=cwd, environ={"PATH": "", "MIGRUNNER_NODE": str(tmp_path / "no")})
        )


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    cwd = app(tmp_path, {"config/config.json": '{\n  "development": {\n    "a": 1,\n  }\n}'})
    with pytest.raises(
        ConfigError, match=r"cannot load config config/config\.json:4: invalid JSON"
    ):
        load(cwd)


def test_sequelizerc_sets_config_and_migrations_path(tmp_path: Path) -> None:
    cwd = app(
        tmp_path,
        {
            ".sequelizerc": (
                "const path = require('path');\n"
                "console.log('noise on stdout from the rc');\n"
                "module.exports = {\n"
                "  config: path.resolve('src/config', 'database.js'),\n"
                "  'migrations-path': path.resolve('src', 'migrations'),\n"
                "  'models-path': path.resolve('src', 'models'),\n"
                "};\n"
            ),
            "src/config/database.js": (
                "process.stdout.write('more noise\\n');\n"
                f"module.exports = {{ production: {ENTRY} }};\n"
            ),
        },
    )
    cfg = must(load(cwd, environ={"NODE_ENV": "production"}))
    assert cfg.migrations_path == cwd / "src" / "migrations"
    assert cfg.config_path == cwd / "src" / "config" / "database.js"
    assert cfg.conninfo["host"] == "dbhost"
    # the flags win over the rc
    other = app(tmp_path, {"other.json": '{"development": {"dialect": "postgres", "host": "o"}}'})
    cfg2 = must(load(other, config_path=Path("other.json"), migrations_path=Path("m")))
    assert cfg2.conninfo["host"] == "o" and cfg2.migrations_path == cwd / "m"


def test_options_path_and_rc_url(tmp_path: Path) -> None:
    cwd = app(
        tmp_path,
        {
            "ops/rc.js": "module.exports = { url: 'postgres://rcuser@rchost:6000/rcdb' };",
            "config/config.js": "throw new Error('never read when a url is given');",
        },
    )
    cfg = must(load(cwd, options_path=Path("ops/rc.js")))
    assert cfg.conninfo == {"host": "rchost", "port": "6000", "dbname": "rcdb", "user": "rcuser"}
    assert cfg.source == ".sequelizerc url" and cfg.config_path is None


def test_cli_url_skips_a_broken_config(tmp_path: Path) -> None:
    cwd = app(tmp_path, {".sequelizerc": "module.exports = {'migrations-path': 'db/m'};"})
    app(tmp_path, {"config/config.js": "throw new Error('not read');"})
    cfg = must(load(cwd, url="postgres://u@h/d"))
    assert cfg.source == "--url" and cfg.migrations_path == cwd / "db" / "m"


def test_rc_without_config_file(tmp_path: Path) -> None:
    cwd = app(tmp_path, {".sequelizerc": "module.exports = {'migrations-path': 'db/m'};"})
    cfg = must(load(cwd))
    assert cfg.conninfo == {} and cfg.migrations_path == cwd / "db" / "m"


def test_dotenv_style_rc_feeds_use_env_variable_and_node_env(tmp_path: Path) -> None:
    """Variables the rc sets (as `require('dotenv').config()` does) are seen by the config."""
    cwd = app(
        tmp_path,
        {
            ".sequelizerc": (
                "process.env.NODE_ENV = process.env.NODE_ENV || 'staging';\n"
                "process.env.FORUM_DB_URL = 'postgres://app:from%20dotenv@pg.internal:5433/forum';\n"
                "module.exports = {};\n"
            ),
            "config/config.js": (
                "module.exports = {\n"
                "  staging: { dialect: 'postgres', use_env_variable: 'FORUM_DB_URL' },\n"
                "};\n"
            ),
        },
    )
    cfg = must(load(cwd))
    assert cfg.env_name == "staging"
    assert cfg.conninfo == {
        "host": "pg.internal",
        "port": "5433",
        "dbname": "forum",
        "user": "app",
        "password": "from dotenv",
    }


def test_unknown_env(tmp_path: Path) -> None:
    cwd = app(
        tmp_path,
        {
            "config/database.js": (
                "const e = { dialect: 'postgres' };\n"
                "module.exports = { development: e, test: e, production: e };\n"
            )
        },
    )
    with pytest.raises(ConfigError) as err:
        load(cwd, config_path=Path("config/database.js"), env_name="staging")
    assert err.value.message == (
        "environment 'staging' not found in config/database.js (has: development, test, production)"
    )


def test_missing_use_env_variable(tmp_path: Path) -> None:
    cwd = app(
        tmp_path,
        {"config/config.js": "module.exports = {development: {use_env_variable: 'NOPE_URL'}};"},
    )
    with pytest.raises(ConfigError) as err:
        load(cwd)
    assert err.value.message == (
        "environment variable NOPE_URL (use_env_variable in config/config.js [development]) "
        "is not set"
    )


def test_json_storage_refused(tmp_path: Path) -> None:
    cwd = app(
        tmp_path,
        {
            "config/config.js": (
                "module.exports = {development: {dialect: 'postgres', migrationStorage: 'json'}};"
            )
        },
    )
    with pytest.raises(ConfigError, match="migrationStorage 'json' in config/config.js"):
        load(cwd)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"config/config.js": "const a = 1;\nconst b = 2;\nthrow new Error('boom');\n"},
            "cannot load config config/config.js:3: Error: boom",
        ),
        (
            {"config/config.js": "module.exports = {\n  development: {\n    a: 1,,\n  }\n};\n"},
            "cannot load config config/config.js:3: SyntaxError: Unexpected token ','",
        ),
        (
            {"config/config.js": "\nrequire('dotenv-not-installed').config();\n"},
            "cannot load config config/config.js:2: Error: Cannot find module "
            "'dotenv-not-installed'",
        ),
        (
            {"config/config.js": "module.exports = async () => {\n  await null;\n  x.y = 1;\n};"},
            "cannot load config config/config.js:3: ReferenceError: x is not defined",
        ),
        (
            {".sequelizerc": "\n\nmodule.exports = nope;\n"},
            "cannot load .sequelizerc .sequelizerc:3: ReferenceError: nope is not defined",
        ),
        (
            {"config/config.js": "process.exit(3);\n"},
            "cannot load config config/config.js: Exit: node exited (code 3) before the file "
            "was evaluated",
        ),
        (
            {"config/config.js": "module.exports = new Promise(() => {});\n"},
            "or an exported promise that can never settle",
        ),
        (
            {
                "config/config.js": (
                    "setTimeout(() => { throw new Error('late failure'); }, 1);\n"
                    "module.exports = new Promise((r) => setTimeout(r, 10000));\n"
                )
            },
            "cannot load config config/config.js:1: Error: late failure",
        ),
    ],
    ids=[
        "throws",
        "syntax",
        "missing-module",
        "async-throws",
        "rc-throws",
        "exit",
        "never",
        "late",
    ],
)
def test_failures_name_file_and_line(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    cwd = app(tmp_path, files)
    with pytest.raises(ConfigError) as err:
        load(cwd)
    assert expected in err.value.message
    assert err.value.exit_code == 2
    assert "\n" not in err.value.message


def test_error_messages_hide_passwords(tmp_path: Path) -> None:
    cwd = app(
        tmp_path,
        {
            "config/config.js": (
                "const url = 'postgres://app:hunter2secret@db/forum';\n"
                "throw new Error('cannot reach ' + url);\n"
            )
        },
    )
    with pytest.raises(ConfigError) as err:
        load(cwd)
    assert "hunter2secret" not in err.value.message
    assert "postgres://app:*****@db/forum" in err.value.message


def test_timeout_kills_node(tmp_path: Path) -> None:
    cwd = app(
        tmp_path,
        {
            "config/config.js": "setInterval(() => {}, 1000);\nmodule.exports = new Promise(() => {});"
        },
    )
    handle = start_loading(ConfigRequest(cwd=cwd, environ={"PATH": os.environ["PATH"]}))
    with pytest.raises(ConfigError, match=r"did not finish within 0\.5s"):
        handle.result(timeout=0.5)
    # the error sticks: a second call does not wait again
    started = time.monotonic()
    with pytest.raises(ConfigError):
        handle.result(timeout=30)
    assert time.monotonic() - started < 1


def test_buffer_ca_and_checkserveridentity_reach_libpq(tmp_path: Path) -> None:
    pem = "-----BEGIN CERTIFICATE-----\\nMIIBfake\\n-----END CERTIFICATE-----"
    cwd = app(
        tmp_path,
        {
            "config/config.js": (
                "module.exports = {development: {dialect: 'postgres', dialectOptions: {ssl: {\n"
                f"  ca: [Buffer.from('{pem}')], checkServerIdentity: () => undefined,\n"
                "}}}};\n"
            )
        },
    )
    cfg = must(load(cwd))
    assert cfg.conninfo["sslmode"] == "verify-ca"
    ca = Path(cfg.conninfo["sslrootcert"])
    assert ca.read_text() == pem.replace("\\n", "\n") + "\n"
    assert "ssl" not in cfg.sequelize_options.get("dialectOptions", {})


def test_start_loading_returns_before_node_finishes(tmp_path: Path) -> None:
    """The CLI overlaps node with its own imports: starting must not wait for node."""
    cwd = app(
        tmp_path,
        {
            "gate": "",
            "config/config.js": (
                "const fs = require('fs');\n"
                "module.exports = new Promise((resolve) => {\n"
                "  const t = setInterval(() => {\n"
                "    if (!fs.existsSync('gate')) {\n"
                "      clearInterval(t);\n"
                f"      resolve({{ development: {ENTRY} }});\n"
                "    }\n"
                "  }, 5);\n"
                "});\n"
            ),
        },
    )
    handle = start_loading(ConfigRequest(cwd=cwd, environ={"PATH": os.environ["PATH"]}))
    # node cannot have finished: it waits for the gate file, which still exists
    (cwd / "gate").unlink()
    assert must(handle.result()).conninfo["host"] == "dbhost"
