"""The rest of sequelize-cli's commands: seeders, generators, ``db:create`` / ``db:drop``.

Registered on the main group by :func:`register`; each takes sequelize-cli's flags plus
migrunner's common options, and errors become one line and an exit code exactly as in
:mod:`runner.cli`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from runner.errors import MigrunnerError
from runner.log import Log
from runner.settings import Settings


def seed_action(
    direction: str, seeds: tuple[str, ...] | None, all_: bool, kw: dict[str, Any]
) -> Callable[[Settings, Log], int]:
    def action(settings: Settings, log: Log) -> int:
        from runner.seeders import SeedRunner, seeder_settings

        seeders_path = kw.get("seeders_path")
        conf = seeder_settings(settings, Path(seeders_path) if seeders_path else None, Path.cwd())
        SeedRunner(settings, conf, log).run(
            "up" if direction == "up" else "down", seeds=seeds, all=all_
        )
        return 0

    return action


def flatten(values: tuple[str, ...], more: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """``--seed a b`` and ``--seed a --seed b`` (yargs arrays) both give ``(a, b)``."""
    out = tuple(v for v in (*values, *more) if v not in ("db:seed", "db:seed:undo"))
    return out or None


def run_local(kw: dict[str, Any], fn: Callable[[Log], int]) -> None:
    """For commands that need no database: errors as one line and an exit code."""
    fmt = kw.get("log_format") or os.environ.get("MIGRUNNER_LOG_FORMAT") or "text"
    log = Log(fmt="json" if fmt == "json" else "text")
    try:
        code = fn(log)
    except MigrunnerError as err:
        log.error(err.message, exit_code=err.exit_code)
        sys.exit(err.exit_code)
    sys.exit(code)


def generate_action(kind: str, kw: dict[str, Any], name: str, sql: bool) -> Callable[[Log], int]:
    def action(log: Log) -> int:
        from migrations_compat.config import load_rc_paths
        from runner.generate import generate

        cwd = Path.cwd()
        options_path = kw.get("options_path")
        rc_migrations, rc_seeders = load_rc_paths(cwd, options_path, dict(os.environ))
        if kind == "migration":
            given = kw.get("migrations_path") or os.environ.get("MIGRUNNER_MIGRATIONS_PATH")
            folder = Path(given) if given else rc_migrations or Path("migrations")
        else:
            given = kw.get("seeders_path")
            folder = Path(given) if given else rc_seeders or Path("seeders")
        target = generate(folder if folder.is_absolute() else cwd / folder, kind, name, sql)  # type: ignore[arg-type]
        noun = "migration" if kind == "migration" else "seed"
        log.info(f"New {noun} was created at {target} .")
        return 0

    return action


def register(cli: click.Group, common: Callable[..., Any], run: Callable[..., None]) -> None:
    """Add the commands to ``cli``; ``common``/``run`` are :mod:`runner.cli`'s."""

    @cli.command("db:seed")
    @common
    @click.option("--seed", "seeds", multiple=True, required=True, help="Seeder file(s) to run.")
    @click.argument("more", nargs=-1)
    def db_seed(seeds: tuple[str, ...], more: tuple[str, ...], **kw: Any) -> None:
        """Run the named seeders (each in its own transaction, under the migration lock)."""
        run(kw, seed_action("up", flatten(seeds, more), False, kw))

    @cli.command("db:seed:all")
    @common
    def db_seed_all(**kw: Any) -> None:
        """Run every pending seeder (all of them with seederStorage "none", the default)."""
        run(kw, seed_action("up", None, False, kw))

    @cli.command("db:seed:undo")
    @common
    @click.option("--seed", "seeds", multiple=True, help="Seeder file(s) to revert.")
    @click.argument("more", nargs=-1)
    def db_seed_undo(seeds: tuple[str, ...], more: tuple[str, ...], **kw: Any) -> None:
        """Revert the newest seeder, or the named ones."""
        run(kw, seed_action("down", flatten(seeds, more) if seeds else None, False, kw))

    @cli.command("db:seed:undo:all")
    @common
    def db_seed_undo_all(**kw: Any) -> None:
        """Revert every seeder, newest first."""
        run(kw, seed_action("down", None, True, kw))

    for command, kind in (
        ("migration:generate", "migration"),
        ("migration:create", "migration"),
        ("seed:generate", "seeder"),
        ("seed:create", "seeder"),
    ):

        def make(kind: str) -> Callable[..., None]:
            @common
            @click.option("--name", required=True, help="Name of the new file (after the time).")
            @click.option("--sql", is_flag=True, help="A .sql file with -- migrate:up/down.")
            @click.option("--underscored", is_flag=True, hidden=True)
            def generate_cmd(name: str, sql: bool, underscored: bool, **kw: Any) -> None:
                run_local(kw, generate_action(kind, kw, name, sql))

            return generate_cmd  # type: ignore[no-any-return]

        fn = make(kind)
        fn.__doc__ = f"Create an empty {kind} file YYYYMMDDHHMMSS-NAME.js (or .sql)."
        cli.command(command)(fn)

    admin_options = [
        click.option("--encoding", help="ENCODING of the new database."),
        click.option("--collate", help="LC_COLLATE of the new database."),
        click.option("--ctype", help="LC_CTYPE of the new database."),
        click.option("--template", help="TEMPLATE to copy (e.g. template0)."),
        click.option("--charset", help="MySQL's; no effect on PostgreSQL."),
    ]

    def db_create(**kw: Any) -> None:
        """Create the configured database (connecting to 'postgres')."""
        keys = ("encoding", "collate", "ctype", "template", "charset")
        options = {k: kw.pop(k, None) for k in keys}

        def action(settings: Settings, log: Log) -> int:
            from runner.dbadmin import create_database

            name = create_database(settings, log, dict(os.environ), options)
            log.info(f"Database {name} created.")
            return 0

        run(kw, action)

    for opt in reversed(admin_options):
        db_create = opt(db_create)
    cli.command("db:create")(common(db_create))

    @cli.command("db:drop")
    @common
    def db_drop(**kw: Any) -> None:
        """Drop the configured database (DROP DATABASE IF EXISTS)."""

        def action(settings: Settings, log: Log) -> int:
            from runner.dbadmin import drop_database

            name = drop_database(settings, log, dict(os.environ))
            log.info(f"Database {name} dropped.")
            return 0

        run(kw, action)
