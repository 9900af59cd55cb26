"""Settings resolution: precedence of URL sources, env parts, identity; no secrets leak."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from runner.errors import ConfigError
from runner.lock import lock_key, pg_locks_ids
from runner.settings import CliOptions, Identity, Settings, redact, resolve

CWD = Path("/app")


def test_url_wins_over_env_parts() -> None:
    s = resolve(
        CliOptions(url="postgres://u:p%40ss@db:6543/app"),
        {"DB_HOST": "other", "DB_NAME": "x"},
        cwd=CWD,
    )
    assert s.conninfo["host"] == "db" and s.conninfo["port"] == "6543"
    assert s.conninfo["password"] == "p@ss"
    assert s.target == "u@db:6543/app"
    assert "p@ss" not in repr(s)


def test_database_url_then_db_parts() -> None:
    s = resolve(CliOptions(), {"DATABASE_URL": "postgresql://a@h/d", "DB_HOST": "x"}, cwd=CWD)
    assert s.conninfo["host"] == "h"
    s = resolve(
        CliOptions(),
        {"DB_HOST": "h2", "DB_PORT": "5433", "DB_NAME": "n", "DB_USER": "u", "DB_PASSWORD": "pw"},
        cwd=CWD,
    )
    assert (s.conninfo["host"], s.conninfo["port"], s.conninfo["dbname"]) == ("h2", "5433", "n")
    assert s.target == "u@h2:5433/n"


def test_direct_url_overrides_for_pgbouncer() -> None:
    s = resolve(
        CliOptions(url="postgres://u@bouncer:6432/app"),
        {"MIGRUNNER_DIRECT_URL": "postgres://u@primary:5432/app"},
        cwd=CWD,
    )
    assert s.conninfo["host"] == "primary"


def test_nothing_configured_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no database configured"):
        resolve(CliOptions(), {}, cwd=CWD)


@pytest.mark.parametrize(
    "url", ["mysql://u:secret@h/d", "not a url", "postgres://u:secret@h:notaport/d"]
)
def test_malformed_urls_never_echo_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(CliOptions(url=url), {}, cwd=CWD)
    assert "malformed database URL" in info.value.message
    assert "secret" not in info.value.message


def test_migrations_path_precedence() -> None:
    env = {"DATABASE_URL": "postgres://h/d", "MIGRUNNER_MIGRATIONS_PATH": "/env/m"}
    assert resolve(CliOptions(migrations_path=Path("rel")), env, cwd=CWD).migrations_path == Path(
        "/app/rel"
    )
    assert resolve(CliOptions(), env, cwd=CWD).migrations_path == Path("/env/m")
    env.pop("MIGRUNNER_MIGRATIONS_PATH")
    assert resolve(CliOptions(), env, cwd=CWD).migrations_path == Path("/app/migrations")


def test_numbers_from_env_and_errors() -> None:
    env = {"DATABASE_URL": "postgres://h/d", "MIGRUNNER_LOCK_TIMEOUT": "12.5"}
    assert resolve(CliOptions(), env, cwd=CWD).lock_timeout == 12.5
    assert resolve(CliOptions(lock_timeout=3), env, cwd=CWD).lock_timeout == 3
    env["MIGRUNNER_LOCK_TIMEOUT"] = "soon"
    with pytest.raises(ConfigError, match="MIGRUNNER_LOCK_TIMEOUT"):
        resolve(CliOptions(), env, cwd=CWD)


def test_identity_application_name_fits_63_bytes() -> None:
    ident = Identity(host="h", pod="p" * 80, namespace="prod", version="1.2.3")
    name = ident.application_name()
    assert name.startswith("migrunner/1.2.3 prod/ppp")
    assert len(name.encode()) <= 63
    assert Identity.from_env({"HOSTNAME": "box"}).where == "box"
    pod = Identity.from_env({"HOSTNAME": "job-x", "POD_NAME": "job-x", "POD_NAMESPACE": "prod"})
    assert pod.where == "prod/job-x"
    node = Identity.from_env({"HOSTNAME": "node1", "POD_NAME": "job-x", "POD_NAMESPACE": "prod"})
    assert node.where == "prod/job-x@node1"


def test_redact_removes_url_passwords() -> None:
    url = "postgres://u:s%3Acret@h/d"
    assert redact(f"failed for {url} with s:cret", url) == "failed for *** with ***"


def test_lock_key_is_stable_and_maps_to_pg_locks() -> None:
    # Fixed value: the key must never change between versions, or old and new runners
    # would not exclude each other during a rolling deploy.
    key = lock_key(None, "SequelizeMeta")
    assert key == lock_key("public", "SequelizeMeta")
    assert key == 3768718264265457331
    classid, objid = pg_locks_ids(key)
    assert (classid << 32) | objid == key & 0xFFFFFFFFFFFFFFFF
    assert lock_key("app", "SequelizeMeta") != key


# -- every field, every source (pins the whole resolution, not a sample of it) ----------------


def test_defaults_are_the_documented_ones() -> None:
    s = resolve(CliOptions(url="postgres://u@h/d"), {"HOSTNAME": "box"}, cwd=CWD)
    assert s == Settings(
        conninfo={"user": "u", "host": "h", "dbname": "d", "connect_timeout": "10"},
        target="u@h:5432/d",
        credentials="no password in --url, PGPASSWORD or ~/.pgpass",
        migrations_path=CWD / "migrations",
        table="SequelizeMeta",
        schema=None,
        timestamps=False,
        lock_timeout=300.0,
        statement_lock_timeout=5.0,
        statement_timeout=None,
        retries=5,
        wait_timeout=60.0,
        allow_drift=False,
        non_transactional=frozenset(),
        sequelize_options={},
        search_dirs=(CWD / "migrations", CWD),
        identity=Identity(host="box"),
        config_source="--url",
    )
    assert dict(s.conninfo) == {"user": "u", "host": "h", "dbname": "d", "connect_timeout": "10"}


ENV = {
    "DB_HOST": "dbhost",
    "DB_PORT": "6000",
    "DB_NAME": "app",
    "DB_USER": "svc",
    "DB_PASSWORD": "pw",
    "MIGRUNNER_MIGRATIONS_PATH": "db/migrate",
    "MIGRUNNER_LOCK_TIMEOUT": "600",
    "MIGRUNNER_STATEMENT_LOCK_TIMEOUT": "2.5",
    "MIGRUNNER_STATEMENT_TIMEOUT": "30",
    "MIGRUNNER_RETRIES": "7",
    "MIGRUNNER_WAIT_TIMEOUT": "120",
    "MIGRUNNER_LOG_FORMAT": "json",
    "MIGRUNNER_ALLOW_DRIFT": "true",
    "HOSTNAME": "node-1",
    "POD_NAME": "migrate-x",
    "POD_NAMESPACE": "educard",
}


def test_every_environment_variable() -> None:
    s = resolve(CliOptions(), ENV, cwd=CWD)
    assert dict(s.conninfo) == {
        "host": "dbhost",
        "port": "6000",
        "dbname": "app",
        "user": "svc",
        "password": "pw",
        "connect_timeout": "10",
    }
    assert (s.target, s.config_source) == ("svc@dbhost:6000/app", "DB_* environment")
    assert s.migrations_path == CWD / "db" / "migrate"
    assert (s.lock_timeout, s.statement_lock_timeout, s.statement_timeout) == (600, 2.5, 30)
    assert (s.retries, s.wait_timeout, s.allow_drift) == (7, 120, True)
    assert s.identity == Identity(host="node-1", pod="migrate-x", namespace="educard")
    assert s.identity.where == "educard/migrate-x@node-1"
    assert resolve(CliOptions(), {**ENV, "MIGRUNNER_ALLOW_DRIFT": "1"}, cwd=CWD).allow_drift
    for off in ("0", "false", "yes", ""):
        assert not resolve(CliOptions(), {**ENV, "MIGRUNNER_ALLOW_DRIFT": off}, cwd=CWD).allow_drift


def test_command_line_beats_environment() -> None:
    opts = CliOptions(
        migrations_path=Path("/abs/m"),
        table="Meta",
        schema="ops",
        lock_timeout=1,
        statement_lock_timeout=2,
        statement_timeout=3,
        retries=0,
        wait_timeout=4,
        log_format="text",
        allow_drift=True,
    )
    s = resolve(opts, {**ENV, "MIGRUNNER_ALLOW_DRIFT": ""}, cwd=CWD)
    assert (s.migrations_path, s.table, s.schema) == (Path("/abs/m"), "Meta", "ops")
    assert (s.lock_timeout, s.statement_lock_timeout, s.statement_timeout) == (1, 2, 3)
    assert (s.retries, s.wait_timeout, s.allow_drift) == (0, 4, True)
    assert s.search_dirs == (Path("/abs/m"), CWD)
    assert resolve(CliOptions(retries=-3), ENV, cwd=CWD).retries == 0
    assert resolve(CliOptions(statement_timeout=0), ENV, cwd=CWD).statement_timeout is None


def test_app_config_feeds_settings() -> None:
    app = SimpleNamespace(
        conninfo={"host": "cfg", "dbname": "c", "user": "cu", "password": "cp"},
        source="src/config/database.js [production]",
        migrations_path="/app/src/migrations",
        storage_table="Migrations",
        storage_schema="meta",
        timestamps=True,
        non_transactional=["x.js"],
        sequelize_options={"logging": False},
        config_path="/app/src/config/database.js",
    )
    s = resolve(CliOptions(url="postgres://ignored@h/d"), {}, app=app, cwd=CWD)
    assert s.conninfo["host"] == "cfg" and s.config_source == app.source
    assert s.target == "cu@cfg:5432/c"
    assert s.migrations_path == Path("/app/src/migrations")
    assert (s.table, s.schema, s.timestamps) == ("Migrations", "meta", True)
    assert s.non_transactional == frozenset({"x.js"})
    assert s.sequelize_options == {"logging": False}
    assert s.search_dirs == (Path("/app/src/migrations"), Path("/app/src/config"), CWD)
    # an explicit --migrations-path and MIGRUNNER_MIGRATIONS_PATH still win over the config
    env = {"MIGRUNNER_MIGRATIONS_PATH": "/env/m"}
    assert resolve(CliOptions(), env, app=app, cwd=CWD).migrations_path == Path("/env/m")


def test_sources_in_order() -> None:
    direct = "postgres://u@direct/d"
    env = {"MIGRUNNER_DIRECT_URL": direct, "DATABASE_URL": "postgres://u@envurl/d", **ENV}
    assert resolve(CliOptions(url="postgres://u@cli/d"), env, cwd=CWD).config_source == (
        "MIGRUNNER_DIRECT_URL"
    )
    assert resolve(CliOptions(direct_url=direct), {}, cwd=CWD).conninfo["host"] == "direct"
    env.pop("MIGRUNNER_DIRECT_URL")
    s = resolve(CliOptions(url="postgres://u@cli/d"), env, cwd=CWD)
    assert (s.conninfo["host"], s.config_source) == ("cli", "--url")
    s = resolve(CliOptions(), env, cwd=CWD)
    assert (s.conninfo["host"], s.config_source) == ("envurl", "DATABASE_URL")
    # libpq's own variables alone are enough (no DB_*): PGHOST or PGDATABASE
    for var in ("PGHOST", "PGDATABASE"):
        s = resolve(CliOptions(), {var: "x"}, cwd=CWD)
        assert dict(s.conninfo) == {"connect_timeout": "10"}
    s = resolve(CliOptions(), {"PGHOST": "ph", "PGPORT": "7", "PGUSER": "pu"}, cwd=CWD)
    assert s.target == "pu@ph:7/pu"  # libpq's default database is the user name
    s = resolve(CliOptions(), {"PGDATABASE": "pd"}, cwd=CWD)
    assert s.target == "localhost:5432/pd"
    s = resolve(CliOptions(url="postgres://u@h/d?hostaddr=10.0.0.1"), {}, cwd=CWD)
    assert s.target == "u@10.0.0.1:5432/d"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "mysql://u:secret@h/d",
            "malformed database URL (--url): expected postgres:// or postgresql://, got mysql://",
        ),
        ("not a url", "malformed database URL (--url): expected postgres:// or postgresql://"),
        ("x" * 19 + "://u:secret@h/d", "got " + "x" * 19 + "://"),
        ("x" * 20 + "://u:secret@h/d", "postgresql://"),
        (
            "postgres://u:secret@h:notaport/d",
            "malformed database URL (--url): port must be a number",
        ),
        ("postgres://u:secret@h:5432,x/d", "port must be a number"),
        ("postgres://u:secret@[::1:5432/d", 'in IPv6 host address in URI: "***"'),
    ],
)
def test_malformed_url_messages(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(CliOptions(url=url), {}, cwd=CWD)
    assert info.value.message.rstrip().endswith(message), info.value.message
    assert "secret" not in info.value.message


def test_multi_host_ports_are_accepted() -> None:
    s = resolve(CliOptions(url="postgres://u@h1:5432,h2:5433/d"), {}, cwd=CWD)
    assert s.conninfo["port"] == "5432,5433"


@pytest.mark.parametrize("name", ["x" * 64, "é" * 32, "a\x00b"])
def test_storage_identifiers_refused(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(CliOptions(url="postgres://u@h/d", table=name), {}, cwd=CWD)
    assert info.value.message == f"storage table name {name!r} is empty, too long or contains NUL"
    with pytest.raises(ConfigError, match="storage schema name"):
        resolve(CliOptions(url="postgres://u@h/d", schema=name), {}, cwd=CWD)


def test_storage_identifier_limits_are_inclusive() -> None:
    s = resolve(CliOptions(url="postgres://u@h/d", table="x" * 63, schema="é" * 31), {}, cwd=CWD)
    assert (s.table, s.schema) == ("x" * 63, "é" * 31)


def test_bad_numbers_and_formats_name_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        resolve(CliOptions(url="postgres://u@h/d"), {"MIGRUNNER_LOCK_TIMEOUT": "soon"}, cwd=CWD)
    assert info.value.message == "MIGRUNNER_LOCK_TIMEOUT='soon': expected a number of seconds"
    assert (
        resolve(
            CliOptions(url="postgres://u@h/d"), {"MIGRUNNER_LOCK_TIMEOUT": ""}, cwd=CWD
        ).lock_timeout
        == 300
    )
    with pytest.raises(ConfigError) as info:
        resolve(CliOptions(url="postgres://u@h/d", log_format="yaml"), {}, cwd=CWD)
    assert info.value.message == "--log-format 'yaml': expected text or json"


def test_application_name_cuts_on_a_character_boundary() -> None:
    ident = Identity(host="h", pod="pp" + "é" * 40, version="1")
    name = ident.application_name()
    assert name == "migrunner/1 pp" + "é" * 24
    assert len(name.encode()) == 62  # the half é at byte 63 is dropped, not mangled


def test_redact_every_form_of_the_password() -> None:
    url = "postgres://u:p%40ss@h/d"
    assert redact("a p@ss b p%40ss c " + url, url) == "a *** b *** c ***"
    assert redact("x", None, "", url) == "x"
    # a URL urlsplit cannot parse is still removed whole, and later secrets still apply
    assert redact("[::1 pw2", "postgres://u:pw@[::1", "pw2") == "[::1 ***"
    assert redact("postgres://u:pw@[::1", "postgres://u:pw@[::1", "pw2") == "***"


def test_each_url_source_is_named_in_its_error() -> None:
    bad = "postgres://u:secret@h:x/d"
    for opts, env, label in [
        (CliOptions(direct_url=bad), {}, "--direct-url / MIGRUNNER_DIRECT_URL"),
        (CliOptions(), {"MIGRUNNER_DIRECT_URL": bad}, "--direct-url / MIGRUNNER_DIRECT_URL"),
        (CliOptions(), {"DATABASE_URL": bad}, "DATABASE_URL"),
    ]:
        with pytest.raises(ConfigError) as info:
            resolve(opts, env, cwd=CWD)
        assert info.value.message == f"malformed database URL ({label}): port must be a number"
    with pytest.raises(ConfigError) as info:
        resolve(CliOptions(), {}, cwd=CWD)
    assert info.value.message == (
        "no database configured: give --url, DATABASE_URL, a Sequelize config (--config) or "
        "DB_HOST/DB_NAME/DB_USER/DB_PASSWORD"
    )
    with pytest.raises(ConfigError, match="--log-format 'yaml'"):
        resolve(CliOptions(url="postgres://u@h/d"), {"MIGRUNNER_LOG_FORMAT": "yaml"}, cwd=CWD)


def test_an_app_config_without_a_connection_falls_through() -> None:
    """A .sequelizerc without a config file gives an app with no conninfo and no folder: the
    URL and the default folder apply, and the config's name is not reported as the source."""
    app = SimpleNamespace(conninfo={}, migrations_path=None, storage_table=None)
    s = resolve(CliOptions(url="postgres://u@h/d"), {}, app=app, cwd=CWD)
    assert (s.config_source, s.conninfo["host"]) == ("--url", "h")
    assert s.migrations_path == CWD / "migrations" and s.table == "SequelizeMeta"
    named = SimpleNamespace(conninfo={"host": "c"})
    assert resolve(CliOptions(), {}, app=named, cwd=CWD).config_source == "config"


