"""The migration lock: a PostgreSQL session advisory lock, waited for by polling.

* Key: the first 8 bytes of ``sha256("migrunner:<schema>.<table>")`` of the SequelizeMeta it
  guards, as a signed bigint — stable across processes, hosts and versions (never Python's
  ``hash()``). ``<schema>`` is the schema the table is actually in: ``--schema``, else the
  session's ``current_schema()`` resolved once at start (so ``--schema app`` and a role whose
  ``search_path`` leads to ``app`` share one lock). In ``pg_locks`` it shows as
  ``locktype = 'advisory'``, ``classid = key >> 32``, ``objid = key & 0xffffffff``,
  ``objsubid = 1``. ``migrunner lock status`` prints all three.
* Waiting polls ``pg_try_advisory_lock`` and never blocks inside ``pg_advisory_lock``: a waiter
  blocked in a statement would deadlock with a holder running ``CREATE INDEX CONCURRENTLY``
  (which waits for every open transaction). Between polls a waiter sleeps on ``LISTEN`` so the
  holder's ``NOTIFY`` on release wakes it at once; the poll interval covers a holder that died.
* The lock is held by the very session that runs the migrations. "A runner without its lock
  never commits" is then true by construction: whoever ends the lock's session (``lock release
  --force``, a DBA, an idle timeout, a migration that terminates other backends) ends the
  migration's transaction with it, before or during its COMMIT, and the server rolls it back.
  There is no second connection whose loss the worker would have to notice in time.
* Connections announce their role in ``application_name``: ``migrunner/<ver> <pod or host>``
  for the holder between migrations, ``... waiting <key8> <pod or host>`` for waiters (``key8``:
  the low 32 bits of the key in hex, so a DBA tool can tell which lock they wait for),
  ``... running <migration>`` while the holder executes a migration.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runner.db import is_connection_lost, own_session_settings
from runner.errors import ConfigError, DatabaseUnavailable, LockTimeout
from runner.signals import Interrupted

if TYPE_CHECKING:
    import psycopg

    from runner.log import Log
    from runner.settings import Settings


def lock_key(schema: str | None, table: str) -> int:
    digest = hashlib.sha256(f"migrunner:{schema or 'public'}.{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def pg_locks_ids(key: int) -> tuple[int, int]:
    """(classid, objid) under which ``pg_locks`` shows a bigint advisory key."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


def channel(key: int) -> str:
    return f"migrunner_lock_{key & 0xFFFFFFFFFFFFFFFF:016x}"


@dataclass(frozen=True)
class Backend:
    pid: int
    user: str | None
    application_name: str | None
    client_addr: str | None
    backend_start: datetime | None
    state: str | None
    state_change: datetime | None
    query: str | None
    xact_start: datetime | None = None
    query_start: datetime | None = None

    def describe(self) -> str:
        since = self.state_change.isoformat(timespec="seconds") if self.state_change else ""
        return (
            f"pid {self.pid} ({self.application_name or 'unknown'}"
            f"{', from ' + self.client_addr if self.client_addr else ''}"
            f"{', since ' + since if since else ''})"
        )


BACKEND_COLUMNS = (
    "a.pid, a.usename, a.application_name, host(a.client_addr), a.backend_start, a.state, "
    "a.state_change, a.query, a.xact_start, a.query_start"
)


def holder(conn: psycopg.Connection, key: int) -> Backend | None:
    classid, objid = pg_locks_ids(key)
    row = conn.execute(
        f"SELECT {BACKEND_COLUMNS} FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::oid "
        "AND l.objid = %s::oid AND l.objsubid = 1 AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())",
        (classid, objid),
    ).fetchone()
    return Backend(*row) if row else None


def waiters(conn: psycopg.Connection, key: int) -> list[Backend]:
    """Runners of this database polling for this lock (not another ``--table``'s)."""
    rows = conn.execute(
        f"SELECT {BACKEND_COLUMNS} FROM pg_stat_activity a WHERE a.datname = current_database() "
        "AND a.application_name LIKE %s AND a.pid <> pg_backend_pid() ORDER BY a.backend_start",
        (f"migrunner/% waiting {key_tag(key)} %",),
    ).fetchall()
    return [Backend(*r) for r in rows]


def key_tag(key: int) -> str:
    """The 8 hex digits of a key that waiters put in their application_name."""
    return f"{key & 0xFFFFFFFF:08x}"


