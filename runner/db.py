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
REPORT_EVERY = 5.0  # seconds between "waiting for the database" attempt lines


def connection_error(exc: Exception, settings: Settings) -> MigrunnerError:
    """Map a connect-time failure to an error with a clean one-line message.

    A wrong password (28P01) and a missing one (libpq's "no password supplied", which has no
    SQLSTATE) are the same mistake and get the same exit code (2, configuration), with a hint
    naming where the credentials came from; waiting never fixes either.
    """
    raw = str(exc).strip().splitlines()
    detail = raw[-1] if raw else type(exc).__name__
    for line in raw:
        if "FATAL" in line or "failed" in line:
            detail = line
            break
    detail = redact(detail, settings.password)
    sqlstate = getattr(exc, "sqlstate", None) or ""
    text = f"cannot connect to {settings.target}: {detail}"
    auth = ("password authentication failed", "no password supplied", "fe_sendauth")
    if sqlstate.startswith("28") or any(a in detail for a in auth):
        where = settings.credentials or settings.config_source or "the environment"
        return ConfigError(f"{text} (credentials from: {where})")
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
    """Connect, retrying while the server is starting or unreachable, for the full ``timeout``.

    Each attempt's ``connect_timeout`` is cut to the time left, so the last attempt ends near
    the deadline rather than after it (libpq's minimum is 2 s). An attempt line is logged every
    ``REPORT_EVERY`` seconds. Authentication failures and a missing database end the wait at
    once: time won't fix them.
    """
    import dataclasses

    started = time.monotonic()
    deadline = started + timeout
    delay = 0.1
    attempt = 0
    last_report = -REPORT_EVERY
    configured = float(settings.conninfo.get("connect_timeout") or 0) or timeout
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        bounded = max(2, int(min(configured, max(remaining, 0.0)) + 0.999))
        try:
            return connect(
                dataclasses.replace(
                    settings, conninfo={**settings.conninfo, "connect_timeout": str(bounded)}
                )
            )
        except DatabaseUnavailable as err:
            now = time.monotonic()
            if now >= deadline:
                raise DatabaseUnavailable(
                    f"{err.message} (gave up after waiting {now - started:.0f}s of "
                    f"--wait-timeout {timeout:g}s, {attempt} attempt{'s' if attempt > 1 else ''})"
                ) from None
            if now - last_report >= REPORT_EVERY:
                last_report = now
                log.info(
                    f"waiting for the database at {settings.target} (attempt {attempt}, "
                    f"{now - started:.0f}s of {timeout:g}s): {err.message}",
                    attempt=attempt,
                    waited_ms=int((now - started) * 1000),
                )
            time.sleep(max(0.0, min(delay, deadline - now)))
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
