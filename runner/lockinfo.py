"""Lock inspection and forced release, for DBAs and operators (``migrunner lock ...``).

Both reach only the runners of THIS lock (this database, this SequelizeMeta): the holder is
found through ``pg_locks`` by key, and it is also the session running the migration; waiters
carry the key in their ``application_name``. Another ``--table`` is another lock.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from runner.db import connect
from runner.errors import ConfigError
from runner.lock import holder, lock_key, pg_locks_ids, waiters
from runner.migrator import guarded

if TYPE_CHECKING:
    import psycopg

    from runner.log import Log
    from runner.settings import Settings

RUNNING = re.compile(r"^migrunner/\S+ running (.+)$")


def resolved_key(conn: psycopg.Connection, settings: Settings) -> int:
    """The key as runners derive it: from the schema the table resolves to (``--schema``,
    else this session's ``current_schema()``)."""
    if settings.schema:
        return lock_key(settings.schema, settings.table)
    row = guarded(lambda: conn.execute("SELECT pg_catalog.current_schema()").fetchone())
    return lock_key(row[0] if row and row[0] else None, settings.table)


def inspect_lock(settings: Settings) -> dict[str, Any]:
    with connect(settings) as conn:
        key = resolved_key(conn, settings)
        held = guarded(lambda: holder(conn, key))
        waiting = guarded(lambda: waiters(conn, key))
        now = guarded(lambda: conn.execute("SELECT pg_catalog.now()").fetchone())
        m = RUNNING.match(held.application_name or "") if held else None
        running = [held] if held and m else []
        blocked_by = guarded(lambda: waits_for_table_locks(conn, running))
    classid, objid = pg_locks_ids(key)
    migration = None
    running_for = None
    if held and m:
        migration = m.group(1)
        # the migration's transaction started with it; a non-transactional one is measured
        # from its current statement
        began = held.xact_start or held.query_start
        if began and now:
            running_for = round((now[0] - began).total_seconds(), 1)
    return {
        "key": key,
        "pg_locks": {"locktype": "advisory", "classid": classid, "objid": objid, "objsubid": 1},
        "held": held is not None,
        "holder": asdict(held) if held else None,
        # the lock is taken on connecting, or after the wait its runner logs
        "since": held.backend_start if held else None,
        "running_migration": migration,
        "running_for_s": running_for,
        "running_backends": [asdict(b) for b in running],
        "waiters": [asdict(b) for b in waiting],
        "blocked_by": blocked_by,
    }


def waits_for_table_locks(conn: Any, running: list[Any]) -> list[dict[str, Any]]:
    """Sessions holding (or queued before) a table lock the running migration waits for."""
    from runner.observe import blocking_sessions

    out = []
    for b in running:
        for s in blocking_sessions(conn, b.pid):
            row = asdict(s)
            row["waiter_pid"] = b.pid
            out.append(row)
    return out


def render_lock(info: dict[str, Any]) -> str:
    ids = info["pg_locks"]
    lines = [
        f"lock key: {info['key']}  (pg_locks: locktype=advisory classid={ids['classid']} "
        f"objid={ids['objid']} objsubid=1)"
    ]
    h = info["holder"]
    if not h:
        lines.append("state: free")
    else:
        lines.append("state: held")
        lines.append(
            f"holder: pid {h['pid']} user {h['user']} application_name {h['application_name']!r} "
            f"client {h['client_addr'] or 'local'} backend_start {h['backend_start']}"
        )
        lines.append(f"held since (its session began): {info['since']}")
        if info["running_migration"]:
            took = info.get("running_for_s")
            lines.append(
                f"running migration: {info['running_migration']}"
                + (f" (for {took:.1f}s)" if took is not None else "")
            )
        for b in info["running_backends"]:
            lines.append(f"  worker pid {b['pid']} state {b['state']}: {(b['query'] or '')[:200]}")
    for s in info.get("blocked_by") or []:
        want = s["waiting_for"] or {}
        age = s["transaction_age_s"]
        lines.append(
            f"  worker pid {s['waiter_pid']} waits for {want.get('mode')} on "
            f"{want.get('relation')}, blocked by pid {s['pid']} user {s['user']} "
            f"{s['application_name']!r} client {s['client_addr'] or 'local'} state {s['state']} "
            f"xact age {f'{age:.1f}s' if age is not None else '-'}: {s['query'] or ''}"
        )
    for w in info["waiters"]:
        lines.append(
            f"waiter: pid {w['pid']} {w['application_name']!r} client {w['client_addr'] or 'local'}"
            f" waiting since {w['backend_start']}"
        )
    if not info["waiters"]:
        lines.append("waiters: none")
    return "\n".join(lines)


def release_lock(settings: Settings, log: Log, force: bool) -> int:
    import psycopg

    with connect(settings) as conn:
        key = resolved_key(conn, settings)
        held = guarded(lambda: holder(conn, key))
        if held is None:
            log.info(f"the migration lock (key {key}) is free; nothing to release")
            return 0
        log.out(
            f"lock holder: pid {held.pid} user {held.user} {held.application_name!r} "
            f"client {held.client_addr or 'local'} since {held.state_change}"
        )
        if not force:
            raise ConfigError(
                f"refusing to terminate backend {held.pid} without --force "
                "(its running migration will be rolled back)"
            )
        if held.query and RUNNING.match(held.application_name or ""):
            log.out(f"it is running: {held.query[:120]}")
        # The holder is the session running the migration: ending it rolls the migration back
        # with it, and touches no other lock's runners.
        try:
            row = conn.execute("SELECT pg_terminate_backend(%s)", (held.pid,)).fetchone()
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ConfigError(
                f"not allowed to terminate backend {held.pid}: "
                f"{str(exc).strip().splitlines()[0]} (needs superuser or pg_signal_backend)"
            ) from None
        if not (row and row[0]):
            raise ConfigError(f"could not terminate backend {held.pid}")
        log.info(f"terminated backend {held.pid}; the server released its lock")
        return 0
