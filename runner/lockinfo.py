"""Lock inspection and forced release, for DBAs and operators (``migrunner lock ...``)."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from runner.db import connect
from runner.errors import ConfigError
from runner.lock import holder, lock_key, peers, pg_locks_ids
from runner.migrator import guarded

if TYPE_CHECKING:
    from runner.log import Log
    from runner.settings import Settings

RUNNING = re.compile(r"^migrunner/\S+ running (.+)$")


def inspect_lock(settings: Settings) -> dict[str, Any]:
    key = lock_key(settings.schema, settings.table)
    classid, objid = pg_locks_ids(key)
    with connect(settings) as conn:
        held = guarded(lambda: holder(conn, key))
        running = guarded(lambda: peers(conn, "running"))
        waiting = guarded(lambda: peers(conn, "waiting"))
        blocked_by = guarded(lambda: waits_for_table_locks(conn, running))
    migration = None
    for b in running:
        m = RUNNING.match(b.application_name or "")
        if m:
            migration = m.group(1)
    return {
        "key": key,
        "pg_locks": {"locktype": "advisory", "classid": classid, "objid": objid, "objsubid": 1},
        "held": held is not None,
        "holder": asdict(held) if held else None,
        "since": held.state_change if held else None,
        "running_migration": migration,
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
        lines.append(f"held since: {info['since']}")
        if info["running_migration"]:
            lines.append(f"running migration: {info['running_migration']}")
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

    key = lock_key(settings.schema, settings.table)
    with connect(settings) as conn:
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
        # The holder's worker connection goes too: its open migration rolls back now rather
        # than at its next commit check.
        workers = guarded(lambda: peers(conn, "running"))
        for b in workers:
            log.out(f"its worker: pid {b.pid} {b.application_name!r}: {(b.query or '')[:120]}")
        try:
            row = conn.execute("SELECT pg_terminate_backend(%s)", (held.pid,)).fetchone()
            for b in workers:
                conn.execute("SELECT pg_terminate_backend(%s)", (b.pid,))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ConfigError(
                f"not allowed to terminate backend {held.pid}: "
                f"{str(exc).strip().splitlines()[0]} (needs superuser or pg_signal_backend)"
            ) from None
        if not (row and row[0]):
            raise ConfigError(f"could not terminate backend {held.pid}")
        log.info(f"terminated backend {held.pid}; the server released its lock")
        return 0
