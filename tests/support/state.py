"""Database state snapshots for "nothing changed" assertions."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

import psycopg


@dataclass(frozen=True)
class Snapshot:
    schema: str  # pg_dump --schema-only, minus its per-run header noise
    meta: tuple[str, ...]  # SequelizeMeta names, or () when the table is absent
    data: str  # pg_dump --data-only of the whole database, without sequence positions
    sequences: str  # the setval() lines: a dry run may advance sequences (documented)


def dump(url: str, *flags: str) -> str:
    out = subprocess.run(
        ["pg_dump", "--no-owner", "--no-privileges", *flags, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "\n".join(
        line
        for line in out.splitlines()
        if not line.startswith(
            ("-- Dumped", "-- Started", "-- Completed", "\\restrict", "\\unrestrict")
        )
    )


def meta_rows(url: str, table: str = "SequelizeMeta") -> tuple[str, ...]:
    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (f'"{table}"',)).fetchone()
        if not exists or exists[0] is None:
            return ()
        return tuple(r[0] for r in conn.execute(f'SELECT name FROM "{table}" ORDER BY name'))


BOOKKEEPING = ("-T", '"SequelizeMeta"', "-T", "migrunner_history*")


def snapshot(url: str, app_only: bool = False) -> Snapshot:
    """``app_only``: leave out SequelizeMeta and the history table, which a run creates
    before its first migration and keeps (with a ``failed`` row) when that migration fails."""
    flags = BOOKKEEPING if app_only else ()
    data = dump(url, "--data-only", *flags).splitlines()
    setval = [line for line in data if "pg_catalog.setval(" in line]
    rest = [line for line in data if "pg_catalog.setval(" not in line]
    schema = dump(url, "--schema-only", *flags)
    return Snapshot(schema, meta_rows(url), "\n".join(rest), "\n".join(setval))


def history_rows(url: str) -> list[tuple[str, str, str]]:
    """(name, direction, outcome) of every history row, oldest first."""
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('migrunner_history')").fetchone() == (None,):
            return []
        return [
            (r[0], r[1], r[2])
            for r in conn.execute(
                "SELECT name, direction, outcome FROM migrunner_history ORDER BY id"
            )
        ]


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll a database-side predicate until true (no fixed sleeps in place of synchronisation)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def backends(url: str, app_like: str) -> list[tuple[int, str, str | None, str | None]]:
    """(pid, application_name, wait_event_type, state) of backends whose name matches."""
    with psycopg.connect(url, autocommit=True) as conn:
        return [
            (r[0], r[1], r[2], r[3])
            for r in conn.execute(
                "SELECT pid, application_name, wait_event_type, state FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE %s",
                (app_like,),
            )
        ]
