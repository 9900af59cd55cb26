"""sequelize-cli's config rules, applied to already-loaded data (no node, no database)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from migrations_compat.config import (
    AppConfig,
    ConfigRequest,
    DefaultRoots,
    Loaded,
    Pem,
    conninfo_from,
    default_roots,
    load_app_config,
    materialize,
    parse_db_url,
    private_file,
    resolve,
    select_environment,
    sequelize_options,
    ssl_params,
)
from runner.errors import ConfigError

SECRET = "s3cr:t@p/w#d"
PG = {"dialect": "postgres"}


def req(tmp: Path, **kw: Any) -> ConfigRequest:
    return ConfigRequest(cwd=tmp, **kw)


def loaded(tmp: Path, config: Any, **kw: Any) -> Loaded:
    path = tmp / "config" / "config.js"
    return Loaded(config_path=path, config_exists=True, config=config, **kw)


# --- URLs (sequelize-cli parseDbUrl / node's legacy url.parse) ------------------------------


def test_url_user_info_is_percent_decoded_and_split_at_first_colon() -> None:
    got = parse_db_url("postgres://app%40corp:p%40ss%3Aw%2Frd:x@db.example:6543/forum", "t")
    assert got["username"] == "app@corp"
    assert got["password"] == "p@ss:w/rd:x"
    assert (got["host"], got["port"], got["database"]) == ("db.example", "6543", "forum")
    assert got["dialect"] == "postgres"


def test_url_raw_at_sign_in_password_splits_at_the_last_at() -> None:
    got = parse_db_url("postgresql://u:p@ss@h/d", "t")
    assert (got["username"], got["password"], got["host"]) == ("u", "p@ss", "h")
    assert got["dialect"] == "postgresql"


def test_url_without_port_or_auth() -> None:
    got = parse_db_url("postgres://HOST.example/db%20x?ssl=true", "t")
    assert got["port"] is None
    assert got["host"] == "host.example"
    assert got["database"] == "db%20x"  # sequelize-cli does not decode the path
    assert got["ssl"] is True
    assert "username" not in got and "password" not in got


def test_url_ipv6_host() -> None:
    assert parse_db_url("postgres://u@[::1]:5433/d", "t")["host"] == "::1"


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u:s3cr3t%zz@h/d",  # malformed escape: decodeURIComponent throws
        "postgres://u:s3cr3t@h:notaport/d",
        "u:s3cr3t@h/d",
        "",
    ],
)
def test_malformed_url_is_a_config_error_that_hides_the_url(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_db_url(url, "$DATABASE_URL")
    assert "malformed database url in $DATABASE_URL" in err.value.message
    assert "s3cr" not in err.value.message


# --- environment selection ---------------------------------------------------------------------


def test_env_entry_selected() -> None:
    entry, used = select_environment(
        {"production": {**PG, "host": "p"}, "test": {}}, "production", "c.js"
    )
    assert entry["host"] == "p" and used


def test_flat_config_used_as_is() -> None:
    entry, used = select_environment({**PG, "host": "h", "define": {}}, "production", "c.js")
    assert entry["host"] == "h" and not used


def test_unknown_env_names_the_file_and_the_known_envs() -> None:
    raw = {"development": PG, "test": PG, "production": PG}
    with pytest.raises(ConfigError) as err:
        select_environment(raw, "staging", "config/database.js")
    assert err.value.message == (
        "environment 'staging' not found in config/database.js (has: development, test, production)"
    )
    assert err.value.exit_code == 2


def test_env_map_with_scalar_keys_still_reports_unknown_env() -> None:
    raw = {"development": PG, "production": PG, "logging": False, "shared": {"pool": {}}}
    with pytest.raises(ConfigError) as err:
        select_environment(raw, "staging", "c.js")
    assert err.value.message == (
        "environment 'staging' not found in c.js (has: development, production, shared)"
    )
    with pytest.raises(ConfigError, match="environment 'test' in c.js is empty"):
        select_environment({**raw, "test": {}}, "test", "c.js")


def test_empty_config_is_an_error() -> None:
    with pytest.raises(ConfigError, match="is empty"):
        select_environment({}, "development", "c.json")


@pytest.mark.parametrize(
    ("cli", "rc", "node_env", "expected"),
    [
        ("cli", "rc", "ne", "cli"),
        (None, "rc", "ne", "rc"),
        (None, None, "ne", "ne"),
        (None, None, None, "development"),
    ],
)
def test_env_precedence(
    tmp_path: Path, cli: str | None, rc: str | None, node_env: str | None, expected: str
) -> None:
    config = {k: {**PG, "database": k} for k in ("cli", "rc", "ne", "development")}
    data = Loaded(
        rc={"env": rc} if rc else {},
        rc_path=tmp_path / ".sequelizerc",
        config_path=tmp_path / "c.js",
        config_exists=True,
        config=config,
        node_env=node_env,
        env_vars={},
        from_node=True,
    )
    environ = {"NODE_ENV": "ignored-node-saw-another"}
    cfg = resolve(data, req(tmp_path, env_name=cli, environ=environ))
    assert cfg is not None
    assert cfg.env_name == expected
    assert cfg.conninfo["dbname"] == expected
    assert cfg.source == f"c.js [{expected}]"


def test_node_env_from_environ_when_python_read_the_file(tmp_path: Path) -> None:
    config = {"production": {**PG, "database": "prod"}, "development": {**PG, "database": "dev"}}
    cfg = resolve(loaded(tmp_path, config), req(tmp_path, environ={"NODE_ENV": "production"}))
    assert cfg is not None and cfg.conninfo["dbname"] == "prod"


# --- url / use_env_variable -------------------------------------------------------------------


def test_use_env_variable_overrides_connection_fields(tmp_path: Path) -> None:
    config = {
        "production": {
            **PG,
            "use_env_variable": "DATABASE_URL",
            "host": "ignored",
            "port": 7777,
            "username": "kept-unless-url-has-one",
            "migrationStorageTableName": "meta",
        }
    }
    environ = {"NODE_ENV": "production", "DATABASE_URL": "postgres://db.internal/forum"}
    cfg = resolve(loaded(tmp_path, config), req(tmp_path, environ=environ))
    assert cfg is not None
    # a URL without a port sets port to null in sequelize-cli, so sequelize uses 5432
    assert cfg.conninfo == {
        "host": "db.internal",
        "port": "5432",
        "dbname": "forum",
        "user": "kept-unless-url-has-one",
    }
    assert cfg.storage_table == "meta"


def test_url_key_beats_use_env_variable(tmp_path: Path) -> None:
    config = {**PG, "url": "postgres://a:b@urlhost/urldb", "use_env_variable": "NOPE"}
    cfg = resolve(loaded(tmp_path, config), req(tmp_path))
    assert cfg is not None and cfg.conninfo["host"] == "urlhost"
    assert cfg.conninfo["password"] == "b"


@pytest.mark.parametrize(("environ", "state"), [({}, "is not set"), ({"DB_URL": ""}, "is empty")])
def test_missing_use_env_variable(tmp_path: Path, environ: dict[str, str], state: str) -> None:
    config = {"development": {**PG, "use_env_variable": "DB_URL", "password": SECRET}}
    with pytest.raises(ConfigError) as err:
        resolve(loaded(tmp_path, config), req(tmp_path, environ=environ))
    assert err.value.message == (
        f"environment variable DB_URL (use_env_variable in config/config.js [development]) {state}"
    )


def test_cli_url_replaces_the_config_file(tmp_path: Path) -> None:
    data = loaded(tmp_path, {"development": {"dialect": "mysql"}})
    cfg = resolve(data, req(tmp_path, url="postgres://u:pw@h:1/d"))
    assert cfg is not None and cfg.source == "--url" and cfg.config_path is None
    assert cfg.conninfo == {"host": "h", "port": "1", "dbname": "d", "user": "u", "password": "pw"}
    assert cfg.storage_table == "SequelizeMeta"


def test_rc_url_used_when_no_cli_url(tmp_path: Path) -> None:
    data = Loaded(rc={"url": "postgres://rchost/rcdb"}, rc_path=tmp_path / ".sequelizerc")
    cfg = resolve(data, req(tmp_path))
    assert cfg is not None and cfg.source == ".sequelizerc url"
    assert cfg.conninfo["host"] == "rchost"


# --- paths and missing files ------------------------------------------------------------------


def test_migrations_path_flag_beats_rc(tmp_path: Path) -> None:
    data = Loaded(rc={"migrations-path": "db/migrations"}, rc_path=tmp_path / ".sequelizerc")
    rc_only = resolve(data, req(tmp_path))
    assert rc_only is not None and rc_only.migrations_path == tmp_path / "db" / "migrations"
    flag = resolve(data, req(tmp_path, migrations_path=Path("other")))
    assert flag is not None and flag.migrations_path == tmp_path / "other"
    camel = resolve(Loaded(rc={"migrationsPath": "/abs/m"}, rc_path=tmp_path / "x"), req(tmp_path))
    assert camel is not None and camel.migrations_path == Path("/abs/m")


def test_rc_without_config_file_gives_empty_conninfo(tmp_path: Path) -> None:
    data = Loaded(
        rc={"migrations-path": "m"},
        rc_path=tmp_path / ".sequelizerc",
        config_path=tmp_path / "config" / "config.json",
    )
    cfg = resolve(data, req(tmp_path))
    assert cfg is not None and cfg.conninfo == {}
    assert cfg.source == ".sequelizerc (no config file)"
    assert cfg.migrations_path == tmp_path / "m"


def test_rc_config_key_pointing_nowhere_is_an_error(tmp_path: Path) -> None:
    data = Loaded(
        rc={"config": "src/db.js"},
        rc_path=tmp_path / ".sequelizerc",
        config_path=tmp_path / "src" / "db.js",
    )
    with pytest.raises(ConfigError, match=r"config file src/db\.js not found"):
        resolve(data, req(tmp_path))


def test_nothing_at_all_returns_none(tmp_path: Path) -> None:
    assert resolve(Loaded(), req(tmp_path)) is None
    assert load_app_config(req(tmp_path, environ={"PATH": ""})) is None


def test_missing_explicit_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file src/database\.js not found"):
        load_app_config(req(tmp_path, config_path=Path("src/database.js")))
    with pytest.raises(ConfigError, match=r"--options-path \.rc-missing: no such file"):
        load_app_config(req(tmp_path, options_path=Path(".rc-missing")))


def test_non_object_export_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must export an object"):
        resolve(loaded(tmp_path, ["a"]), req(tmp_path))


# --- dialect, storage, options -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dialect": "mysql"}, "dialect 'mysql' in config/config.js is not supported"),
        ({"host": "h"}, "no dialect in config/config.js"),
        ({**PG, "migrationStorage": "json"}, "migrationStorage 'json' in config/config.js"),
        ({**PG, "migrationStorage": "none"}, "migrationStorage 'none'"),
        ({**PG, "migrunner": {"nonTransactional": "a.js"}}, "must be a list"),
    ],
)
def test_unsupported_settings(tmp_path: Path, entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(loaded(tmp_path, {**entry, "password": SECRET}), req(tmp_path))
    assert message in err.value.message
    assert SECRET not in err.value.message


def test_storage_options_and_falsy_fallbacks(tmp_path: Path) -> None:
    entry = {
        **PG,
        "migrationStorage": "sequelize",
        "migrationStorageTableName": "meta",
        "migrationStorageTableSchema": "ops",
        "migrationTimestamps": True,
        "migrunner": {"nonTransactional": ["2024-idx.js"]},
    }
    cfg = resolve(loaded(tmp_path, entry), req(tmp_path))
    assert cfg is not None
    assert (cfg.storage_table, cfg.storage_schema, cfg.timestamps) == ("meta", "ops", True)
    assert cfg.non_transactional == frozenset({"2024-idx.js"})
    blank = {**PG, "migrationStorageTableName": "", "migrationStorageTableSchema": ""}
    cfg2 = resolve(loaded(tmp_path, blank), req(tmp_path))
    assert cfg2 is not None
    assert (cfg2.storage_table, cfg2.storage_schema, cfg2.timestamps) == (
        "SequelizeMeta",
        None,
        False,
    )


def test_sequelize_options_drop_credentials_and_connection_fields() -> None:
    entry = {
        "dialect": "postgresql",
        "username": "u",
        "password": SECRET,
        "host": "h",
        "port": 1,
        "database": "d",
        "url": "postgres://x",
        "use_env_variable": "X",
        "replication": {"write": {"password": SECRET}},
        "migrationStorageTableName": "m",
        "seederStorage": "json",
        "migrunner": {},
        "define": {"underscored": True},
        "logging": False,
        "dialectOptions": {"ssl": {"key": SECRET}, "useUTC": False},
    }
    assert sequelize_options(entry) == {
        "dialect": "postgres",
        "define": {"underscored": True},
        "logging": False,
        "dialectOptions": {"useUTC": False},
    }


# --- connection --------------------------------------------------------------------------------


def test_conninfo_uses_sequelize_defaults_and_skips_falsy_credentials() -> None:
    assert conninfo_from({**PG, "password": "", "username": None}, {}, "s") == {
        "host": "localhost",
        "port": "5432",
    }
    numeric = conninfo_from({**PG, "password": 12345, "port": "6000"}, {}, "s")
    assert numeric["password"] == "12345" and numeric["port"] == "6000"


def test_replication_write_overrides_connection() -> None:
    entry = {
        **PG,
        "host": "reader",
        "username": "u",
        "password": "p",
        "replication": {"write": {"host": "primary", "password": "wp"}, "read": [{"host": "r"}]},
    }
    got = conninfo_from(entry, {}, "s")
    assert (got["host"], got["user"], got["password"]) == ("primary", "u", "wp")


def test_dialect_options_map_to_libpq() -> None:
    got = conninfo_from(
        {
            **PG,
            "dialectOptions": {
                "options": "-c search_path=app",
                "statement_timeout": 5000,
                "lock_timeout": "2s",
                "connectionTimeoutMillis": 2500,
                "client_encoding": "UTF8",
                "application_name": "forum",
            },
        },
        {},
        "s",
    )
    assert got["options"] == "-c search_path=app -c statement_timeout=5000 -c lock_timeout=2s"
    assert got["connect_timeout"] == "3"
    assert got["client_encoding"] == "UTF8"
    assert "application_name" not in got


# --- TLS ---------------------------------------------------------------------------------------

CA = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----"


@pytest.mark.parametrize(
    ("ssl", "expected"),
    [
        (False, {"sslmode": "disable"}),
        (None, {"sslmode": "disable"}),
        ("no-verify", {"sslmode": "require"}),
        (True, {"sslmode": "verify-full", "sslrootcert": DefaultRoots()}),
        ({"require": True}, {"sslmode": "verify-full", "sslrootcert": DefaultRoots()}),
        ({"require": True, "rejectUnauthorized": False}, {"sslmode": "require"}),
        ({"ca": CA, "rejectUnauthorized": False}, {"sslmode": "require"}),
        ({"ca": CA}, {"sslmode": "verify-full", "sslrootcert": Pem("ca", CA)}),
        ({"ca": [CA, CA]}, {"sslmode": "verify-full", "sslrootcert": Pem("ca", CA + "\n" + CA)}),
        (
            {"ca": CA, "checkServerIdentity": "[function]"},
            {"sslmode": "verify-ca", "sslrootcert": Pem("ca", CA)},
        ),
        (
            {"rejectUnauthorized": False, "cert": "C", "key": "K", "passphrase": "pp"},
            {
                "sslmode": "require",
                "sslcert": Pem("cert", "C"),
                "sslkey": Pem("key", "K"),
                "sslpassword": "pp",
            },
        ),
        (
            {"minVersion": "TLSv1.2", "rejectUnauthorized": False},
            {"sslmode": "require", "ssl_min_protocol_version": "TLSv1.2"},
        ),
    ],
)
def test_ssl_mapping(ssl: Any, expected: dict[str, Any]) -> None:
    assert ssl_params(ssl, "s") == expected


def test_verified_ip_host_is_checked_as_localhost_like_pg() -> None:
    got = conninfo_from({**PG, "host": "10.0.0.5", "dialectOptions": {"ssl": {"ca": CA}}}, {}, "s")
    assert (got["host"], got["hostaddr"], got["sslsni"]) == ("localhost", "10.0.0.5", "0")
    named = conninfo_from({**PG, "host": "db.example", "dialectOptions": {"ssl": True}}, {}, "s")
    assert named["host"] == "db.example" and "hostaddr" not in named
    unverified = conninfo_from(
        {**PG, "host": "10.0.0.5", "dialectOptions": {"ssl": "no-verify"}}, {}, "s"
    )
    assert unverified["host"] == "10.0.0.5" and "hostaddr" not in unverified


def test_ssl_absent_leaves_libpq_default() -> None:
    assert "sslmode" not in conninfo_from({**PG, "dialectOptions": {}}, {}, "s")


def test_pfx_is_refused() -> None:
    with pytest.raises(ConfigError, match="pfx"):
        ssl_params({"pfx": "x"}, "s")


def test_private_files_are_private_and_content_addressed() -> None:
    a = private_file("key", "KEY TEXT\n")
    b = private_file("key", "KEY TEXT\n")
    assert a == b and a.read_text() == "KEY TEXT\n"
    assert stat.S_IMODE(a.stat().st_mode) == 0o600
    assert stat.S_IMODE(a.parent.stat().st_mode) == 0o700
    assert a.parent.stat().st_uid == os.getuid()
    got = materialize({"sslmode": "verify-full", "sslrootcert": Pem("ca", CA)}, {})
    assert Path(got["sslrootcert"]).read_text() == CA + "\n"


def test_default_roots_add_node_extra_ca_certs(tmp_path: Path) -> None:
    system = default_roots({})
    assert system == "system" or Path(system).is_file()
    extra = tmp_path / "corp-ca.pem"
    extra.write_text(CA)
    combined = default_roots({"NODE_EXTRA_CA_CERTS": str(extra)})
    text = Path(combined).read_text()
    assert CA in text
    if system != "system":
        assert Path(system).read_text(errors="replace")[:200] in text


# --- secrets -----------------------------------------------------------------------------------


def test_repr_never_shows_passwords(tmp_path: Path) -> None:
    config = {
        **PG,
        "password": SECRET,
        "dialectOptions": {"ssl": {"rejectUnauthorized": False, "passphrase": SECRET + "2"}},
    }
    cfg = resolve(loaded(tmp_path, config), req(tmp_path))
    assert isinstance(cfg, AppConfig)
    assert cfg.conninfo["password"] == SECRET and cfg.conninfo["sslpassword"] == SECRET + "2"
    for text in (repr(cfg), str(cfg), f"{cfg}", cfg.source):
        assert SECRET not in text and "s3cr" not in text
    assert "*****" in repr(cfg)
