"""Observing a rehearsal on the database (the I/O half of ``--analyze``).

After every statement the executors call :class:`Observer` with the statement, the connection
it ran on, its command tag and its duration. The observer then asks the same backend, inside the
same transaction:

* ``pg_locks`` of ``pg_backend_pid()``: the table locks it holds. Locks last until commit, so a
  statement's locks are those held now and not before it (per relation and mode). A lock an
  earlier pending migration of the same rehearsal already took is held already, and so is not
  seen again: the rehearsal is one transaction where the real run commits each migration.
* ``pg_class.relfilenode`` of every user table: a table whose file node changed was rewritten.

:class:`BlockerWatch` polls from a second connection while the rehearsal runs and, when the
rehearsing backend waits for a lock, remembers who blocks it (``pg_blocking_pids``: the sessions
holding a conflicting lock and those queued before it), so a lock timeout can name them.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from runner.analyze import Lock, MigrationObs, Session, StatementObs, strength

if TYPE_CHECKING:
    import psycopg

    from runner.settings import Settings

_USER_REL = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)'"
)
#: One round trip: the locks this backend holds on user tables, and every user table's file node.
SNAPSHOT = (
    "SELECT 'L', c.oid, n.nspname || '.' || c.relname, l.mode "
    "FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_class c ON c.oid = l.relation "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE l.pid = pg_catalog.pg_backend_pid() AND l.locktype = 'relation' AND l.granted "
    "AND l.database = (SELECT oid FROM pg_catalog.pg_database "
    "WHERE datname = pg_catalog.current_database()) "
    f"AND c.relkind IN ('r', 'p', 'm', 'f') AND {_USER_REL} "
    "UNION ALL "
    "SELECT 'F', c.oid, n.nspname || '.' || c.relname, c.relfilenode::text "
    "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    f"WHERE c.relkind IN ('r', 'm') AND {_USER_REL}"
)
CHECKS = (
    "SELECT n.nspname || '.' || c.relname, pg_catalog.pg_get_constraintdef(k.oid) "
    "FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE k.contype = 'c' AND k.convalidated AND n.nspname || '.' || c.relname = ANY(%s)"
)
ALL_RELATIONS = (
    "SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    f"WHERE c.relkind IN ('r', 'p', 'm', 'f') AND {_USER_REL}"
)


def command_rows(tag: str | None) -> int | None:
    """Rows a statement affected, from its command tag (``UPDATE 5``, ``INSERT 0 5``...)."""
    if not tag:
        return None
    parts = tag.split()
    if parts[0] in ("INSERT", "UPDATE", "DELETE", "SELECT", "COPY", "MERGE", "FETCH", "MOVE"):
        try:
            return int(parts[-1])
        except ValueError:
            return None
    return None


class Observer:
    """Collects :class:`MigrationObs` for the migrations it is told about."""

    def __init__(self) -> None:
        self.migrations: list[MigrationObs] = []
        self.current: MigrationObs | None = None
        self.where = "target"
        self._locks: set[tuple[int, str]] = set()
        self._files: dict[int, str] = {}
        self._names: dict[int, str] = {}

    def baseline(self, conn: psycopg.Connection) -> set[str]:
        """Take the starting snapshot; returns the user relations that exist now."""
        self._snapshot(conn)
        return {r[0] for r in conn.execute(ALL_RELATIONS.encode())}

    def resync(self, conn: psycopg.Connection) -> None:
        """Re-read the state after statements that are not the migrations' own (bookkeeping)."""
        self._snapshot(conn)

    def begin(
        self,
        name: str,
        transactional: bool,
        where: str,
        note: str | None = None,
        fresh: bool = False,
    ) -> None:
        """Start a migration; ``fresh``: the previous one committed, so it holds no lock."""
        if fresh:
            self._locks = set()
        self.current = MigrationObs(name, where, transactional, time.perf_counter(), note=note)
        self.migrations.append(self.current)

    def end(self) -> None:
        if self.current is not None:
            self.current.ended = time.perf_counter()
        self.current = None

    def discard(self) -> MigrationObs | None:
        """Forget the current migration (it will be observed again, elsewhere or otherwise)."""
        mig = self.current
        if mig is not None and self.migrations and self.migrations[-1] is mig:
            self.migrations.pop()
        self.current = None
        return mig

    def __call__(self, sql: str, conn: psycopg.Connection, tag: str | None, seconds: float) -> None:
        mig = self.current
        if mig is None:
            return
        now = time.perf_counter()
        before_locks, before_files = self._locks, self._files
        self._snapshot(conn)
        new = sorted(self._locks - before_locks, key=lambda x: -strength(x[1]))
        names = self._names
        locks = [Lock(names[oid], mode) for oid, mode in new]
        rewrites = sorted(
            names[oid]
            for oid, node in self._files.items()
            if oid in before_files and before_files[oid] != node
        )
        checks: dict[str, list[str]] = {}
        if "NOT NULL" in sql.upper() and self._locks:
            rels = sorted({names[oid] for oid, _ in self._locks})
            for rel, definition in conn.execute(CHECKS, (rels,)):
                checks.setdefault(rel, []).append(definition)
        mig.statements.append(
            StatementObs(
                migration=mig.name,
                sql=sql,
                locks=locks,
                rewrites=rewrites,
                rows=command_rows(tag),
                duration_ms=seconds * 1000,
                started=now - seconds,
                where=mig.where,
                transactional=mig.transactional,
                checks=checks,
                held=[Lock(names[oid], mode) for oid, mode in sorted(self._locks)],
            )
        )

    def _snapshot(self, conn: psycopg.Connection) -> None:
        locks: set[tuple[int, str]] = set()
        files: dict[int, str] = {}
        names: dict[int, str] = {}
        for kind, oid, name, value in conn.execute(SNAPSHOT.encode()):
            names[oid] = name
            if kind == "L":
                locks.add((oid, value))
            else:
                files[oid] = value
        self._locks, self._files, self._names = locks, files, names


