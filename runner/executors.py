"""Executors run one migration's code on the runner's connection (golang-migrate's narrow
driver idea): :class:`SqlExecutor` natively, :class:`JsExecutor` through the node bridge.

The migrator owns the transaction (``BEGIN``/``COMMIT`` on an autocommit connection); an
executor only runs statements and reports a failure as :class:`MigrationFailed` carrying the
SQLSTATE, so the migrator can decide to retry (55P03, 40P01) or re-run outside a transaction
(25001, 55P04).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from runner.db import is_connection_lost
from runner.errors import DatabaseUnavailable, MigrationFailed, SourceError
from runner.sqlfile import Section, SqlMigration, Statement, error_line, parse_sql_migration

if TYPE_CHECKING:
    import psycopg

    from runner.log import Log
    from runner.plan import Plan
    from runner.settings import Settings
    from runner.source import Migration

REPLAY_CHUNK = 500
TXN_CONTROL = re.compile(
    r"^\s*(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|ABORT)\b(?!\s+ATOMIC)", re.IGNORECASE
)


#: Called after each statement a migration executed: (sql, connection, command tag, seconds).
#: ``up --dry-run --analyze`` reads locks and file nodes there (runner/observe.py).
StatementObserver = Callable[[str, "psycopg.Connection", "str | None", float], None]


@dataclass
class RunResult:
    """What an executor ran: (label, sql) pairs, for the dry-run plan and the log."""

    statements: list[tuple[str, str]] = field(default_factory=list)
    #: Dry run: why this migration was not (faithfully) rehearsed; None when it was.
    not_rehearsed: str | None = None


class Executor(Protocol):
    def declared_transactional(
        self, mig: Migration, direction: str, *, lazy: bool = False
    ) -> bool | None: ...

    def run(
        self,
        mig: Migration,
        direction: str,
        conn: psycopg.Connection,
        *,
        transactional: bool,
        dry_run: bool,
    ) -> RunResult: ...

    def close(self) -> None: ...


def one_line(sql: str, limit: int = 160) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def statement_error(
    mig: Migration, direction: str, stmt: Statement, exc: Exception
) -> MigrationFailed | DatabaseUnavailable:
    if is_connection_lost(exc):
        return DatabaseUnavailable(
            f"connection lost while running {mig.name} ({direction}) at {mig.path}:{stmt.line}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        )
    diag = getattr(exc, "diag", None)
    state = getattr(exc, "sqlstate", None)
    primary = (getattr(diag, "message_primary", None) or str(exc)).strip().splitlines()[0]
    pos = getattr(diag, "statement_position", None)
    line = error_line(stmt, int(pos) if pos else None)
    return MigrationFailed(
        f"migration {mig.name} failed ({direction}) at {stmt.file or mig.path}:{line}: {primary}"
        f"{f' [SQLSTATE {state}]' if state else ''} in statement: {one_line(stmt.sql)}",
        sqlstate=state,
    )


class SqlExecutor:
    """Runs ``.sql`` migrations statement by statement (for exact error lines)."""

    def __init__(self) -> None:
        self.parsed: dict[Path, SqlMigration] = {}
        self.observer: StatementObserver | None = None
        self.noticed: set[str] = set()
        #: failed once as one message (``Migrator.apply_one_message``): its re-run goes
        #: statement by statement at once, instead of a batch that would fail again
        self.unbatched: set[Path] = set()

    def parse(self, mig: Migration) -> SqlMigration:
        if mig.path not in self.parsed:
            self.parsed[mig.path] = parse_sql_migration(mig.path)
        return self.parsed[mig.path]

    def section(self, mig: Migration, direction: str) -> Section:
        parsed = self.parse(mig)
        if direction == "up":
            return parsed.up
        if parsed.down is None:
            raise MigrationFailed(
                f"migration {mig.name} has no '-- migrate:down' section: it cannot be reverted"
            )
        return parsed.down

    def validate(self, mig: Migration, direction: str) -> None:
        """Parse before anything runs; refuse transaction control inside a transaction."""
        section = self.section(mig, direction)
        if section.transactional:
            for stmt in section.statements:
                if TXN_CONTROL.match(stmt.sql):
                    raise SourceError(
                        f"{mig.path}:{stmt.line}: {one_line(stmt.sql, 40)!r} inside a "
                        "transactional migration; migrunner already wraps each migration in a "
                        "transaction (use '-- migrate:"
                        f"{direction} transaction:false' to manage transactions yourself)"
                    )

    def declared_transactional(
        self, mig: Migration, direction: str, *, lazy: bool = False
    ) -> bool | None:
        return self.section(mig, direction).declared

    def run(
        self,
        mig: Migration,
        direction: str,
        conn: psycopg.Connection,
        *,
        transactional: bool,
        dry_run: bool,
    ) -> RunResult:
        import psycopg

        section = self.section(mig, direction)
        result = RunResult()
        observer = self.observer
        if (
            observer is None
            and transactional
            and not dry_run
            and len(section.statements) > 1
            and mig.path not in self.unbatched
        ):
            # One round trip for the whole section (what makes 1,000 small migrations cheap).
            # On failure, roll back to the savepoint and replay statement by statement to name
            # the failing statement and its line; a transient failure that does not recur in
            # the replay simply lets the replay finish the migration.
            try:
                self.execute_batch(conn, section.statements)
                result.statements.extend(("statement", st.sql) for st in section.statements)
                return result
            except psycopg.Error as exc:
                if is_connection_lost(exc):
                    raise statement_error(mig, direction, section.statements[0], exc) from None
                conn.execute(b"ROLLBACK TO SAVEPOINT migrunner_batch")
            return self.replay(mig, direction, conn, section.statements, result)
        for stmt in section.statements:
            if dry_run and not section.transactional:
                result.statements.append(("non-transactional (not executed in dry run)", stmt.sql))
                continue
            result.statements.append(("statement", stmt.sql))
            t0 = time.perf_counter()
            try:
                cur = conn.execute(stmt.sql.encode())
            except psycopg.Error as exc:
                raise statement_error(mig, direction, stmt, exc) from None
            if observer is not None:
                observer(stmt.sql, conn, cur.statusmessage, time.perf_counter() - t0)
        return result

    def execute_batch(self, conn: psycopg.Connection, statements: Sequence[Statement]) -> None:
        batch = ";\n".join(st.sql for st in statements)
        conn.execute(("SAVEPOINT migrunner_batch;\n" + batch).encode())

    def replay(
        self,
        mig: Migration,
        direction: str,
        conn: psycopg.Connection,
        statements: Sequence[Statement],
        result: RunResult,
    ) -> RunResult:
        """Re-run after a batch failure in chunks, then statement by statement inside the
        failing chunk, so even a huge file costs few round trips to locate its error."""
        import psycopg

        for start in range(0, len(statements), REPLAY_CHUNK):
            chunk = statements[start : start + REPLAY_CHUNK]
            try:
                self.execute_batch(conn, chunk)
                result.statements.extend(("statement", st.sql) for st in chunk)
                continue
            except psycopg.Error as exc:
                if is_connection_lost(exc):
                    raise statement_error(mig, direction, chunk[0], exc) from None
                conn.execute(b"ROLLBACK TO SAVEPOINT migrunner_batch")
            for stmt in chunk:
                try:
                    conn.execute(stmt.sql.encode())
                except psycopg.Error as exc:
                    raise statement_error(mig, direction, stmt, exc) from None
                result.statements.append(("statement", stmt.sql))
        return result

    def close(self) -> None:
        pass


class JsExecutor:
    """Runs JS migrations through one node process, started on first use (none for no-ops)."""

    def __init__(self, settings: Settings, log: Log) -> None:
        self.settings = settings
        self.log = log
        self.bridge: Any = None
        self.rehearsing = False  # a dry run: see Executors.rehearsal
        self.observer: StatementObserver | None = None

    def get_bridge(self) -> Any:
        if self.bridge is None:
            from migrations_compat.bridge import BridgeOptions, NodeBridge
            from migrations_compat.node_runtime import bridge_node

            self.bridge = NodeBridge(
                BridgeOptions(
                    node=bridge_node(self.log),
                    search_dirs=self.settings.search_dirs,
                    sequelize_options=dict(self.settings.sequelize_options),
                    own_connection_lock_timeout=self.settings.own_connection_lock_timeout,
                    strict_await=self.settings.strict_await,
                    settle_timeout=self.settings.settle_timeout,
                ),
                self.log,
            )
            if self.rehearsing:
                self.bridge.rehearsal()
        return self.bridge

    def declared_transactional(
        self, mig: Migration, direction: str, *, lazy: bool = False
    ) -> bool | None:
        """``lazy``: no node round trip for it; None unless already known. A transactional
        run then checks the module's ``useTransaction`` itself (and is re-run in pool mode,
        :data:`~migrations_compat.bridge.DECLARES_NO_TRANSACTION`, when it says false)."""
        if mig.name in self.settings.non_transactional:
            return False
        bridge = self.get_bridge()
        wants = bridge.known_transaction(mig.path) if lazy else bridge.wants_transaction(mig.path)
        return None if wants is None else bool(wants)

    def run(
        self,
        mig: Migration,
        direction: str,
        conn: psycopg.Connection,
        *,
        transactional: bool,
        dry_run: bool,
        isolation: str | None = None,
    ) -> RunResult:
        extra = {"observer": self.observer} if self.observer is not None else {}
        out = self.get_bridge().run(
            mig.path,
            direction,
            conn,
            transactional=transactional,
            dry_run=dry_run,
            isolation=isolation,
            check_declared=True,  # declared_transactional(lazy=True) did not ask node
            **extra,
        )
        result = RunResult(not_rehearsed=out.not_rehearsed)
        for st in out.statements:
            result.statements.append((str(st.label), str(st.sql)))
        return result

    def run_pool(
        self,
        mig: Migration,
        direction: str,
        conn: psycopg.Connection,
        conninfo: Mapping[str, str],
        application_name: str,
    ) -> None:
        """Pool mode: the migration on real connections of its own, as sequelize-cli runs it
        (``conn``, the runner's own, stays idle; it and its ``conninfo`` — the target's, not
        this executor's, which a fleet shares — say where to connect)."""
        from migrations_compat.bridge_pool import pool_connection

        bridge = self.get_bridge()
        connection = pool_connection(conn, conninfo, application_name)
        bridge.run_pool(mig.path, direction, conn, connection)

    def close(self) -> None:
        if self.bridge is not None:
            self.bridge.close()
            self.bridge = None


class Executors:
    """Picks the executor for a migration's kind; owns their lifetimes."""

    def __init__(self, settings: Settings, log: Log) -> None:
        self.sql = SqlExecutor()
        self.js = JsExecutor(settings, log)
        self.log = log

    def observe(self, observer: StatementObserver | None) -> None:
        self.sql.observer = self.js.observer = observer

    def for_(self, mig: Migration) -> SqlExecutor | JsExecutor:
        return self.sql if mig.kind == "sql" else self.js

    def prepare(self, plan: Plan) -> None:
        """Validate every SQL file of the plan before anything runs, and start node (without
        waiting for it) when a JS migration is in the plan, so its ~0.2 s boot overlaps the
        lock wait and the bookkeeping queries."""
        for mig in plan.steps:
            if mig.kind == "sql":
                self.sql.validate(mig, plan.direction)
                for notice in self.sql.parse(mig).notices:  # dbmate-style ignored options
                    if notice not in self.sql.noticed:
                        self.sql.noticed.add(notice)
                        self.log.warn(notice)
        if any(m.kind == "js" for m in plan.steps):
            self.js.get_bridge().prestart()

    def rehearsal(self) -> None:
        """A dry run follows: connections JS migrations open themselves must not write."""
        self.js.rehearsing = True
        if self.js.bridge is not None:
            self.js.bridge.rehearsal()

    def close(self) -> None:
        self.sql.close()
        self.js.close()

    def __enter__(self) -> Executors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
