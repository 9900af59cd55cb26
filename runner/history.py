"""migrunner's own history table: who applied or reverted what, when, how, with what outcome.

One row per attempt that ended (applied, reverted, failed). Success rows are written inside the
migration's own transaction, so a row exists exactly when the change committed; failure rows
are written after the rollback, in their own transaction. A migration run in pool mode (on real
connections, not atomic) also gets a ``started`` row, committed before it begins: if the
runner dies midway, that row stays the migration's latest, and ``status`` flags it.

The table lives next to SequelizeMeta (same schema) and is keyed by the SequelizeMeta it
belongs to, so two apps sharing a database keep separate histories. sequelize-cli never sees it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runner.db import qualified
from runner.settings import Identity

if TYPE_CHECKING:
    import psycopg

HISTORY_TABLE = "migrunner_history"
OUTCOMES = "outcome IN ('applied', 'reverted', 'failed', 'started')"


@dataclass(frozen=True)
class Entry:
    name: str
    direction: str  # up | down
    outcome: str  # applied | reverted | failed | started (pool mode, before it runs)
    checksum: str | None
    transactional: bool
    started_at: datetime
    duration_ms: float
    attempts: int = 1
    note: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class HistoryTable:
    storage: str  # the SequelizeMeta this history belongs to, as a quoted qualified name
    schema: str | None = None

    @property
    def ref(self) -> str:
        return qualified(self.schema, HISTORY_TABLE)

    def create_sql(self) -> str:
        return f"""CREATE TABLE IF NOT EXISTS {self.ref} (
    id bigserial PRIMARY KEY,
    storage_table text NOT NULL,
    name varchar(255) NOT NULL,
    direction text NOT NULL CHECK (direction IN ('up', 'down')),
    outcome text NOT NULL CONSTRAINT migrunner_history_outcome_check CHECK ({OUTCOMES}),
    checksum text,
    transactional boolean NOT NULL,
    attempts integer NOT NULL DEFAULT 1,
    note text,
    error text,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    duration_ms double precision NOT NULL,
    runner_host text,
    runner_pod text,
    runner_version text
)"""

    def ensure(self, conn: psycopg.Connection) -> None:
        conn.execute(self.create_sql() + ";\n" + self.upgrade_sql())

    def upgrade_sql(self) -> str:
        """A table made by an earlier version lacks the ``started`` outcome: widen its check
        (once; the condition makes later runs a catalog read)."""
        literal = "'" + self.ref.replace("'", "''") + "'"
        return f"""DO $migrunner$ BEGIN
IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {literal}::regclass
           AND conname = 'migrunner_history_outcome_check'
           AND pg_get_constraintdef(oid) NOT LIKE '%started%') THEN
  ALTER TABLE {self.ref} DROP CONSTRAINT migrunner_history_outcome_check,
    ADD CONSTRAINT migrunner_history_outcome_check CHECK ({OUTCOMES});
