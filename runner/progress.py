"""How far a run is: the ``[3/301]`` counter on each migration line, and a heartbeat while one
migration runs long.

Kept out of the migrator so its ``apply()`` only calls :meth:`Progress.begin` and
:meth:`Progress.end`. The heartbeat is one thread per run: every ``settings.heartbeat`` seconds
(default 10, ``MIGRUNNER_HEARTBEAT``) while a migration is still running it logs which
migration, for how long, and the statement its connection is executing with that statement's
own duration and wait event, read from ``pg_stat_activity``. That works the same for SQL and
JS migrations without instrumenting either executor. The heartbeat's connection is opened
only when the first heartbeat fires (a run of fast migrations never opens it) and never
touches the lock's connection, whose ``state_change`` says since when the lock is held.

Plain lines only, also on a TTY: one line per event reads the same in ``kubectl logs`` and a
terminal, and a live progress bar would need a dependency for little gain.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from runner.log import Log
    from runner.settings import Settings
    from runner.source import Migration

ACTIVITY = (
    "SELECT state, wait_event_type, wait_event, query, "
    "extract(epoch FROM clock_timestamp() - query_start) FROM pg_stat_activity WHERE pid = %s"
)


def one_line(sql: str, limit: int = 160) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Progress:
    """Counter and heartbeat for one run of ``total`` migrations.

    One heartbeat thread per run (started with the first migration, not one per migration:
    a 1,000-migration run would pay a thread start and join per migration)."""

    def __init__(self, settings: Settings, log: Log, total: int = 0) -> None:
        self.settings = settings
        self.log = log
        self.total = total
        self.index = 0
        self._cond = threading.Condition()
        self._current: tuple[str, int, float, int] | None = None  # name, pid, start, index
        self._closed = False
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection | None = None

    def counter(self, index: int | None = None) -> str:
        return f"[{self.index if index is None else index}/{self.total}]" if self.total else ""

    def begin(self, mig: Migration, direction: str, conn: psycopg.Connection) -> None:
        """A migration starts: log its line and arm the heartbeat."""
        self.index += 1
        verb = "migrating" if direction == "up" else "reverting"
        self.log.info(
            f"{self.counter()} == {mig.name}: {verb} =======".lstrip(),
            migration=mig.name,
            direction=direction,
            index=self.index,
            total=self.total,
        )
        with self._cond:
            self._current = (mig.name, conn.info.backend_pid, time.monotonic(), self.index)
            self._closed = False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="migrunner-heartbeat", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def end(self, mig: Migration, direction: str, elapsed_ms: float, **fields: Any) -> None:
        """A migration committed: disarm the heartbeat and log its line."""
        with self._cond:
            self._current = None
            self._cond.notify()
        past = "migrated" if direction == "up" else "reverted"
        self.log.info(
            f"{self.counter()} == {mig.name}: {past} ({elapsed_ms / 1000:.3f}s)".lstrip(),
            migration=mig.name,
            direction=direction,
            index=self.index,
            total=self.total,
            duration_ms=round(elapsed_ms),
            **fields,
        )

    def close(self) -> None:
        """End of the run (success or failure): stop the thread, close its connection."""
        with self._cond:
            self._current = None
            self._closed = True
            self._cond.notify()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _loop(self) -> None:
        seen: tuple[str, int, float, int] | None = None
        beats = 0
        with self._cond:
            while not self._closed:
                current = self._current
                if current is None:
                    self._cond.wait()
                    continue
                if current is not seen:
                    seen, beats = current, 0
                due = current[2] + self.settings.heartbeat * (beats + 1)
                now = time.monotonic()
                if now < due:
                    self._cond.wait(due - now)
                    continue
                beats += 1
                self._cond.release()  # the query and the log line run unlocked
                try:
                    with contextlib.suppress(Exception):  # a heartbeat must never fail a run
                        self._report(current, now - current[2])
                finally:
                    self._cond.acquire()

    def _report(self, current: tuple[str, int, float, int], elapsed: float) -> None:
        name, pid, _, index = current
        row = self._activity(pid)
        if self._current is not current:
            return  # it finished meanwhile: no stale line
        fields: dict[str, Any] = {
            "migration": name,
            "index": index,
            "total": self.total,
            "elapsed_ms": int(elapsed * 1000),
        }
        text = f"{self.counter(index)} .. {name}: still running after {elapsed:.0f}s".lstrip()
        if row is not None:
            state, wait_type, wait_event, query, seconds = row
            if state == "active" and query:
                from runner.settings import redact

                statement = redact(one_line(migration_part(str(query))), self.settings.password)
                waiting = f", waiting on {wait_type}:{wait_event}" if wait_type else ""
                text += f"; statement running for {float(seconds or 0):.0f}s{waiting}: {statement}"
                fields.update(
                    statement=statement,
                    statement_ms=int(float(seconds or 0) * 1000),
                    wait_event=f"{wait_type}:{wait_event}" if wait_type else None,
                )
            else:
                text += f"; no statement running (connection {state or 'unknown'})"
        self.log.info(text, **fields)

    def _activity(self, pid: int) -> tuple[Any, ...] | None:
        from runner.db import connect

        if self._conn is None or self._conn.closed:
            self._conn = connect(self.settings, "heartbeat")
        return self._conn.execute(ACTIVITY, (pid,)).fetchone()


#: Around a migration's statements in a migration sent as one message (Migrator.
#: apply_one_message): the heartbeat shows them, not the session reset before them.
MIGRATION_MARK = "/*migrunner:migration*/"
BOOKKEEPING_MARK = "/*migrunner:bookkeeping*/"


def migration_part(query: str) -> str:
    """The migration's own statements of a one-message migration (pg_stat_activity shows the
    first 1 KiB of the message); any other query as it is."""
    _, found, rest = query.partition(MIGRATION_MARK)
    if not found:
        return query
    return rest.partition(BOOKKEEPING_MARK)[0].strip().rstrip(";").strip()
