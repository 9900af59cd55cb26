"""Database state snapshots for "nothing changed" assertions."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql


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


@contextmanager
def connected(conn_or_url: psycopg.Connection[Any] | str) -> Iterator[psycopg.Connection[Any]]:
    """Use a connection as is, or open (and close) an autocommit one for a URL."""
    if isinstance(conn_or_url, str):
        with psycopg.connect(conn_or_url, autocommit=True) as conn:
            yield conn
    else:
        yield conn_or_url


def meta_rows(
    conn_or_url: psycopg.Connection[Any] | str,
    table: str = "SequelizeMeta",
    schema: str | None = None,
) -> tuple[str, ...]:
    """Names recorded in SequelizeMeta, sorted; ``()`` when the table does not exist (a row
    count alone would not catch a wrong name)."""
    ref = sql.Identifier(table) if schema is None else sql.Identifier(schema, table)
    with connected(conn_or_url) as conn:
        found = conn.execute("SELECT to_regclass(%s)", (ref.as_string(conn),)).fetchone()
        if not found or found[0] is None:
            return ()
        rows = conn.execute(sql.SQL("SELECT name FROM {} ORDER BY name").format(ref)).fetchall()
        return tuple(str(r[0]) for r in rows)


def exists(conn_or_url: psycopg.Connection[Any] | str, relation: str) -> bool:
    """Whether ``relation`` (as ``to_regclass`` reads it: ``schema.name`` or a search_path
    name) exists."""
    with connected(conn_or_url) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [relation]).fetchone()
        return bool(row and row[0])


BOOKKEEPING = ("-T", '"SequelizeMeta"', "-T", "migrunner_history*", "-T", "migrunner_verified*")


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
