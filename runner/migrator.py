"""The orchestrator: read state, plan, take the lock, run each migration in its transaction.

Thin by design (golang-migrate): the source, planning, storage, history, lock and executors
each live in their own module; this one only sequences them.

Guarantees:

* each migration, its SequelizeMeta row and its history row commit in ONE transaction;
* a failure rolls that migration back entirely, records a ``failed`` history row, and stops;
* a run with nothing pending reads SequelizeMeta once and returns without the lock or node
  (every pod start is such a run); the state is read again under the lock before anything runs;
* DDL waits at most ``statement_lock_timeout`` for a table lock; on 55P03 / 40P01 the
  migration is rolled back and retried with backoff, ``retries`` times;
* a transactional migration failing with 25001 (cannot run inside a transaction block) or
  55P04 (unsafe use of a new enum value) that did not declare its mode is rolled back and re-run
  outside a transaction, with a warning in the log and a note in the history;
* a JS migration runs in atomic mode (its pool clients multiplexed onto the runner's
  transaction) while that gives sequelize-cli's result. When its first transaction asks for an
  isolation level, it is re-run in a runner transaction begun at that level. When atomic mode
  cannot give sequelize-cli's result (a rollback that would discard work sequelize-cli keeps,
  another isolation level, ``useTransaction: false``, 25001/55P04), it is rolled back and
  re-run in *pool mode*: on real connections of its own, exactly as sequelize-cli, under the
  lock, with a committed ``started`` history row before and SequelizeMeta plus the ``applied``
  row after — not atomic, so a crash midway is flagged by ``status``;
* a transactional SQL migration goes as ONE message (:meth:`Migrator.apply_one_message`):
  the same statements as the step-by-step path, in one round trip; any error hands it to
  the step-by-step path, which reports, retries or re-runs it as described here;
* in a run of several migrations, all commits but the last use ``synchronous_commit = off``:
  each stays atomic, and the last, synchronous commit makes all of them durable at once (a
  server crash mid-run loses whole migrations together with their rows, never half of one).

Session rule: a migration may change its session (``SET search_path``, a pg_dump header's
``set_config('search_path', '', false)``, ``SET ROLE``, temp tables, prepared statements,
``LISTEN``). None of it reaches the bookkeeping or the next migration: the storage schema is
resolved once at start (``--schema``, else the session's ``current_schema()``), every
bookkeeping statement names its table with that schema and ``pg_catalog`` functions, the
bookkeeping runs as the runner's own role (``RESET SESSION AUTHORIZATION``/``RESET ROLE``
inside the migration's transaction), and every migration starts from a freshly reset session
(:data:`SESSION_RESET`; ``DISCARD ALL`` would also drop the migration lock this session holds).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from runner.db import (
    connect,
    is_connection_lost,
    own_session_settings,
    qualified,
    wait_until_ready,
)
from runner.errors import (
    AtomicModeUnavailable,
    ConfigError,
    DatabaseUnavailable,
    DriftError,
    LockLost,
    MigrationFailed,
    MigrunnerError,
)
from runner.history import HISTORY_TABLE, Entry, HistoryTable
from runner.lock import pg_locks_ids
from runner.plan import Drift, Plan, drift, pending, plan_down, plan_up
from runner.progress import BOOKKEEPING_MARK, MIGRATION_MARK, Progress
from runner.settings import redact
from runner.signals import Interrupted, MigrationTimeout, time_limit
from runner.source import Migration, Prehash, Source, discover
from runner.storage import MetaTable
from runner.watch import session_watch

if TYPE_CHECKING:
    import psycopg

    from runner.executors import Executors, RunResult
    from runner.lock import MigrationLock
    from runner.log import Log
    from runner.quickread import QuickState, Verify
    from runner.settings import Settings


def end_node_session() -> None:
    """End the run's node session, if one was started (migrations_compat/node_session.py)."""
    session = sys.modules.get("migrations_compat.node_session")
    if session is not None:
        session.discard()


#: What ``DISCARD ALL`` does, minus ``pg_advisory_unlock_all()``: this session holds the lock.
SESSION_RESET = (
    "RESET SESSION AUTHORIZATION; RESET ALL; CLOSE ALL; DEALLOCATE ALL; UNLISTEN *; "
    "DISCARD TEMP; DISCARD SEQUENCES"
)
#: Inside the migration's transaction, before its bookkeeping: back to the runner's identity.
BOOKKEEPING_IDENTITY = "RESET SESSION AUTHORIZATION; RESET ROLE"
RETRYABLE = {"55P03": "lock not available", "40P01": "deadlock detected"}
NEEDS_AUTOCOMMIT = {
    "25001": "cannot run inside a transaction block",
    "55P04": "new enum value used in the transaction that added it",
}
T = TypeVar("T")


@dataclass(frozen=True)
class State:
    applied: tuple[str, ...]
    checksums: dict[str, str]
    meta_exists: bool
    history_exists: bool = False


@dataclass
class StatusReport:
    source: Source
    state: State
    drift: Drift
    #: pool-mode migrations started and never finished (running now, or the runner died)
    unfinished: tuple[str, ...] = ()

    @property
    def pending(self) -> list[Migration]:
        return pending(self.source.migrations, self.state.applied)

    def rows(self) -> list[dict[str, str]]:
        applied = set(self.state.applied)
        rows = []
        for m in self.source.migrations:
            state = "up" if m.name in applied else "down"
            row = {"name": m.name, "state": state, "kind": m.kind}
            if m.name in self.drift.changed:
                row["flag"] = "changed"
            elif m.name in self.unfinished:
                row["flag"] = "unfinished"
            rows.append(row)
        for name in self.drift.missing:
            rows.append({"name": name, "state": "up", "kind": "?", "flag": "missing"})
        return rows


@dataclass
class RunReport:
    plan: Plan
    done: list[str] = field(default_factory=list)
    dry_run: list[tuple[Migration, bool, RunResult]] = field(default_factory=list)
    analysis: Any = None  # runner.analyze.Report after `up --dry-run --analyze`


