"""Pool mode: a JS migration run exactly as sequelize-cli runs it, on real connections.

Atomic mode (:mod:`migrations_compat.bridge_exec`) multiplexes a migration's pool clients onto
the runner's one transaction. When that cannot give sequelize-cli's result — a rollback that
would discard another client's work, an isolation level the runner's transaction cannot take,
a statement that cannot run in a transaction, ``useTransaction: false`` — the migrator rolls
the attempt back and calls :func:`run_in_pool`: node builds the app's Sequelize with the app's
real ``pg`` and the runner's connection settings, and runs ``up``/``down`` with its own pool,
while the runner keeps the migration lock and its own connection idle. Nothing is atomic
then, exactly as under sequelize-cli; the migrator writes a committed "started" history row
before and SequelizeMeta plus the "applied" row after.

The settings travel on the protocol socket (never argv or the environment, which ``ps`` shows)
and are the ones the runner's connection actually used (``conn.info``), so node reaches the
same server as the same user, with TLS when the runner has it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import MigrationFailed

if TYPE_CHECKING:
    import psycopg

    from migrations_compat.bridge import NodeBridge

#: Marks the pool-mode sessions (harmless placeholder setting); it also keeps node's pg from
#: taking PGOPTIONS, where the bridge puts a lock_timeout meant for a migration's own
#: connections competing with the runner's open transaction — there is none in pool mode.
POOL_SESSION_OPTIONS = "-c migrunner.mode=pool"


def pool_connection(
    conn: psycopg.Connection[Any],
    conninfo: Mapping[str, str],
    application_name: str,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """pg connection settings equal to the runner's connection ``conn``."""
    env = os.environ if environ is None else environ
    info = conn.info
    params = info.get_parameters()
    host = conninfo.get("hostaddr") or info.host
    ssl: Any = False
    if conn.pgconn.ssl_in_use:
        mode = conninfo.get("sslmode") or env.get("PGSSLMODE") or "prefer"
        ssl = {"rejectUnauthorized": mode in ("verify-ca", "verify-full")}
        if mode == "verify-ca":
            ssl["verifyHost"] = False
        for key, name in (("ca", "sslrootcert"), ("cert", "sslcert"), ("key", "sslkey")):
            path = conninfo.get(name) or env.get("PG" + name.upper())
            if path and path != "system" and Path(path).is_file():
                ssl[key] = str(Path(path).resolve())
    # as libpq: the connection's own options (a fleet's search_path), else PGOPTIONS
    user_options = conninfo.get("options") or env.get("PGOPTIONS")
    return {
        "host": host,
        "port": info.port,
        "user": info.user,
        "password": info.password or None,
        "database": params.get("dbname") or info.dbname,
        "ssl": ssl,
        "applicationName": application_name,
        "options": f"{user_options} {POOL_SESSION_OPTIONS}"
        if user_options
        else POOL_SESSION_OPTIONS,
    }


def run_in_pool(
    bridge: NodeBridge,
    path: Path,
    direction: str,
    conn: psycopg.Connection[Any],
    connection: Mapping[str, Any],
) -> None:
    """Run ``up``/``down`` of ``path`` in pool mode; raises MigrationFailed as the bridge does.

    ``conn`` is the runner's own (idle) connection, read for the server version only.
    """
    from migrations_compat.bridge import _semver
    from migrations_compat.node_process import NodeGone

    name = path.name
    bridge._secrets.add(connection.get("password"))
    node = bridge._started()
    bridge._next_id += 1
    run_id = bridge._next_id
    bridge._current = name
    try:
        node.send(
            {
                "t": "pool",
                "id": run_id,
                "path": str(path),
                "dir": direction,
                "dbv": _semver(conn.info.server_version),
                "conn": dict(connection),
            }
        )
        while True:
            msg = node.recv()
            if msg.get("t") == "done" and msg.get("id") == run_id:
                break
            bridge._stray(node, msg)
        node.drain_output()
    except NodeGone as exc:
        tail = bridge._tail(node, exc)
        bridge.close()
        raise MigrationFailed(f"{name} ({direction}): node exited: {tail}") from None
    except BaseException:
        bridge.close()
        raise
    finally:
        bridge._current = None
    if msg.get("stuck"):
        # A connection still checked out (a transaction never ended): stop node, which closes
        # it, as sequelize-cli's exit would; the server rolls that transaction back.
        bridge.log.warn(
            f"{name}: a connection was still in use {direction}() after it finished; "
            "closed it (its open transaction, if any, was rolled back by the server)",
            migration=name,
        )
        bridge.close()
    if not msg.get("ok"):
        err = msg.get("err") or {}
        raise MigrationFailed(
            bridge._js_failure(name, direction, err), sqlstate=err.get("code") or None
        )


__all__ = ["POOL_SESSION_OPTIONS", "pool_connection", "run_in_pool"]