def test_redact_skips_empty_secrets_and_goes_on() -> None:
    assert redact("pw and pw2", None, "", "pw2") == "pw and ***"
    assert redact("a:b@c", "postgres://[bad") == "a:b@c"


def test_config_loading_is_wanted_only_when_a_config_source_exists(tmp_path: Path) -> None:
    from runner.settings import wants_config

    assert not wants_config(CliOptions(), tmp_path)
    assert wants_config(CliOptions(config=Path("c.js")), tmp_path)
    assert wants_config(CliOptions(options_path=Path(".rc")), tmp_path)
    for made in (".sequelizerc", "config/config.js", "config/config.json"):
        cwd = tmp_path / made.replace("/", "_")
        (cwd / made).parent.mkdir(parents=True)
        (cwd / made).write_text("{}")
        assert wants_config(CliOptions(), cwd), made
    assert not wants_config(CliOptions(), tmp_path / "config_config.js" / "config")


def test_an_app_without_storage_settings_gets_the_defaults() -> None:
    app = SimpleNamespace(conninfo={"host": "c"})
    s = resolve(CliOptions(), {}, app=app, cwd=CWD)
    assert (s.timestamps, s.non_transactional, s.sequelize_options) == (False, frozenset(), {})
    assert (s.table, s.schema) == ("SequelizeMeta", None)


