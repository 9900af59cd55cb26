"""Connections: opening them with the runner's identity, waiting for the server, and turning
driver errors into migrunner errors without leaking credentials.

Connections are autocommit: the migrator writes ``BEGIN``/``COMMIT`` itself, so transactional
and non-transactional migrations use the same connection in the same way (yoyo's lesson:
explicit transaction control, savepoints where needed).
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

from runner.errors import ConfigError, DatabaseUnavailable, MigrunnerError
from runner.settings import Settings, redact

if TYPE_CHECKING:
    import psycopg

    from runner.log import Log

# SQLSTATE classes that mean "the connection is gone": retrying the statement cannot help.
CONNECTION_LOST = ("08", "57P01", "57P02", "57P03")
FATAL_AT_CONNECT = ("28", "3D000")  # bad credentials, no such database: waiting won't fix it


def connection_error(exc: Exception, settings: Settings) -> MigrunnerError:
    """Map a connect-time failure to an error with a clean one-line message."""
    raw = str(exc).strip().splitlines()
    detail = raw[-1] if raw else type(exc).__name__
    for line in raw:
        if "FATAL" in line or "failed" in line:
            detail = line
            break
    detail = redact(detail, settings.password)
    sqlstate = getattr(exc, "sqlstate", None) or ""
    text = f"cannot connect to {settings.target}: {detail}"
    if sqlstate.startswith("28") or "password authentication failed" in detail:
        return ConfigError(text + " (check DB_USER/DB_PASSWORD)")
    if sqlstate == "3D000" or "does not exist" in detail:
        return ConfigError(text)
    return DatabaseUnavailable(text)


def connect(settings: Settings, purpose: str = "") -> psycopg.Connection:
    """Open an autocommit connection. "too many clients" (53300) is transient by design here
    — N runners starting at once is the expected case — so it is retried with jittered
    backoff for up to ``wait_timeout``; every other failure is reported at once."""
    import psycopg

    kwargs: dict[str, str] = dict(settings.conninfo)
    name = settings.identity.application_name()
    if purpose:
        name = (name + " " + purpose).encode()[:63].decode("utf-8", "ignore")
    kwargs["application_name"] = name
    # Our SQL text is UTF-8 whatever the database's encoding; the server converts (a LATIN1
    # database stores 'Zürich', not 'ZÃ¼rich'). Sent in the startup packet: no round trip.
    kwargs["client_encoding"] = "UTF8"
    # A peer that vanished without closing the socket (failover, partition) is noticed within
    # about a minute instead of the kernel's two hours: the lock's session lives on it.
    for key, value in (("keepalives_idle", "30"), ("keepalives_interval", "10")):
        kwargs.setdefault(key, value)
    deadline = time.monotonic() + settings.wait_timeout
    delay = 0.05
    while True:
        try:
            conn = psycopg.connect(autocommit=True, **kwargs)  # type: ignore[arg-type]
            # Never server-side prepared: the session reset between migrations deallocates
            # everything (a migration's own PREPAREs included).
            conn.prepare_threshold = None
            return conn
        except psycopg.Error as exc:
            crowded = getattr(exc, "sqlstate", None) == "53300" or "too many clients" in str(exc)
            if not crowded or time.monotonic() + delay > deadline:
                raise connection_error(exc, settings) from None
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)


def wait_until_ready(settings: Settings, log: Log, timeout: float) -> psycopg.Connection:
    """Connect, retrying while the server is starting or unreachable, for up to ``timeout``.

    Authentication failures and a missing database end the wait at once: time won't fix them.
    """
    deadline = time.monotonic() + timeout
    delay = 0.1
    announced = False
    while True:
        try:
            return connect(settings)
        except DatabaseUnavailable as err:
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(
                    f"{err.message} (gave up after waiting {timeout:g}s)"
                ) from None
            if not announced:
                log.info(f"waiting for the database at {settings.target}: {err.message}")
                announced = True
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def own_session_settings(server_version: int) -> str:
    """What every session that takes or waits for the lock sets for itself, whatever the
    server, database or role says: a server-side idle timeout must never end the lock's
    session (it would silently hand the lock to another runner mid-migration), nor a JS
    migration that pauses between batches."""
    parts = ["SET idle_in_transaction_session_timeout = 0"]
    if server_version >= 140000:
        parts.append("SET idle_session_timeout = 0")
    return "; ".join(parts)


def is_connection_lost(exc: BaseException) -> bool:
    import psycopg

    if isinstance(exc, psycopg.OperationalError):
        state = getattr(exc, "sqlstate", None)
        return state is None or state.startswith(CONNECTION_LOST)
    return False


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str | None, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}" if schema else quote_ident(table)
