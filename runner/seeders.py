"""sequelize-cli's seeders (``db:seed``, ``db:seed:all``, ``db:seed:undo[:all]``), run safely.

A seeder is a file like a migration (``up(queryInterface, Sequelize)`` / ``down``, or ``.sql``
with sections) in the seeders folder, run by the same executors and the same node bridge.
What sequelize-cli 6.6.5 does, and what migrunner keeps:

* ``seederStorage: "none"`` (the default) records nothing: every seeder is always pending, so
  ``db:seed:all`` runs them all every time and ``db:seed:undo`` reverts the last file;
  ``"sequelize"`` records names in ``SequelizeData`` (same shape as ``SequelizeMeta``);
  ``"json"`` in ``sequelize-data.json``.
* ``db:seed --seed NAME...`` runs exactly those, in the order given, each found like umzug
  finds a migration (the first file whose name starts with NAME); one that is not pending
  (already recorded) is an error. ``db:seed:undo --seed NAME...`` reverts those of them that
  are recorded (with ``none``: that exist), matched by exact file name as sequelize-cli does.

What migrunner adds: every seeder runs in its own transaction together with its
``SequelizeData`` row, under the migration lock (a seeder never runs while migrations or
another seeder run), and a failure rolls that seeder back entirely and stops (exit 1); the
seeders before it stay committed, as with sequelize-cli. ``useTransaction: false`` in a seeder
(or ``-- migrate:up transaction:false``) runs it without a transaction, as for migrations.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from runner.errors import MigrationFailed, MigrunnerError, SourceError
from runner.plan import Plan, find
from runner.source import Migration, discover

if TYPE_CHECKING:
    import psycopg

    from runner.executors import Executors
    from runner.log import Log
    from runner.settings import Settings

Direction = Literal["up", "down"]


@dataclass(frozen=True)
class SeederSettings:
    folder: Path
    storage: str = "none"  # "none" | "sequelize" | "json"
    table: str = "SequelizeData"
    schema: str | None = None
    timestamps: bool = False
    json_path: Path | None = None


def seeder_settings(settings: Settings, seeders_path: Path | None, cwd: Path) -> SeederSettings:
    """``--seeders-path``, else the rc's ``seeders-path``, else ``./seeders``; storage from the
    app's config entry (``migrations_compat.config.SeederStorage``)."""
    app_seeders = getattr(settings.app, "seeders", None)
    folder = seeders_path or getattr(app_seeders, "path", None) or Path("seeders")
    folder = folder if folder.is_absolute() else cwd / folder
    if app_seeders is None:
        return SeederSettings(folder=folder, json_path=cwd / "sequelize-data.json")
    return SeederSettings(
        folder=folder,
        storage=app_seeders.storage,
        table=app_seeders.table,
        schema=app_seeders.schema,
        timestamps=app_seeders.timestamps,
        json_path=app_seeders.json_path or cwd / "sequelize-data.json",
    )


# ---- planning (pure) ---------------------------------------------------------------------


def plan_seed(
    available: Sequence[Migration], executed: Sequence[str], seeds: Sequence[str] | None
) -> list[Migration]:
    """``db:seed --seed A B`` (the named ones, in that order) or ``db:seed:all`` (pending)."""
    done = set(executed)
    if seeds is None:
        return [m for m in available if m.name not in done]
    by_name = {m.name: m for m in available}
    out = []
    for seed in seeds:
        name = find(list(by_name), os.path.basename(seed))
        if name is None:
            raise SourceError(f"--seed {seed!r}: no such seeder in the seeders folder")
        if name in done:
            raise SourceError(f"--seed {seed!r}: seeder {name} is not pending (already recorded)")
        out.append(by_name[name])
    return out


def plan_undo(
    available: Sequence[Migration],
    executed: Sequence[str],
    storage: str,
    seeds: Sequence[str] | None,
    all: bool,
) -> list[Migration]:
    """``db:seed:undo [--seed ...]`` / ``db:seed:undo:all``, newest first.

    sequelize-cli's candidates are the pending seeders with storage ``none`` (nothing is ever
    recorded) and the recorded ones otherwise."""
    by_name = {m.name: m for m in available}
    # otherwise the storage's own order, as umzug's executed(): by name in SequelizeData
    # (ORDER BY name), the order of insertion in sequelize-data.json
    candidates = [m.name for m in available] if storage == "none" else list(dict.fromkeys(executed))
    if seeds is not None:
        candidates = [c for c in candidates if c in set(seeds)]
    if not candidates:
        return []
    if seeds is None and not all:
        candidates = candidates[-1:]
    missing = [c for c in candidates if c not in by_name]
    if missing:
        raise SourceError(
            "cannot revert recorded seeders whose file is missing: " + ", ".join(missing)
        )
    return [by_name[c] for c in reversed(candidates)]


# ---- storage -----------------------------------------------------------------------------