def test_dbmate_search_path_becomes_options_and_the_storage_schema() -> None:
    from runner.settings import url_to_conninfo

    assert url_to_conninfo("postgres://u@h/d?search_path=app,public", "x") == {
        "user": "u",
        "dbname": "d",
        "host": "h",
        "options": "-c search_path=app,public",
    }
    both = url_to_conninfo("postgres://u@h/d?options=-c%20lock_timeout%3D5&search_path=app", "x")
    assert both["options"] == "-c lock_timeout=5 -c search_path=app"
    only_options = url_to_conninfo("postgres://u@h/d?options=-c%20lock_timeout%3D5", "x")
    assert only_options["options"] == "-c lock_timeout=5"
    url = "postgres://u@h/d?search_path=app"
    assert resolve(CliOptions(url=url), {}, cwd=CWD).schema == "app"
    assert resolve(CliOptions(), {"DATABASE_URL": url}, cwd=CWD).schema == "app"
    assert resolve(CliOptions(direct_url=url, url="postgres://u@h/d"), {}, cwd=CWD).schema == "app"
    assert resolve(CliOptions(url=url, schema="own"), {}, cwd=CWD).schema == "own"
    # a config file's connection is not a URL: its search_path is not read from --url
    app = SimpleNamespace(conninfo={"host": "c"})
    assert resolve(CliOptions(url=url), {}, app=app, cwd=CWD).schema is None


def test_floating_query_options_from_flags_and_env() -> None:
    env = {"DATABASE_URL": "postgresql://a@h/d"}
    s = resolve(CliOptions(), env, cwd=CWD)
    assert (s.strict_await, s.settle_timeout) == (False, 120.0)
    s = resolve(
        CliOptions(),
        {**env, "MIGRUNNER_STRICT_AWAIT": "1", "MIGRUNNER_SETTLE_TIMEOUT": "7.5"},
        cwd=CWD,
    )
    assert (s.strict_await, s.settle_timeout) == (True, 7.5)
    s = resolve(CliOptions(strict_await=True, settle_timeout=3), env, cwd=CWD)
    assert (s.strict_await, s.settle_timeout) == (True, 3.0)
    for bad in ("0", "-1", "nan"):
        with pytest.raises(ConfigError, match="settle"):
            resolve(CliOptions(), {**env, "MIGRUNNER_SETTLE_TIMEOUT": bad}, cwd=CWD)