END IF;
END $migrunner$"""

    def unfinished(self, conn: psycopg.Connection) -> list[str]:
        """Migrations whose latest history row is ``started``: a pool-mode run that never
        finished (still running, or the runner died: possibly partly applied)."""
        rows = conn.execute(self.unfinished_sql("%s"), (self.storage, self.storage))
        return [r[0] for r in rows]

    def unfinished_sql(self, placeholder: str) -> str:
        """The query of :meth:`unfinished` (``placeholder`` twice): only names that have a
        ``started`` row are sorted, so with none (the usual case) it is one cheap scan, not a
        sort of the whole history (≈ 45 ms with 10,000 rows)."""
        return (
            f"SELECT name FROM (SELECT DISTINCT ON (name) name, outcome FROM {self.ref} "
            f"WHERE storage_table = {placeholder} AND name IN (SELECT name FROM {self.ref} "
            f"WHERE storage_table = {placeholder} AND outcome = 'started') "
            "ORDER BY name, id DESC) latest WHERE outcome = 'started' ORDER BY name"
        )

    def exists(self, conn: psycopg.Connection) -> bool:
        row = conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (self.ref,)).fetchone()
        return bool(row and row[0])

    def _leading(self, entry: Entry) -> tuple[object, ...]:
        """The row's values up to ``started_at``, in :meth:`_insert_columns` order."""
        return (
            self.storage,
            entry.name,
            entry.direction,
            entry.outcome,
            entry.checksum,
            entry.transactional,
            entry.attempts,
            entry.note,
            entry.error,
        )

    def _insert_columns(self) -> str:
        return (
            f"INSERT INTO {self.ref} (storage_table, name, direction, outcome, checksum, "
            "transactional, attempts, note, error, started_at, duration_ms, runner_host, "
            "runner_pod, runner_version) "
        )

    def record(
        self,
        conn: psycopg.Connection,
        entry: Entry,
        who: Identity,
        lock: tuple[int, int, int] | None = None,
    ) -> bool:
        """Insert the row; with ``lock`` = (holder pid, classid, objid), only while that
        backend still holds the migration lock. Returns whether the row was written, so a
        runner whose lock was taken away (``lock release --force``) cannot commit — at no cost
        of an extra round trip."""
        values = (
            *self._leading(entry),
            entry.started_at,
            entry.duration_ms,
            who.host,
            who.pod_ref,
            who.version,
        )
        columns = self._insert_columns()
        if lock is None:
            cur = conn.execute(
                columns + "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", values
            )
        else:
            cur = conn.execute(
                columns + "SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s "
                "WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_locks "
                "WHERE pid = %s AND locktype = 'advisory' "
                "AND granted AND classid = %s::oid AND objid = %s::oid AND objsubid = 1)",
                (*values, *lock),
            )
        return cur.rowcount == 1

    def record_sql(
        self,
        entry: Entry,
        who: Identity,
        lock: tuple[int, int, int],
        literal: Callable[[object], str],
    ) -> str:
        """:meth:`record` with its lock check, as plain statements with every value quoted,
        for a migration sent to the server as one message (``Migrator.apply_one_message``).

        ``started_at`` is the client's, as in :meth:`record`; ``duration_ms`` is the server's
        time from the message's arrival (``statement_timestamp()``) to this statement. A lost
        lock cannot silently skip the row (nobody would see a rowcount inside a message): the
        check divides by the number of matching locks, so a missing lock is SQLSTATE 22012,
        which aborts the rest of the message, ``COMMIT`` included."""
        values = ", ".join(
            literal(v) for v in (*self._leading(entry), entry.started_at.isoformat())
        )
        who_values = ", ".join(literal(v) for v in (who.host, who.pod_ref, who.version))
        pid, classid, objid = (int(x) for x in lock)
        return (
            "SELECT 1 / (SELECT pg_catalog.count(*)::pg_catalog.int4 FROM pg_catalog.pg_locks "
            f"WHERE pid = {pid} AND locktype = 'advisory' AND granted "
            f"AND classid = {classid}::pg_catalog.oid AND objid = {objid}::pg_catalog.oid "
            "AND objsubid = 1);\n"
            f"{self._insert_columns()}VALUES ({values}, "
            "pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() - "
            "pg_catalog.statement_timestamp()) * 1000, "
            f"{who_values})"
        )

    def applied_checksums(self, conn: psycopg.Connection) -> dict[str, str]:
        """name → checksum of the latest successful ``up`` (for drift detection)."""
        rows = conn.execute(self.checksums_sql("%s"), (self.storage,))
        return {r[0]: r[1] for r in rows if r[1]}

    def checksums_sql(self, placeholder: str) -> str:
        """The query of :meth:`applied_checksums`, the storage table as ``placeholder``."""
        return (
            f"SELECT DISTINCT ON (name) name, checksum FROM {self.ref} "
            f"WHERE storage_table = {placeholder} AND direction = 'up' AND outcome = 'applied' "
            "ORDER BY name, id DESC"
        )

    def recent(self, conn: psycopg.Connection, limit: int) -> list[Mapping[str, Any]]:
        """Latest rows first, for ``migrunner history``: one fixed SELECT, so plain SQL (the
        project dropped SQLAlchemy, which only ever built this query; README "Dependencies")."""
        cur = conn.execute(
            f"SELECT {', '.join(RECENT_COLUMNS)} FROM {self.ref} "
            "WHERE storage_table = %s ORDER BY id DESC LIMIT %s",
            (self.storage, limit),
        )
        return [dict(zip(RECENT_COLUMNS, row, strict=True)) for row in cur]


RECENT_COLUMNS = (
    "id",
    "storage_table",
    "name",
    "direction",
    "outcome",
    "checksum",
    "transactional",
    "attempts",
    "note",
    "error",
    "started_at",
    "finished_at",
    "duration_ms",
    "runner_host",
    "runner_pod",
    "runner_version",
)