class MigrationLock:
    """The advisory lock, taken on the connection that will run the migrations; a context
    manager that releases it (the connection itself belongs to the caller)."""

    poll_interval = 1.0
    report_every = 15.0

    def __init__(self, settings: Settings, log: Log) -> None:
        self.settings = settings
        self.log = log
        self.key = lock_key(settings.schema, settings.table)
        self.conn: psycopg.Connection | None = None
        self.held = False
        self.waited = 0.0

    def try_now(self, conn: psycopg.Connection) -> bool:
        """Try once, without waiting, on ``conn``; True when the lock is ours."""
        self.conn = conn
        conn.execute(own_session_settings(conn.info.server_version).encode())
        self.held = self.held or self.try_lock(conn)
        return self.held

    def acquire(self, conn: psycopg.Connection, timeout: float | None = None) -> None:
        """Take the lock on ``conn``, polling (sleeping on LISTEN) for up to ``timeout`` s.

        A waiter whose connection drops (server restart, failover, terminated backend) stops
        with :class:`DatabaseUnavailable` (exit 5): it held nothing, so nothing is lost."""
        import psycopg

        try:
            self._acquire(conn, timeout)
        except Interrupted as exc:
            exc.context = " while waiting for the migration lock; nothing ran"
            raise
        except psycopg.Error as exc:
            if is_connection_lost(exc) or conn.closed or conn.broken:
                raise DatabaseUnavailable(
                    f"lost the connection while waiting for the migration lock (key "
                    f"{self.key}): {first_line(exc)}; nothing ran"
                ) from None
            raise DatabaseUnavailable(
                f"database error while waiting for the migration lock: {first_line(exc)}"
            ) from None

    def _acquire(self, conn: psycopg.Connection, timeout: float | None) -> None:
        timeout = self.settings.lock_timeout if timeout is None else timeout
        started = time.monotonic()
        if self.try_now(conn):
            return
        ident = self.settings.identity
        conn.execute(
            "SELECT set_config('application_name', %s, false)",
            (
                f"migrunner/{ident.version} waiting {key_tag(self.key)} {ident.where}".encode()[
                    :63
                ].decode(errors="ignore"),
            ),
        )
        conn.execute(f"LISTEN {channel(self.key)}")
        last_report = -self.report_every
        while True:
            if self.try_lock(conn):
                break
            now = time.monotonic()
            remaining = started + timeout - now
            current = holder(conn, self.key)
            if remaining <= 0:
                who = current.describe() if current else "a backend that just released it"
                raise LockTimeout(
                    f"could not take the migration lock (key {self.key}) within {timeout:g}s: "
                    f"held by {who}"
                )
            if now - last_report >= self.report_every:
                last_report = now
                self.log.info(
                    "waiting for the migration lock held by "
                    + (current.describe() if current else "another runner"),
                    lock_key=self.key,
                    holder_pid=current.pid if current else None,
                )
            for _ in conn.notifies(timeout=min(remaining, self.poll_interval), stop_after=1):
                pass
        conn.execute(f"UNLISTEN {channel(self.key)}")
        conn.execute(
            "SELECT set_config('application_name', %s, false)",
            (ident.application_name(),),
        )
        self.held = True
        self.waited = time.monotonic() - started
        self.log.info(
            f"took the migration lock after waiting {self.waited:.1f}s", lock_key=self.key
        )

    def try_lock(self, conn: psycopg.Connection) -> bool:
        row = conn.execute(
            "SELECT pg_try_advisory_lock(%s), pg_backend_pid()", (self.key,)
        ).fetchone()
        if row and row[1] != conn.info.backend_pid:
            # The server process answering is not the one we connected to: a pooler such as
            # PgBouncer sits in between, and a session lock would not protect anything.
            if row[0]:
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            raise ConfigError(
                "the connection goes through a connection pooler (server pid "
                f"{row[1]} != connected pid {conn.info.backend_pid}): a session advisory lock "
                "is unsafe there; give migrunner a direct URL (--direct-url or "
                "MIGRUNNER_DIRECT_URL)"
            )
        return bool(row and row[0])

    def release(self) -> None:
        """Unlock and wake the waiters; the caller closes the connection (which would free
        the lock anyway)."""
        conn, self.conn = self.conn, None
        held, self.held = self.held, False
        if conn is None or not held:
            return
        try:
            if not conn.closed and not conn.broken:
                if conn.info.transaction_status != 0:  # never unlock from inside a transaction
                    conn.execute(b"ROLLBACK")
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
                conn.execute(f"NOTIFY {channel(self.key)}")
        except Exception:  # the server frees a session lock when the session ends anyway
            pass

    def __enter__(self) -> MigrationLock:
        """Releases on exit; taking the lock is explicit (``try_now`` / ``acquire``)."""
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