class JsonStorage:
    """``sequelize-data.json``: a JSON array of names, as umzug's JSONStorage writes it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def executed(self) -> list[str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise SourceError(f"{self.path}: unreadable seeder storage: {exc}") from None
        if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
            raise SourceError(f"{self.path}: seeder storage must be a JSON array of names")
        return data

    def write(self, names: list[str]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".sequelize-data.")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(names, fh, indent=2)
        os.replace(tmp, self.path)


# ---- running -----------------------------------------------------------------------------


class SeedRunner:
    def __init__(self, settings: Settings, seeds: SeederSettings, log: Log) -> None:
        from runner.storage import MetaTable

        # the bridge also looks for the app's node_modules upwards from the seeders folder
        self.settings = replace(settings, search_dirs=(seeds.folder, *settings.search_dirs))
        self.seeds = seeds
        self.log = log
        self.table = MetaTable(seeds.table, seeds.schema, seeds.timestamps)
        self.json = JsonStorage(seeds.json_path) if seeds.json_path else None

    def executed(self, conn: psycopg.Connection) -> list[str]:
        if self.seeds.storage == "sequelize":
            return self.table.applied(conn) if self.table.exists(conn) else []
        if self.seeds.storage == "json" and self.json is not None:
            return self.json.executed()
        return []

    def run(
        self,
        direction: Direction,
        *,
        seeds: Sequence[str] | None = None,
        all: bool = False,
    ) -> list[str]:
        """Plan and run under the migration lock; the names run, in order."""
        from runner.db import connect
        from runner.executors import Executors
        from runner.lock import MigrationLock
        from runner.migrator import guarded

        try:
            src = discover(self.seeds.folder)
        except SourceError as err:
            raise SourceError(err.message.replace("migrations ", "seeders ", 1)) from None
        for notice in src.notices():
            self.log.warn(notice.replace(" migration", " seeder", 1))
        with (
            Executors(self.settings, self.log) as executors,
            MigrationLock(self.settings, self.log) as lock,
        ):
            conn = connect(self.settings)
            try:
                lock.acquire(conn)  # held by the session that runs the seeders
                executed = guarded(lambda: self.executed(conn))
                if direction == "up":
                    steps = plan_seed(src.migrations, executed, seeds)
                else:
                    steps = plan_undo(src.migrations, executed, self.seeds.storage, seeds, all)
                if not steps:
                    self.log.info("No seeders found.")
                    return []
                executors.prepare(Plan(direction, tuple(steps)))
                with_ts = False
                if self.seeds.storage == "sequelize":
                    with_ts = guarded(lambda: self.table.ensure(conn))
                done: list[str] = []
                names = list(executed)
                for mig in steps:
                    self.apply(conn, mig, direction, executors, with_ts)
                    done.append(mig.name)
                    if self.seeds.storage == "json" and self.json is not None:
                        names = [n for n in names if n != mig.name]
                        if direction == "up":
                            names.append(mig.name)
                        self.json.write(names)
                return done
            finally:
                conn.close()

    def apply(
        self,
        conn: psycopg.Connection,
        mig: Migration,
        direction: Direction,
        executors: Executors,
        with_ts: bool,
    ) -> None:
        import psycopg

        from runner.db import is_connection_lost
        from runner.errors import DatabaseUnavailable
        from runner.migrator import first_line, rollback

        executor = executors.for_(mig)
        transactional = executor.declared_transactional(mig, direction) is not False
        verb, past = ("migrating", "migrated") if direction == "up" else ("reverting", "reverted")
        self.log.info(f"== {mig.name}: {verb} =======", seeder=mig.name, direction=direction)
        t0 = time.perf_counter()
        ms = int(self.settings.statement_lock_timeout * 1000)
        try:
            setup = (
                f"BEGIN; SET LOCAL lock_timeout = '{ms}ms'"
                if transactional
                else (f"SET lock_timeout = '{ms}ms'")
            )
            conn.execute(setup.encode())
            executor.run(mig, direction, conn, transactional=transactional, dry_run=False)
            if not transactional:
                conn.execute(b"BEGIN")
            if self.seeds.storage == "sequelize":
                if direction == "up":
                    self.table.log(conn, mig.name, with_ts)
                else:
                    self.table.unlog(conn, mig.name)
            conn.execute(b"COMMIT")
        except MigrationFailed as err:
            rollback(conn)
            msg = err.message.replace(f"migration {mig.name}", f"seeder {mig.name}", 1)
            if msg.startswith(mig.name):  # the bridge's wording names the file first
                msg = f"seeder {msg}"
            raise MigrationFailed(msg, sqlstate=err.sqlstate) from None
        except MigrunnerError:
            rollback(conn)
            raise
        except psycopg.Error as exc:
            rollback(conn)
            if is_connection_lost(exc):
                raise DatabaseUnavailable(
                    f"connection lost while running seeder {mig.name}: {first_line(exc)}"
                ) from None
            raise MigrationFailed(
                f"seeder {mig.name} failed ({direction}): {first_line(exc)}"
                f"{f' [SQLSTATE {exc.sqlstate}]' if exc.sqlstate else ''}",
                sqlstate=exc.sqlstate,
            ) from None
        elapsed = time.perf_counter() - t0
        self.log.info(f"== {mig.name}: {past} ({elapsed:.3f}s)", seeder=mig.name)
