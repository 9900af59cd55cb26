"""``db:create`` / ``db:drop``: the app's database, from its config, as sequelize-cli does.

Both connect to the server's ``postgres`` database with the app's own connection settings.
``db:create`` issues sequelize-cli's statement: ``CREATE DATABASE "name"`` plus ``ENCODING``,
``LC_COLLATE``, ``LC_CTYPE`` and ``TEMPLATE`` when ``--encoding``, ``--collate``, ``--ctype``,
``--template`` are given (each quoted as an identifier, as sequelize-cli quotes them);
``--charset`` is MySQL's and has no effect on PostgreSQL, as in sequelize-cli. ``db:drop`` is
``DROP DATABASE IF EXISTS "name"``. Unlike sequelize-cli, an error (the database exists, is in
use, no privilege) is reported as one line and exit code 1 instead of being printed and
followed by "created.".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from runner.errors import ConfigError, MigrunnerError

if TYPE_CHECKING:
    from runner.log import Log
    from runner.settings import Settings

OPTIONS = (("encoding", "ENCODING"), ("collate", "LC_COLLATE"), ("ctype", "LC_CTYPE"))


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def database_name(settings: Settings, environ: Mapping[str, str]) -> str:
    name = (
        settings.conninfo.get("dbname")
        or environ.get("PGDATABASE")
        or settings.conninfo.get("user")
        or environ.get("PGUSER")
    )
    if not name:
        raise ConfigError("no database name in the configuration (database / DB_NAME)")
    return name


def create_sql(name: str, options: Mapping[str, str | None]) -> str:
    sql = "CREATE DATABASE " + quote(name)
    for key, keyword in OPTIONS:
        if options.get(key):
            sql += f" {keyword} = {quote(str(options[key]))}"
    if options.get("template"):
        sql += f" TEMPLATE = {quote(str(options['template']))}"
    return sql


def run_admin(settings: Settings, log: Log, sql: str, what: str) -> None:
    import psycopg

    from runner.db import connect
    from runner.migrator import first_line

    admin = replace(settings, conninfo={**settings.conninfo, "dbname": "postgres"})
    conn = connect(admin)
    try:
        conn.execute(sql.encode())
    except psycopg.Error as exc:
        state = f" [SQLSTATE {exc.sqlstate}]" if exc.sqlstate else ""
        raise MigrunnerError(f"cannot {what}: {first_line(exc)}{state}") from None
    finally:
        conn.close()


def create_database(
    settings: Settings, log: Log, environ: Mapping[str, str], options: Mapping[str, str | None]
) -> str:
    name = database_name(settings, environ)
    if options.get("charset"):
        log.warn("--charset applies to MySQL only; PostgreSQL takes --encoding")
    run_admin(settings, log, create_sql(name, options), f"create database {name}")
    return name


def drop_database(settings: Settings, log: Log, environ: Mapping[str, str]) -> str:
    name = database_name(settings, environ)
    run_admin(settings, log, "DROP DATABASE IF EXISTS " + quote(name), f"drop database {name}")
    return name