def count_rows(
    conn: psycopg.Connection, relations: set[str], cap: int, estimate_only: bool
) -> dict[str, int]:
    """Rows of each table, counted up to ``cap`` (cheap on any size), or from statistics.

    Counting reads through the rehearsal's own snapshot; ``estimate_only`` takes no lock at
    all (``reltuples`` / ``n_live_tup``), for ``--on-copy``, which must not touch the target.
    """
    from psycopg import sql

    out: dict[str, int] = {}
    for rel in sorted(relations):
        schema, _, table = rel.partition(".")
        if estimate_only:
            row = conn.execute(
                "SELECT GREATEST(c.reltuples, 0, COALESCE(s.n_live_tup, 0))::bigint "
                "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                "ON n.oid = c.relnamespace LEFT JOIN pg_catalog.pg_stat_all_tables s "
                "ON s.relid = c.oid WHERE n.nspname = %s AND c.relname = %s",
                (schema, table),
            ).fetchone()
        else:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM (SELECT FROM {}.{} LIMIT {}) s").format(
                    sql.Identifier(schema), sql.Identifier(table), sql.Literal(max(cap, 1))
                )
            ).fetchone()
        out[rel] = int(row[0]) if row else 0
    return out


SESSION_COLUMNS = (
    "a.pid, a.usename, a.application_name, host(a.client_addr), a.state, "
    "EXTRACT(epoch FROM now() - a.xact_start)::float8, split_part(a.query, E'\\n', 1)"
)


def blocking_sessions(conn: psycopg.Connection, pid: int) -> list[Session]:
    """Who holds or is queued before the lock ``pid`` waits for (empty when it waits for none)."""
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname, l.mode, pg_catalog.pg_blocking_pids(l.pid) "
        "FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_class c ON c.oid = l.relation "
        "LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE l.pid = %s AND NOT l.granted",
        (pid,),
    ).fetchall()
    out: list[Session] = []
    for relation, mode, pids in rows:
        if not pids:
            continue
        want = Lock(relation or "?", mode)
        for r in conn.execute(
            f"SELECT {SESSION_COLUMNS} FROM pg_catalog.pg_stat_activity a "
            "WHERE a.pid = ANY(%s) ORDER BY a.xact_start NULLS LAST, a.pid",
            (list(pids),),
        ):
            pid_, user, app, addr, state, age, query = r
            out.append(Session(pid_, user, app, addr, state, age, query, waiting_for=want))
    return out


class BlockerWatch:
    """Polls, from its own connection, whether the rehearsing backend waits for a lock.

    Polling (every ``interval`` s) rather than asking after the fact: once the statement has
    timed out its wait is gone, and with it the only record of whom it waited for.
    """

    def __init__(self, settings: Settings, pid: int, interval: float = 0.05) -> None:
        self.settings = settings
        self.pid = pid
        self.interval = interval
        self.seen: list[Session] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None

    def __enter__(self) -> BlockerWatch:
        from runner.db import connect

        self._conn = connect(self.settings, "analyze watch")
        self._thread = threading.Thread(target=self._run, name="blocker-watch", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                found = blocking_sessions(self._conn, self.pid)
            except Exception:
                return  # the watch is best effort: the rehearsal itself reports its failure
            if found:
                self.seen = found
            self._stop.wait(self.interval)

    def take(self) -> list[Session]:
        seen, self.seen = self.seen, []
        return seen

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
