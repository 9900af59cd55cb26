"""A schema-only copy of the target, for rehearsals the target cannot host.

A scratch database on the same server (``CREATE DATABASE ... TEMPLATE template0`` with the
target's encoding and locale), filled with ``pg_dump --schema-only`` of the target and dropped
afterwards. ``CREATE DATABASE ... TEMPLATE <target>`` would be cheaper but needs no one else
connected to the target — never true while migrunner itself holds the migration lock there.

What it takes on the target: pg_dump's ACCESS SHARE lock on every table for the few
milliseconds of a schema dump (bounded by ``--lock-wait-timeout`` = the statement lock
timeout), nothing else. It needs the CREATEDB privilege and a ``pg_dump`` at least as new as
the server.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from runner.db import connect, quote_ident
from runner.errors import ConfigError, MigrunnerError
from runner.settings import redact

if TYPE_CHECKING:
    from runner.settings import Settings

METHOD = "pg_dump --schema-only into a scratch database on the same server"


def dump_schema(settings: Settings) -> str:
    """The target's schema as SQL (psql meta-commands removed: we execute it ourselves)."""
    from psycopg.conninfo import make_conninfo

    exe = shutil.which("pg_dump")
    if exe is None:
        raise ConfigError(
            "cannot rehearse on a copy: pg_dump is not installed (install postgresql-client "
            "of the server's major version or newer)"
        )
    info = {k: v for k, v in settings.conninfo.items() if k != "password"}
    env = {"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "10"}
    if settings.password:
        env["PGPASSWORD"] = settings.password
    ms = max(1, int(settings.statement_lock_timeout * 1000))
    proc = subprocess.run(
        [
            exe,
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--no-comments",
            "--no-publications",
            "--no-subscriptions",
            "--no-security-labels",
            "--no-tablespaces",
            f"--lock-wait-timeout={ms}",
            "--dbname",
            make_conninfo(**info),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["pg_dump failed"]
        err = next((x for x in lines if "error:" in x), lines[-1])
        raise ConfigError(
            f"cannot rehearse on a copy: pg_dump of {settings.target} failed: "
            f"{redact(err, settings.password)}"
        )
    return "\n".join(line for line in proc.stdout.splitlines() if not line.startswith("\\"))


@contextmanager
def scratch_copy(settings: Settings) -> Iterator[tuple[Settings, dict[str, Any]]]:
    """Yield settings pointing at a fresh schema-only copy of the target; drop it afterwards."""
    import psycopg

    name = f"migrunner_rehearsal_{secrets.token_hex(5)}"
    dump = dump_schema(settings)  # first: without pg_dump, no database is created at all
    with connect(settings, "analyze copy") as admin:
        row = admin.execute(
            "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
            "WHERE datname = current_database()"
        ).fetchone()
        encoding, collate, ctype = row if row else ("UTF8", "C", "C")
        try:
            admin.execute(
                f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0 ENCODING "
                f"'{encoding}' LC_COLLATE '{collate}' LC_CTYPE '{ctype}'"
            )
        except psycopg.Error as exc:
            raise ConfigError(
                "cannot rehearse on a copy: CREATE DATABASE failed on "
                f"{settings.target}: {str(exc).strip().splitlines()[0]} "
                "(the role needs CREATEDB)"
            ) from None
    try:
        info = {**settings.conninfo, "dbname": name}
        target = settings.target.rsplit("/", 1)[0] + "/" + name
        copy = replace(settings, conninfo=info, target=target)
        with connect(copy, "analyze copy") as conn:
            try:
                conn.execute(dump.encode())
            except psycopg.Error as exc:
                raise MigrunnerError(
                    "cannot rehearse on a copy: restoring the target's schema failed: "
                    f"{str(exc).strip().splitlines()[0]}"
                ) from None
        yield copy, {"database": name, "method": METHOD}
    finally:
        try:
            with connect(settings, "analyze copy") as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        except Exception:
            pass
