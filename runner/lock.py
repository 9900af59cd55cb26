"""The migration lock: a PostgreSQL session advisory lock, waited for by polling.

* Key: the first 8 bytes of ``sha256("migrunner:<schema>.<table>")`` of the SequelizeMeta it
  guards, as a signed bigint — stable across processes, hosts and versions (never Python's
  ``hash()``). In ``pg_locks`` it shows as ``locktype = 'advisory'``, ``classid = key >> 32``,
  ``objid = key & 0xffffffff``, ``objsubid = 1``. ``migrunner lock status`` prints all three.
* Waiting polls ``pg_try_advisory_lock`` and never blocks inside ``pg_advisory_lock``: a waiter
  blocked in a statement would deadlock with a holder running ``CREATE INDEX CONCURRENTLY``
  (which waits for every open transaction). Between polls a waiter sleeps on ``LISTEN`` so the
  holder's ``NOTIFY`` on release wakes it at once; the poll interval covers a holder that died.
* The lock lives on a dedicated connection that runs nothing else while it holds the lock, so
  its ``pg_stat_activity.state_change`` says since when the lock is held, and a holder that
  dies loses it with its connection: no stale lock, nothing to clean up by hand.
* Connections announce their role in ``application_name``: ``migrunner/<ver> <pod or host>``
  for the holder, ``... waiting ...`` for waiters, ``... running <migration>`` for the
  connection executing migrations.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runner.db import connect
from runner.errors import ConfigError, LockTimeout

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

    def describe(self) -> str:
        since = self.state_change.isoformat(timespec="seconds") if self.state_change else ""
        return (
            f"pid {self.pid} ({self.application_name or 'unknown'}"
            f"{', from ' + self.client_addr if self.client_addr else ''}"
            f"{', since ' + since if since else ''})"
        )


BACKEND_COLUMNS = (
    "a.pid, a.usename, a.application_name, host(a.client_addr), a.backend_start, a.state, "
    "a.state_change, a.query"
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


def peers(conn: psycopg.Connection, role: str) -> list[Backend]:
    """Other migrunner connections to this database announcing ``role`` (waiting|running)."""
    rows = conn.execute(
        f"SELECT {BACKEND_COLUMNS} FROM pg_stat_activity a WHERE a.datname = current_database() "
        "AND a.application_name LIKE %s AND a.pid <> pg_backend_pid() ORDER BY a.backend_start",
        (f"migrunner/% {role} %",),
    ).fetchall()
    return [Backend(*r) for r in rows]


class MigrationLock:
    """Holds the advisory lock on its own connection; a context manager."""

    poll_interval = 1.0
    report_every = 15.0

    def __init__(self, settings: Settings, log: Log) -> None:
        self.settings = settings
        self.log = log
        self.key = lock_key(settings.schema, settings.table)
        self.conn: psycopg.Connection | None = None
        self.held = False
        self.waited = 0.0

    def try_now(self) -> bool:
        """Open the lock connection and try once, without waiting; True when the lock is ours."""
        if self.conn is None:
            self.conn = connect(self.settings)
        self.held = self.held or self.try_lock(self.conn)
        return self.held

    def acquire(self, timeout: float | None = None) -> None:
        """Take the lock, polling (and sleeping on LISTEN) for up to ``timeout`` seconds."""
        timeout = self.settings.lock_timeout if timeout is None else timeout
        started = time.monotonic()
        if self.try_now():
            return
        conn = self.conn
        assert conn is not None
        ident = self.settings.identity
        conn.execute(
            "SELECT set_config('application_name', %s, false)",
            (
                f"migrunner/{ident.version} waiting {ident.where}".encode()[:63].decode(
                    errors="ignore"
                ),
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

    def proof(self) -> tuple[int, int, int]:
        """(holder pid, classid, objid): what a commit checks to prove the lock is still ours."""
        assert self.conn is not None
        return (self.conn.info.backend_pid, *pg_locks_ids(self.key))

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
        conn, self.conn = self.conn, None
        self.held = False
        if conn is None:
            return
        try:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
                conn.execute(f"NOTIFY {channel(self.key)}")
        except Exception:  # the server frees a session lock when the session ends anyway
            pass
        finally:
            conn.close()

    def __enter__(self) -> MigrationLock:
        """Releases on exit; taking the lock is explicit (``try_now`` / ``acquire``)."""
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