class Migrator:
    def __init__(self, settings: Settings, log: Log, source: Source | None = None) -> None:
        self.settings = settings
        self.log = log
        self._source = source  # already read (a fleet reads the folder once for all targets)
        self.meta = MetaTable(settings.table, settings.schema, settings.timestamps)
        # The history's key for this SequelizeMeta stays as the user named it (rows written
        # before the schema was resolved keep matching); where both tables live is resolved.
        self.history = HistoryTable(qualified(settings.schema, settings.table), settings.schema)
        self.server_version = 0
        self.resolved = False
        self.progress = Progress(settings, log)
        self.analysis: Any = None  # runner.rehearsal.AnalyzeOptions: observe the dry run

    # ---- reading ---------------------------------------------------------------------------

    def source(self) -> Source:
        if self._source is not None:
            return self._source
        src = discover(self.settings.migrations_path)
        for notice in src.notices():
            self.log.warn(notice)
        return src

    def read_state(self, conn: psycopg.Connection) -> State:
        """Read SequelizeMeta (and checksums); the first call also resolves the schema."""
        row = conn.execute(
            "SELECT x.s, pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', x.s, %s::text)) "
            "IS NOT NULL, pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', x.s, %s::text)) "
            "IS NOT NULL FROM (SELECT coalesce(%s::text, pg_catalog.current_schema()) AS s) x",
            (self.settings.table, HISTORY_TABLE, self.settings.schema),
        ).fetchone()
        assert row is not None
        self.resolve_schema(row[0])
        meta_exists, history_exists = bool(row[1]), bool(row[2])
        applied = tuple(self.meta.applied(conn)) if meta_exists else ()
        checksums = self.history.applied_checksums(conn) if history_exists and applied else {}
        return State(applied, checksums, meta_exists, history_exists)

    def resolve_schema(self, schema: str | None) -> None:
        """Fix the storage schema for the rest of the run (and the lock key derived from it):
        whatever a migration later does to ``search_path`` cannot move the bookkeeping."""
        if self.resolved:
            return
        if schema is None:
            raise ConfigError(
                "no schema to keep SequelizeMeta in: the session's search_path names no "
                "existing schema; give --schema (migrationStorageTableSchema) or fix search_path"
            )
        self.settings = replace(self.settings, schema=schema)
        self.meta = replace(self.meta, schema=schema)
        self.history = replace(self.history, schema=schema)
        self.resolved = True

    def quick_state(
        self, src: Source | None = None, prehash: Prehash | None = None, unfinished: bool = False
    ) -> QuickState | None:
        """The state read through libpq without importing psycopg (runner/quickread.py), or
        None to read it the ordinary way. With ``src`` and a digesting ``prehash``, drift
        detection may skip the checksums (:meth:`verifier`); ``unfinished`` also reads the
        pool-mode runs never finished (``status``)."""
        from runner.lock import lock_key, pg_locks_ids
        from runner.quickread import Queries, read_state
        from runner.verified import VERIFIED_TABLE, VerifiedTable, history_mark_sql

        params = dict(self.settings.conninfo)
        params["application_name"] = self.settings.identity.application_name()

        def queries(schema: str) -> Queries:
            meta = replace(self.meta, schema=schema)
            history = replace(self.history, schema=schema)
            verified = VerifiedTable(self.history.storage, schema)
            return Queries(
                f'SELECT "name" FROM {meta.ref}',  # sorted by the client (quickread)
                history.checksums_sql("$1"),
                history_mark_sql(history.ref, "$1"),
                verified.rows_sql("$1"),
                history.unfinished_sql("$1") if unfinished else None,
                verified.record_sql(),
                verified.create_sql(),
            )

        verify = self.verifier(src, prehash) if src is not None and prehash else None
        got = read_state(
            params,
            self.settings.table,
            HISTORY_TABLE,
            self.settings.schema,
            queries,
            self.history.storage,
            pg_locks_ids(lock_key(self.settings.schema, self.settings.table)),
            verified_table=VERIFIED_TABLE if verify else None,
            verify=verify,
        )
        if got is None and prehash is not None:
            prehash.start()  # the ordinary path hashes everything
        return got

    def verifier(self, src: Source, prehash: Prehash) -> Verify:
        """Drift detection without hashing when a recorded verification covers the folder
        and the database state (runner/verified.py); otherwise hash, verify in full, and
        record the verification when no drift was found."""
        from runner.quickread import Verify
        from runner.verified import applied_digest, matches

        def covered(state: QuickState) -> bool:
            folder = prehash.folder()
            mark = state.history_mark
            ok = mark is not None and matches(
                state.verified, folder, applied_digest(state.applied), mark
            )
            done = set(state.applied)
            if ok and all(m.name in done for m in src.migrations):
                prehash.skip()  # nothing to hash: no drift, nothing pending
            else:
                prehash.start()
            return ok

        def record(state: QuickState) -> tuple[str, str, str] | None:
            done = set(state.applied)
            if not all(m.name in done for m in src.migrations):
                return None  # about to change: the run records its own state after applying
            prehash.wait()
            folder = prehash.folder()
            if folder is None or state.history_mark is None or not state.checksums_read:
                return None
            try:
                if drift(src.migrations, state.applied, state.checksums):
                    return None
            except MigrunnerError:
                return None  # an unreadable file: the caller's own check reports it
            return folder, applied_digest(state.applied), state.history_mark

        return Verify(covered, record)

    def open(self, wait: bool) -> psycopg.Connection:
        if wait:
            return wait_until_ready(self.settings, self.log, self.settings.wait_timeout)
        return connect(self.settings)

    @contextmanager
    def connection(self, wait: bool = False) -> Iterator[psycopg.Connection]:
        conn = self.open(wait)
        try:
            yield conn
        finally:
            conn.close()

    def status(self, wait: bool = False) -> StatusReport:
        """As lean as a no-op ``up``: the libpq read (no psycopg), the folder's stat digest
        instead of hashing when a recorded verification covers it, hashing in a thread
        otherwise."""
        src = self.source()
        prehash = Prehash(src.migrations, digest=True)
        quick = self.quick_state(src, prehash, unfinished=True)
        if quick is not None:
            self.resolve_schema(quick.schema)
            state = State(quick.applied, quick.checksums, quick.meta_exists, quick.history_exists)
            unfinished: list[str] | tuple[str, ...] = quick.unfinished
        else:
            with self.connection(wait) as conn:
                state = guarded(lambda: self.read_state(conn))
                unfinished = (
                    guarded(lambda: self.history.unfinished(conn)) if state.history_exists else []
                )
        prehash.wait()
        found = drift(src.migrations, state.applied, state.checksums)
        return StatusReport(src, state, found, tuple(unfinished))

    # ---- running ---------------------------------------------------------------------------

    def up(
        self,
        to: str | None = None,
        dry_run: bool = False,
        wait: bool = False,
        executors: Executors | None = None,
        *,
        from_: str | None = None,  # db:migrate --from (see plan.select_from)
        name: str | None = None,  # db:migrate --name (see plan.select_name)
    ) -> RunReport:
        """Apply pending migrations. ``executors``: reuse these (and their node process) and
        leave them open, as a fleet worker does across targets."""
        src = self.source()
        if not src.migrations:
            raise_empty(src)
        # stats (and hashes, unless a recorded verification covers them) while we connect
        prehash = Prehash(src.migrations, digest=executors is None)
        owned: Executors | None = None  # booted early here, closed here
        quick = self.quick_state(src, prehash) if executors is None else None
        if quick is not None:  # every pod start: answered without psycopg, the lock or node
            # fixed now, as read_state() would: the lock key below is derived from it
            self.resolve_schema(quick.schema)
            plan = plan_up(src.migrations, quick.applied, to, from_=from_, name=name)
            if not plan:
                prehash.wait()
                state = State(quick.applied, quick.checksums, quick.meta_exists)
                self.announce(src, state, plan)
                self.check_drift(src, state)
                return RunReport(plan)
            if quick.busy:
                # most likely a waiter, which will find nothing to do: its node (the config's,
                # ~45 MiB) ends now rather than wait with it; a bridge, if any, starts anew
                end_node_session()
            # sequelize is not loaded yet, even with JS pending: waiters must not pay for it
            # (see migrations_compat/node_session.py); the lock's winner starts the bridge
            # in the node that evaluated the config as soon as it holds the lock.
        conn: psycopg.Connection | None = None  # opened once the lock is ours, when read quickly
        try:
            if quick is None:
                conn = self.open(wait)
                state = guarded(lambda: self.read_state(conn))  # type: ignore[arg-type]
            else:
                state = State(quick.applied, quick.checksums, quick.meta_exists)
            plan = plan_up(src.migrations, state.applied, to, from_=from_, name=name)
            prehash.wait()
            self.announce(src, state, plan)
            self.check_drift(src, state)
            if not plan:
                return RunReport(plan)  # nothing pending: no lock, no node
            from contextlib import nullcontext

            from runner.executors import Executors
            from runner.lock import MigrationLock

            if conn is None:  # read quickly: the worker session (it takes the lock) opens now
                conn = self.open(False)
            with (
                nullcontext(executors)
                if executors and not owned
                else (owned or Executors(self.settings, self.log)) as ex,
                MigrationLock(self.settings, self.log) as lock,
            ):
                if guarded(lambda: lock.try_now(conn)):
                    ex.prepare(plan)  # uncontended: node boots during the bookkeeping
                else:
                    # A waiter holds one connection and no node (the run's node, maybe loading
                    # sequelize, ends): with N runners starting at once, N-1 of them will find
                    # nothing to do.
                    end_node_session()
                    lock.acquire(conn)
                state = guarded(lambda: self.read_state(conn))  # again, under the lock
                self.check_drift(src, state, announce=False)
                plan = plan_up(src.migrations, state.applied, to, from_=from_, name=name)
                report = self.execute(conn, plan, dry_run, lock, ex)
                if report.done and not dry_run and executors is None:
                    self.record_verified(conn, src, prehash)
                return report
        finally:
            if conn is not None:
                conn.close()
            if owned is not None:
                owned.close()

    def down(
        self,
        *,
        step: int | None = None,
        to: str | None = None,
        all: bool = False,
        name: str | None = None,
        dry_run: bool = False,
        wait: bool = False,
    ) -> RunReport:
        from runner.executors import Executors
        from runner.lock import MigrationLock

        src = self.source()
        with self.connection(wait) as conn:
            # resolves the schema, hence the lock key
            first = guarded(lambda: self.read_state(conn))
            with suppress(MigrunnerError):  # reported under the lock, as before
                self.preload_js(
                    plan_down(src.migrations, first.applied, step=step, to=to, all=all, name=name)
                )
            with (
                Executors(self.settings, self.log) as executors,
                MigrationLock(self.settings, self.log) as lock,
            ):
                lock.acquire(conn)
                state = guarded(lambda: self.read_state(conn))
                plan = plan_down(
                    src.migrations, state.applied, step=step, to=to, all=all, name=name
                )
                self.announce(src, state, plan)
                return self.execute(conn, plan, dry_run, lock, executors)

    def preload_js(self, plan: Plan) -> None:
        """``down`` will run a JS migration: the run's node session (started with the process,
        it evaluated the config) loads sequelize now, while the lock is taken
        (migrations_compat/node_session.py). Nothing without such a session."""
        if not any(m.kind == "js" for m in plan.steps):
            return
        from migrations_compat.node_session import preload_bridge

        preload_bridge(self.settings.search_dirs, self.settings.own_connection_lock_timeout)

    def announce(self, src: Source, state: State, plan: Plan) -> None:
        """The line before a run: where (never a password), which folder, how much to do."""
        todo = "pending" if plan.direction == "up" else "to revert"
        default = self.meta.name in ("SequelizeMeta", "public.SequelizeMeta")
        table = "" if default else f", table {self.meta.name}"
        try:
            folder = str(src.folder.relative_to(Path.cwd()))
        except ValueError:
            folder = str(src.folder)
        self.log.info(
            f"Database {self.settings.target} (from {self.settings.config_source}{table}); "
            f"migrations in {folder}: {len(plan.steps)} {todo}, {len(state.applied)} applied",
            target=self.settings.target,
            storage=self.meta.name,
            migrations_path=str(src.folder),
            pending=len(plan.steps) if plan.direction == "up" else None,
            to_revert=len(plan.steps) if plan.direction == "down" else None,
            applied=len(state.applied),
        )

    def check_drift(self, src: Source, state: State, announce: bool = True) -> None:
        found = drift(src.migrations, state.applied, state.checksums)
        if not found:
            return
        if self.settings.allow_drift:
            if announce:
                self.log.warn(f"drift allowed by --allow-drift: {found.describe()}")
            return
        if wrong_place(found, state):
            raise DriftError(wrong_place_message(self.settings.target, src, state))
        raise DriftError(
            f"{found.describe()} (in {src.folder}); fix the deployment, or pass --allow-drift"
        )

    def execute(
        self,
        conn: psycopg.Connection,
        plan: Plan,
        dry_run: bool,
        lock: MigrationLock,
        executors: Executors,
    ) -> RunReport:
        report = RunReport(plan)
        if not plan:
            return report
        self.server_version = conn.info.server_version
        executors.prepare(plan)  # validates SQL files before the first migration runs
        if dry_run:
            self.dry_run(conn, plan, executors, report)
            return report
        with_ts = guarded(lambda: self.ensure_tables(conn))
        proof = (conn.info.backend_pid, *pg_locks_ids(lock.key))
        for name in set(guarded(lambda: self.history.unfinished(conn))) & {
            m.name for m in plan.steps
        }:
            self.log.warn(
                f"{name}: an earlier run started it in pool mode and never finished it (it may "
                "be partly applied); running it again, as sequelize-cli would",
                migration=name,
            )
        self.progress.total = len(plan.steps)
        try:
            for i, mig in enumerate(plan.steps):
                last = i == len(plan.steps) - 1
                self.apply(conn, mig, plan.direction, executors, with_ts, last, proof)
                report.done.append(mig.name)
        except MigrunnerError as err:
            if report.done and err.exit_code == 2:
                # Exit 2 promises "nothing ran": not true any more (e.g. node turned out
                # broken at the first JS migration, after SQL ones committed).
                raise MigrunnerError(
                    f"{err.message} (after {len(report.done)} migration(s) of this run were "
                    f"applied: {', '.join(report.done)})",
                    exit_code=1,
                ) from None
            raise
        finally:
            self.progress.close()
        return report

    def ensure_tables(self, conn: psycopg.Connection) -> bool:
        with_ts = self.meta.ensure(conn)
        self.history.ensure(conn)
        return with_ts

    def record_verified(self, conn: psycopg.Connection, src: Source, prehash: Prehash) -> None:
        """After a run applied migrations, under the lock: verify the folder against the
        database in full (names, checksums and the history's mark read in one snapshot) and,
        with no drift, record it (runner/verified.py), so the next pod starts skip the hashing.
        Best effort: any failure only means the next run verifies in full."""
        import psycopg

        from runner.quickread import BOUNDED
        from runner.verified import VerifiedTable, applied_digest, history_mark_sql

        folder = prehash.folder()
        if folder is None:
            return
        verified = VerifiedTable(self.history.storage, self.meta.schema)
        try:
            # the last migration's session state (a role, a search_path) is not ours
            conn.execute(SESSION_RESET.encode())
            conn.execute(BOUNDED.encode())  # only a shortcut for the next run: never wait long
            conn.execute(verified.create_sql())
            conn.execute(b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                applied = self.meta.applied(conn)
                checksums = self.history.applied_checksums(conn)
                row = conn.execute(
                    f"SELECT {history_mark_sql(self.history.ref, '%s')}", (self.history.storage,)
                ).fetchone()
            finally:
                rollback(conn)
            prehash.wait()
            if row is None or drift(src.migrations, applied, checksums):
                return
            marks = (self.history.storage, folder, applied_digest(applied), str(row[0]))
            names = ("storage", "folder", "applied", "history")
            for sql in verified.record_sql(tuple(f"%({n})s" for n in names)):
                conn.execute(sql, dict(zip(names, marks, strict=True)))
        except (psycopg.Error, MigrunnerError):
            # not recorded (a read-only role, a lost connection...): the migrations are
            # committed all the same, and the next run verifies in full
            rollback(conn)

    def session_setup(
        self, name: str, transactional: bool, durable: bool, isolation: str | None = None
    ) -> str:
        """One round trip of settings before a migration (application_name, timeouts)."""
        s = self.settings
        ident = s.identity
        app = f"migrunner/{ident.version} running {name}".encode()[:63].decode("utf-8", "ignore")
        local = "LOCAL " if transactional else ""
        # A fresh session first, whatever the previous migration did to it.
        parts = [SESSION_RESET, own_session_settings(self.server_version)]
        parts.append(f"SET application_name = {quote_literal(app)}")
        if self.server_version >= 140000:
            # A killed runner's backend would otherwise keep its transaction (and its locks)
            # until a blocked statement ends; this makes the server notice within a second.
            parts.append("SET client_connection_check_interval = '1s'")
        if transactional:
            # the level first of all: it can only be set before the transaction's first snapshot
            parts.append(f"BEGIN ISOLATION LEVEL {isolation.upper()}" if isolation else "BEGIN")
        parts.append(f"SET {local}lock_timeout = '{int(s.statement_lock_timeout * 1000)}ms'")
        if s.statement_timeout:
            parts.append(f"SET {local}statement_timeout = '{int(s.statement_timeout * 1000)}ms'")
        if transactional and not durable:
            parts.append("SET LOCAL synchronous_commit = off")
        return "; ".join(parts)

    def apply(
        self,
        conn: psycopg.Connection,
        mig: Migration,
        direction: str,
        executors: Executors,
        with_ts: bool,
        durable: bool,
        lock_proof: tuple[int, int, int],
    ) -> None:
        executor = executors.for_(mig)
        # JS: not asked separately (a run checks it), so one node round trip per migration
        declared = guarded(lambda: executor.declared_transactional(mig, direction, lazy=True))
        transactional = True if declared is None else declared
        notes: list[str] = []
        attempt = 0
        isolation: str | None = None  # the level a JS migration's first transaction asked for
        pool_reason = "it declares useTransaction: false"
        # the common case, a transactional SQL migration: first as one message
        one_message = mig.kind == "sql" and transactional and executors.sql.observer is None
        self.progress.begin(mig, direction, conn)
        while True:
            if not transactional and mig.kind == "js":
                self.apply_pool(conn, mig, direction, executors, with_ts, lock_proof, pool_reason)
                return
            attempt += 1
            started = datetime.now(UTC)
            t0 = time.perf_counter()
            try:
                if one_message:
                    one_message = False
                    with time_limit(self.settings.migration_timeout):
                        done = self.apply_one_message(
                            conn, mig, direction, executors, with_ts, durable, lock_proof, started
                        )
                    if done:
                        elapsed = (time.perf_counter() - t0) * 1000
                        self.progress.end(mig, direction, elapsed, transactional=True)
                        return
                    # it failed (and was rolled back): the step-by-step run below names the
                    # statement, retries, or re-runs it outside a transaction, as always
                    started = datetime.now(UTC)
                    t0 = time.perf_counter()
                setup = self.session_setup(mig.name, transactional, durable, isolation)
                if isolation is not None:
                    # The reset's DISCARD/UNLISTEN take a snapshot, and statements before a
                    # BEGIN in one message join its transaction: the level would come too
                    # late. Two round trips, only for this rare re-run.
                    reset, begin, rest = setup.partition("BEGIN ISOLATION LEVEL")
                    conn.execute(reset.rstrip("; ").encode())
                    setup = begin + rest
                conn.execute(setup.encode())
                with (
                    time_limit(self.settings.migration_timeout),
                    session_watch(conn, enabled=mig.kind == "js"),
                ):
                    if isolation is not None:
                        executors.js.run(
                            mig,
                            direction,
                            conn,
                            transactional=True,
                            dry_run=False,
                            isolation=isolation,
                        )
                    else:
                        executor.run(
                            mig, direction, conn, transactional=transactional, dry_run=False
                        )
                if not transactional:
                    conn.execute(b"BEGIN")
                conn.execute(self.bookkeeping_setup().encode())
                if direction == "up":
                    self.meta.log(conn, mig.name, with_ts)
                else:
                    self.meta.unlog(conn, mig.name)
                elapsed = (time.perf_counter() - t0) * 1000
                still_locked = self.history.record(
                    conn,
                    Entry(
                        name=mig.name,
                        direction=direction,
                        outcome="applied" if direction == "up" else "reverted",
                        checksum=mig.checksum,
                        transactional=transactional,
                        started_at=started,
                        duration_ms=elapsed,
                        attempts=attempt,
                        note="; ".join(notes) or None,
                    ),
                    self.settings.identity,
                    lock_proof,
                )
                if not still_locked:  # only this session could have unlocked: the migration did
                    rollback(conn)
                    raise LockLost(
                        f"lost the migration lock while running {mig.name}: the migration "
                        "released it itself (pg_advisory_unlock_all?); rolled back"
                    )
                conn.execute(b"COMMIT")
                self.progress.end(mig, direction, elapsed, transactional=transactional)
                return
            except AtomicModeUnavailable as why:
                rollback(conn)
                if why.isolation is not None and isolation is None:
                    isolation = why.isolation
                    self.log.info(
                        f"{mig.name}: {why.message}; re-running it in a transaction at that level",
                        migration=mig.name,
                        isolation=isolation,
                    )
                    notes.append(f"isolation level {isolation}")
                else:
                    pool_reason = why.message
                    transactional = False
                attempt = 0
                continue
            except MigrationFailed as err:
                rollback(conn)
                if conn.closed or conn.broken:  # e.g. node killed because the session ended
                    raise self.lock_lost(mig, direction, transactional, started, t0, err) from None
                if transactional and err.sqlstate in RETRYABLE and attempt <= self.settings.retries:
                    delay = min(0.2 * 2 ** (attempt - 1), 5.0)
                    msg = (
                        f"{mig.name}: {RETRYABLE[err.sqlstate]} (SQLSTATE {err.sqlstate}); "
                        f"rolled back, retry {attempt}/{self.settings.retries} in {delay:.1f}s"
                    )
                    self.log.warn(msg, migration=mig.name, sqlstate=err.sqlstate, attempt=attempt)
                    notes.append(f"retried after SQLSTATE {err.sqlstate}")
                    time.sleep(delay)
                    continue
                if (
                    transactional
                    and err.sqlstate in NEEDS_AUTOCOMMIT
                    and executor.declared_transactional(mig, direction, lazy=True) is None
                ):
                    msg = (
                        f"{mig.name}: {NEEDS_AUTOCOMMIT[err.sqlstate]} (SQLSTATE {err.sqlstate}); "
                        "rolled back and re-running it outside a transaction, statement by "
                        "statement as sequelize-cli would (declare it to silence this warning)"
                    )
                    self.log.warn(msg, migration=mig.name, sqlstate=err.sqlstate)
                    notes.append(f"re-run outside a transaction after SQLSTATE {err.sqlstate}")
                    pool_reason = f"SQLSTATE {err.sqlstate} ({NEEDS_AUTOCOMMIT[err.sqlstate]})"
                    transactional = False
                    attempt = 0
                    continue
                self.record_failure(conn, mig, direction, transactional, started, t0, err, notes)
                raise
            except MigrunnerError as err:
                rollback(conn)
                if conn.closed or conn.broken:
                    raise self.lock_lost(mig, direction, transactional, started, t0, err) from None
                raise
            except MigrationTimeout as exc:
                rollback(conn)
                err3 = MigrationFailed(
                    f"migration {mig.name} ({direction}) ran longer than --migration-timeout "
                    f"{exc.seconds:g}s: {'rolled back' if transactional else NOT_ROLLED_BACK}"
                )
                self.record_failure(conn, mig, direction, transactional, started, t0, err3, notes)
                raise err3 from None
            except Interrupted as exc:  # SIGTERM / SIGINT: see runner.signals
                rollback(conn)
                exc.context = (
                    f" while running {mig.name} ({direction}): "
                    f"{'rolled back' if transactional else NOT_ROLLED_BACK}; the migration lock "
                    "is released"
                )
                if not (conn.closed or conn.broken):
                    interrupted = MigrunnerError(exc.message)
                    self.record_failure(
                        conn, mig, direction, transactional, started, t0, interrupted, notes
                    )
                raise
            except Exception as exc:
                rollback(conn)
                if is_connection_lost(exc) or conn.closed or conn.broken:
                    raise self.lock_lost(mig, direction, transactional, started, t0, exc) from None
                import psycopg

                if isinstance(exc, psycopg.Error):
                    err2 = MigrationFailed(
                        f"migration {mig.name} failed ({direction}) at commit: {first_line(exc)}"
                        f"{f' [SQLSTATE {exc.sqlstate}]' if exc.sqlstate else ''}",
                        sqlstate=exc.sqlstate,
                    )
                    self.record_failure(
                        conn, mig, direction, transactional, started, t0, err2, notes
                    )
                    raise err2 from None
                raise

    def apply_one_message(
        self,
        conn: psycopg.Connection,
        mig: Migration,
        direction: str,
        executors: Executors,
        with_ts: bool,
        durable: bool,
        lock_proof: tuple[int, int, int],
        started: datetime,
    ) -> bool:
        """Run a transactional SQL migration in ONE round trip instead of five: the session
        reset and settings, ``BEGIN``, its statements, the bookkeeping identity
        (:meth:`bookkeeping_setup`), its SequelizeMeta row, the lock check, its history row and
        ``COMMIT`` go in one simple-query message — exactly the statements of the step-by-step
        path, in the same order, in the same transaction. PostgreSQL runs a message's
        statements in order and skips the rest after an error, so nothing past a failure runs
        and nothing commits; a lost lock is an error too (see ``HistoryTable.record_sql``).

        Why: each round trip is two wake-ups of two processes; 10,000 small migrations spent
        most of their time waiting for them (1.3× dbmate's time before, see bench/README.md).

        The bookkeeping's values are literals (``E''`` strings: the same meaning whatever
        ``standard_conforming_strings`` says); its tables, functions and types are
        schema-qualified, so the migration's ``search_path`` or ``SET ROLE`` cannot move it.
        Statements are joined by a newline, ``;`` and a newline: a statement ending in a ``--``
        comment cannot swallow the separator.

        On an error the transaction is rolled back and False returned: :meth:`apply` then runs
        the migration again step by step, which names the failing statement and its line,
        retries, re-runs it outside a transaction or records the failure exactly as before (a
        failing migration's statements run twice, as they did with the batch and its replay).
        A lost connection is raised: :meth:`apply` reports it as a lost lock."""
        import psycopg

        sqlx = executors.sql
        section = sqlx.section(mig, direction)
        name = sql_literal(mig.name)
        entry = Entry(
            name=mig.name,
            direction=direction,
            outcome="applied" if direction == "up" else "reverted",
            checksum=mig.checksum,
            transactional=True,
            started_at=started,
            duration_ms=0.0,  # the server measures it: record_sql
        )
        parts = [self.session_setup(mig.name, True, durable)]
        parts += [st.sql for st in section.statements]
        if len(parts) > 1:  # marks for the heartbeat (runner/progress.py), which shows them
            parts[1] = f"{MIGRATION_MARK}\n{parts[1]}"
        parts.append(f"{BOOKKEEPING_MARK}\n{self.bookkeeping_setup()}")
        parts.append(
            self.meta.log_sql(name, with_ts) if direction == "up" else self.meta.unlog_sql(name)
        )
        parts.append(
            self.history.record_sql(entry, self.settings.identity, lock_proof, sql_literal)
        )
        parts.append("COMMIT")
        try:
            conn.execute("\n;\n".join(parts).encode())
        except psycopg.Error as exc:
            if is_connection_lost(exc) or conn.closed or conn.broken:
                raise
            rollback(conn)
            sqlx.unbatched.add(mig.path)
            return False
        return True

    def bookkeeping_setup(self) -> str:
        """Inside the migration's transaction, before SequelizeMeta and history are written."""
        timeout = int((self.settings.statement_timeout or 0) * 1000)
        return f"{BOOKKEEPING_IDENTITY}; SET LOCAL statement_timeout = '{timeout}ms'"

    def lock_lost(
        self,
        mig: Migration,
        direction: str,
        transactional: bool,
        started: datetime,
        t0: float,
        exc: BaseException,
    ) -> MigrunnerError:
        """The session holding the lock (and running the migration) ended under us: the
        server rolled the open transaction back and freed the lock. Say so, and leave a
        history row from a fresh connection (best effort: the lock is gone)."""
        why = exc.message if isinstance(exc, MigrunnerError) else first_line(exc)
        state = getattr(exc, "sqlstate", None) or ""
        if state not in LOST_BECAUSE:
            state = next((c for c, text in LOST_TEXT.items() if text in why), "")
        effect = (
            "the server rolled it back"
            if transactional
            else "it ran outside a transaction: its statements that completed stay applied, "
            "it is not recorded, and nothing more of it ran"
        )
        try:  # is the server still there? then it ended our session on purpose
            fresh: psycopg.Connection | None = connect(replace(self.settings, wait_timeout=0))
        except Exception:
            fresh = None
        err: MigrunnerError
        if fresh is not None:
            # a DBA, `lock release --force`, a migration terminating other backends, an idle
            # timeout, or node stopped because of one of these
            cause = f" ({LOST_BECAUSE[state]})" if state in LOST_BECAUSE else ""
            err = LockLost(
                f"lost the migration lock while running {mig.name} ({direction}): its session "
                f"was ended by the server{cause}: {why}; {effect}"
            )
            with fresh:
                self.record_failure(fresh, mig, direction, transactional, started, t0, err, [])
        else:  # the server or the network went away
            if not why.startswith("connection lost"):
                why = f"connection lost while running {mig.name} ({direction}): {why}"
            err = DatabaseUnavailable(f"{why}; the migration lock went with it; {effect}")
        return err

    def apply_pool(
        self,
        conn: psycopg.Connection,
        mig: Migration,
        direction: str,
        executors: Executors,
        with_ts: bool,
        lock_proof: tuple[int, int, int],
        reason: str,
    ) -> None:
        """Run a JS migration in pool mode (see the module docstring): not atomic, so its
        ``started`` row is committed first and SequelizeMeta is written only after success."""
        name = mig.name
        if self.settings.pool_mode == "never":
            refused = MigrationFailed(
                f"{name} ({direction}) would need pool mode (not atomic) because {reason}; "
                "refused by --pool-mode never (nothing of it was applied)"
            )
            started = datetime.now(UTC)
            self.record_failure(
                conn, mig, direction, False, started, time.perf_counter(), refused, []
            )
            raise refused
        self.log.warn(
            f"{name}: running it in pool mode — on real connections of its own, exactly as "
            f"sequelize-cli would, NOT atomically — because {reason}",
            migration=name,
            mode="pool",
        )
        note = f"pool mode: {reason}"
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        rollback(conn)

        def entry(outcome: str, error: str | None = None) -> Entry:
            return Entry(
                name=name,
                direction=direction,
                outcome=outcome,
                checksum=mig.checksum,
                transactional=False,
                started_at=started,
                duration_ms=(time.perf_counter() - t0) * 1000,
                note=note,
                error=error,
            )

        who = self.settings.identity
        conn.execute(self.session_setup(name, False, True).encode())
        if not guarded(lambda: self.history.record(conn, entry("started"), who, lock_proof)):
            raise LockLost(
                f"lost the migration lock before running {name} in pool mode; nothing ran"
            )
        app = f"migrunner/{who.version} pool-mode running {name}"
        try:
            # the lock lives on ``conn``: if its session ends, node is stopped at once
            with time_limit(self.settings.migration_timeout), session_watch(conn, enabled=True):
                executors.js.run_pool(
                    mig,
                    direction,
                    conn,
                    self.settings.conninfo,
                    app.encode()[:63].decode("utf-8", "ignore"),
                )
        except MigrationFailed as err:
            rollback(conn)  # finds out whether the lock's session is still there
            if conn.closed or conn.broken:  # node was stopped because the lock went with it
                raise self.lock_lost(mig, direction, False, started, t0, err) from None
            failed = MigrationFailed(
                f"{err.message} — in pool mode (not atomic): what it did before failing stays, "
                "as under sequelize-cli",
                sqlstate=err.sqlstate,
            )
            self.record_failure(conn, mig, direction, False, started, t0, failed, [note])
            raise failed from None

        def record() -> bool:
            conn.execute(b"BEGIN")
            conn.execute(self.bookkeeping_setup().encode())
            if direction == "up":
                self.meta.log(conn, name, with_ts)
            else:
                self.meta.unlog(conn, name)
            return self.history.record(
                conn, entry("applied" if direction == "up" else "reverted"), who, lock_proof
            )

        try:
            still_locked = guarded(record)
        except BaseException:
            rollback(conn)
            raise
        if not still_locked:
            rollback(conn)
            raise LockLost(
                f"lost the migration lock while running {name} in pool mode: its changes are in "
                "the database but it is NOT recorded as applied (status flags it)"
            )
        guarded(lambda: conn.execute(b"COMMIT"))
        elapsed = (time.perf_counter() - t0) * 1000
        self.progress.end(mig, direction, elapsed, transactional=False, mode="pool")

    def record_failure(
        self,
        conn: psycopg.Connection,
        mig: Migration,
        direction: str,
        transactional: bool,
        started: datetime,
        t0: float,
        err: MigrunnerError,
        notes: list[str],
    ) -> None:
        try:
            conn.execute(SESSION_RESET.encode())  # the failed migration's session state, gone
            self.history.record(
                conn,
                Entry(
                    name=mig.name,
                    direction=direction,
                    outcome="failed",
                    checksum=mig.checksum,
                    transactional=transactional,
                    started_at=started,
                    duration_ms=(time.perf_counter() - t0) * 1000,
                    note="; ".join(notes) or None,
                    # `history` prints this column: no password may be stored in it
                    error=redact(err.message, self.settings.password)[:2000],
                ),
                self.settings.identity,
            )
        except Exception as exc:  # the failure itself is what the user must see
            self.log.warn(f"could not record the failure in the history: {first_line(exc)}")

    def dry_run(
        self, conn: psycopg.Connection, plan: Plan, executors: Executors, report: RunReport
    ) -> None:
        """Run the plan in one transaction that is always rolled back.

        Faithful because PostgreSQL DDL is transactional, but it takes the same locks while it
        runs (bounded by ``statement_lock_timeout``) and advances sequences it touches.
        """
        executors.rehearsal()  # before any migration file is loaded
        if self.analysis is not None and plan.direction == "up":
            from runner.rehearsal import rehearse

            report.analysis = self.guard_dry_run(
                lambda: rehearse(self, conn, plan, executors, report, self.analysis)
            )
            return
        ms = int(self.settings.statement_lock_timeout * 1000)
        on_copy: MigrationFailed | None = None
        try:
            fresh = f"{SESSION_RESET}; BEGIN; SET LOCAL lock_timeout = '{ms}ms'"
            conn.execute(fresh.encode())
            with_ts = self.ensure_tables(conn)
            for mig in plan.steps:
                # what each migration starts from, as in a real run (DISCARD is not allowed in
                # the rehearsal's transaction; RESET is)
                conn.execute(
                    f"RESET SESSION AUTHORIZATION; RESET ALL; SET LOCAL lock_timeout = '{ms}ms'"
                )
                executor = executors.for_(mig)
                declared = executor.declared_transactional(mig, plan.direction)
                if mig.kind == "js":
                    result = self.rehearse_js(conn, mig, plan.direction, executors, declared)
                    if result.not_rehearsed and result.not_rehearsed.startswith(POOL_MODE_NOTE):
                        declared = False  # it runs outside a transaction
                else:
                    result = executor.run(
                        mig, plan.direction, conn, transactional=True, dry_run=True
                    )
                report.dry_run.append((mig, declared is not False, result))
                conn.execute(BOOKKEEPING_IDENTITY)
                if plan.direction == "up":
                    self.meta.log(conn, mig.name, with_ts)
                else:
                    self.meta.unlog(conn, mig.name)
        except Exception as exc:
            if is_connection_lost(exc):
                raise DatabaseUnavailable(
                    f"connection lost during dry run: {first_line(exc)}"
                ) from None
            needs_copy = getattr(exc, "sqlstate", None) in NEEDS_AUTOCOMMIT
            if isinstance(exc, MigrationFailed) and needs_copy and plan.direction == "up":
                on_copy = exc  # one transaction cannot, separate commits can: rehearse on a copy
            elif isinstance(exc, MigrunnerError):
                raise
            else:
                raise MigrationFailed(f"dry run failed: {first_line(exc)}") from None
        finally:
            rollback(conn)
        if on_copy is not None:
            from runner.rehearsal import AnalyzeOptions, rehearse

            report.dry_run.clear()
            try:
                done = self.guard_dry_run(
                    lambda: rehearse(self, conn, plan, executors, report, AnalyzeOptions())
                )
            except MigrunnerError as err:
                if "cannot rehearse on a copy" not in err.message:
                    raise
                raise MigrationFailed(
                    f"{on_copy.message}; the real run commits each migration on its own, but "
                    f"rehearsing it on a copy failed: {err.message}",
                    sqlstate=on_copy.sqlstate,
                ) from None
            self.log.warn(
                f"rehearsed on a schema-only copy from {done.copy['reason'] if done.copy else ''}"
                f" (the real run commits each migration on its own; on the target: "
                f"{first_line(on_copy)})"
            )

    def guard_dry_run(self, fn: Callable[[], T]) -> T:
        """The dry run's error mapping, for the analyzing rehearsal."""
        try:
            return fn()
        except Exception as exc:
            if is_connection_lost(exc):
                raise DatabaseUnavailable(
                    f"connection lost during dry run: {first_line(exc)}"
                ) from None
            if isinstance(exc, MigrunnerError):
                raise
            raise MigrationFailed(f"dry run failed: {first_line(exc)}") from None

    def rehearse_js(
        self,
        conn: psycopg.Connection,
        mig: Migration,
        direction: str,
        executors: Executors,
        declared: bool | None,
    ) -> RunResult:
        """Rehearse a JS migration inside the dry run's transaction — unless it would run in pool
        mode, which nothing can rehearse without doing it for real: then it is not run at all
        (or, found out midway, rolled back to before it) and reported as such."""
        from runner.executors import RunResult

        if declared is False:
            return RunResult(not_rehearsed=not_rehearsed("it declares useTransaction: false"))
        conn.execute(b"SAVEPOINT migrunner_rehearse_js")
        try:
            result = executors.js.run(mig, direction, conn, transactional=True, dry_run=True)
        except AtomicModeUnavailable as why:
            conn.execute(b"ROLLBACK TO SAVEPOINT migrunner_rehearse_js")
            self.log.warn(f"{mig.name}: would run in pool mode ({why.message}); not rehearsed")
            return RunResult(not_rehearsed=not_rehearsed(why.message))
        conn.execute(b"RELEASE SAVEPOINT migrunner_rehearse_js")
        return result


POOL_MODE_NOTE = "runs outside a transaction; not rehearsed"


def not_rehearsed(reason: str) -> str:
    return f"{POOL_MODE_NOTE}: pool mode, because {reason}"


def wrong_place(found: Drift, state: State) -> bool:
    """Every applied migration's file is missing: not drift but the wrong folder or database,
    which --allow-drift would only make worse (it would apply the folder on top)."""
    return bool(state.applied) and len(found.missing) == len(state.applied)


def wrong_place_message(target: str, src: Source, state: State) -> str:
    n = len(state.applied)
    shown = ", ".join(state.applied[:3]) + (f" and {n - 3} more" if n > 3 else "")
    return (
        f"applied but file missing: {shown} — that is every migration applied to {target}, "
        f"none of them is in {src.folder}: wrong --migrations-path, or the wrong database"
    )


def raise_empty(src: Source) -> None:
    from runner.errors import SourceError

    raise SourceError(
        f"no migrations found in {src.folder} (expected .js/.cjs/.mjs/.ts/.cts/.mts files, "
        "versioned .sql files or NAME/up.sql folders)"
    )


def guarded(fn: Callable[[], T]) -> T:
    """Run a database read; a lost connection or driver error becomes a migrunner error."""
    import psycopg

    try:
        return fn()
    except MigrunnerError:
        raise
    except psycopg.Error as exc:
        if is_connection_lost(exc):
            raise DatabaseUnavailable(f"connection lost: {first_line(exc)}") from None
        state = getattr(exc, "sqlstate", None)
        raise MigrunnerError(
            f"database error: {first_line(exc)}{f' [SQLSTATE {state}]' if state else ''}",
            exit_code=1 if state != "42501" else 2,
        ) from None


def rollback(conn: psycopg.Connection) -> None:
    try:
        if not conn.closed:
            conn.execute(b"ROLLBACK")
    except Exception:
        pass


def sql_literal(value: object) -> str:
    """A bookkeeping value as SQL text, for a message sent without parameters: by hand, as
    adapting each value through psycopg costs ten times more, and exact for these types."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return quote_literal(value)
    raise TypeError(f"no SQL literal for {type(value).__name__}")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def quote_literal(text: str) -> str:
    """An ``E''`` literal: the same meaning whatever ``standard_conforming_strings`` says (a
    file name with a backslash and a quote must never become SQL)."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


#: Why a session ends, by SQLSTATE, and the words PostgreSQL's message uses for it.
LOST_BECAUSE = {
    "57P01": "terminated by an administrator or `lock release --force`",
    "57P05": "idle_session_timeout",
    "25P03": "idle_in_transaction_session_timeout",
    "57P02": "server crash",
    "57P03": "server shutting down",
}
NOT_ROLLED_BACK = "it ran outside a transaction: its completed statements stay applied"
LOST_TEXT = {
    "57P01": "administrator command",
    "57P05": "idle-session timeout",
    "25P03": "idle-in-transaction timeout",
    "57P02": "crash of another server process",
    "57P03": "the database system is shutting down",
}
