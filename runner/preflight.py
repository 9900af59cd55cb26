"""``up --preflight SECONDS``: before the real run, make sure no old transaction holds a lock the
plan needs, so the migration does not queue the app's traffic behind it.

Which tables the plan needs is only known by running it (JS migrations build their SQL at run
time), so the preflight is an analyzing rehearsal on the target (no copy): the tables the plan
locks in SHARE UPDATE EXCLUSIVE mode or stronger, minus those it creates. Then, on a connection
of its own, it looks for sessions whose transaction is older than SECONDS holding any lock on
those tables (any lock conflicts with the ACCESS EXCLUSIVE most DDL takes; weaker needs are
judged conservatively), plus the sessions the rehearsal found blocking it. While there are any,
it waits (re-checking every second, naming them) up to ``--wait-timeout``, then refuses (exit 8).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from runner.analyze import Session, strength
from runner.errors import MigrunnerError

if TYPE_CHECKING:
    import psycopg

    from runner.log import Log
    from runner.settings import Settings

PREFLIGHT_EXIT = 8
OLD_HOLDERS = (
    "SELECT DISTINCT a.pid, a.usename, a.application_name, host(a.client_addr), a.state, "
    "EXTRACT(epoch FROM now() - a.xact_start)::float8, split_part(a.query, E'\\n', 1), "
    "n.nspname || '.' || c.relname, l.mode "
    "FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_class c ON c.oid = l.relation "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'relation' AND l.database = (SELECT oid FROM pg_catalog.pg_database "
    "WHERE datname = pg_catalog.current_database()) AND a.pid <> pg_catalog.pg_backend_pid() "
    "AND n.nspname || '.' || c.relname = ANY(%s) "
    "AND a.xact_start < now() - make_interval(secs => %s) ORDER BY 1"
)


def old_holders(conn: psycopg.Connection, relations: list[str], max_age: float) -> list[Session]:
    from runner.analyze import Lock

    out = []
    for pid, user, app, addr, state, age, query, rel, mode in conn.execute(
        OLD_HOLDERS, (relations, max_age)
    ):
        out.append(Session(pid, user, app, addr, state, age, query, waiting_for=Lock(rel, mode)))
    return out


def check(settings: Settings, log: Log, max_age: float) -> list[Session]:
    """One preflight pass: the old sessions in the way (empty: go)."""
    from runner.db import connect
    from runner.migrator import Migrator, guarded
    from runner.rehearsal import AnalyzeOptions

    migrator = Migrator(settings, log)
    migrator.analysis = AnalyzeOptions(copy_allowed=False)
    report = migrator.up(dry_run=True).analysis
    if report is None:
        return []
    needed = sorted(
        {
            lock.relation
            for m in report.migrations
            for s in m.statements
            for lock in s.locks
            if strength(lock.mode) >= strength("ShareUpdateExclusiveLock")
        }
        - report.created
    )
    blockers = [s for s in report.blockers if (s.transaction_age_s or 0) >= max_age]
    if not needed:
        return blockers
    with connect(settings, "preflight") as conn:
        holders = guarded(lambda: old_holders(conn, needed, max_age))
    seen = {s.pid for s in blockers}
    return blockers + [s for s in holders if s.pid not in seen]


def with_preflight(
    max_age: float | None, action: Callable[[Settings, Log], int]
) -> Callable[[Settings, Log], int]:
    if max_age is None:
        return action

    def run(settings: Settings, log: Log) -> int:
        deadline = time.monotonic() + settings.wait_timeout
        while True:
            found = check(settings, log, max_age)
            if not found:
                log.info(
                    f"preflight: no transaction older than {max_age:g}s holds a lock the plan needs"
                )
                return action(settings, log)
            names = "; ".join(s.describe() for s in found)
            if time.monotonic() >= deadline:
                raise MigrunnerError(
                    f"preflight: sessions older than {max_age:g}s hold locks the plan needs: "
                    f"{names} (waited {settings.wait_timeout:g}s; --wait-timeout)",
                    exit_code=PREFLIGHT_EXIT,
                )
            log.warn(f"preflight: waiting for {names}")
            time.sleep(1.0)

    return run
