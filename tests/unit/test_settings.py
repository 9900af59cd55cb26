"""Settings resolution: precedence of URL sources, env parts, identity; no secrets leak."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import ConfigError
from runner.lock import lock_key, pg_locks_ids
from runner.settings import CliOptions, Identity, redact, resolve

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
