"""Where the tests find a real PostgreSQL, and per-test scratch databases.

Order (DESIGN.md): ``MIGRUNNER_TEST_DATABASE_URL``; else testcontainers when a Docker engine
answers; else the local server at ``postgresql://postgres@127.0.0.1:5432/postgres`` when it
accepts a connection; else a private server from the ``migrunner[embedded]`` extra (so the suite
runs on a machine with Python and node but no PostgreSQL). ``MIGRUNNER_TEST_SERVER=embedded``
(or ``local``, ``docker``) forces one source, e.g. for CI's embedded step.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:
        return False


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def local_answers(url: str = LOCAL_URL) -> bool:
    try:
        psycopg.connect(url, connect_timeout=3).close()
        return True
    except psycopg.Error:
        return False


def server_source(environ: dict[str, str] | None = None) -> str:
    """Which source :func:`server_url` uses: url, docker, local or embedded."""
    env = dict(os.environ) if environ is None else environ
    forced = env.get("MIGRUNNER_TEST_SERVER", "")
    if forced:
        if forced not in ("docker", "local", "embedded"):
            raise ValueError(
                f"MIGRUNNER_TEST_SERVER={forced!r}: expected docker, local or embedded"
            )
        return forced
    if env.get("MIGRUNNER_TEST_DATABASE_URL"):
        return "url"
    if docker_answers():
        return "docker"
    if local_answers():
        return "local"
    from runner.embedded import available

    return "embedded" if available() else "local"  # "local" then fails with its own error


#: Client programs the tests run by name; they must match the server's major version.
CLIENT_TOOLS = ("pg_dump", "pg_dumpall", "pg_restore", "psql", "pg_isready")


@contextmanager
def client_tools_first() -> Iterator[None]:
    """Put the embedded wheel's client tools (only those: its server is built without
    OpenSSL, so tests that start their own TLS server keep finding the system's initdb and
    pg_ctl) first on PATH for the session; a machine without PostgreSQL has none otherwise."""
    import tempfile

    from runner.embedded import binaries

    with tempfile.TemporaryDirectory(prefix="migrunner-pgtools-") as tools:
        for name in CLIENT_TOOLS:
            if (binaries() / name).is_file():
                os.symlink(binaries() / name, os.path.join(tools, name))
        before = os.environ.get("PATH", "")
        os.environ["PATH"] = os.pathsep.join([tools, before])
        try:
            yield
        finally:
            os.environ["PATH"] = before


@contextmanager
def server_url() -> Iterator[str]:
    source = server_source()
    if source == "url":
        yield os.environ["MIGRUNNER_TEST_DATABASE_URL"]
    elif source == "docker":
        from testcontainers.postgres import PostgresContainer  # type: ignore[import-untyped]

        with PostgresContainer("postgres:15", driver=None) as pg:
            yield pg.get_connection_url()
    elif source == "embedded":
        from runner.embedded import embedded_server

        with embedded_server() as server, client_tools_first():
            yield server.url
    else:
        yield LOCAL_URL


def create_database(server: str, prefix: str = "mrt", template: str | None = None) -> str:
    """A new database with a unique name; a copy of ``template`` (a database URL or name, with
    no session connected to it) when given."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        source = urlsplit(template).path.lstrip("/") if "://" in template else template
        query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(source))
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(query)
    return with_database(server, name)


def drop_database(server: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


_dropper: ThreadPoolExecutor | None = None
_drops: list[Future[None]] = []


def drop_database_soon(server: str, url: str) -> None:
    """Drop in the background: DROP DATABASE waits until every backend of the server has
    acknowledged it (seconds on a busy shared server), time the next test can use.
    :func:`finish_drops` waits for them all (at the end of the session)."""
    global _dropper
    if _dropper is None:
        _dropper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dropdb")
    _drops.append(_dropper.submit(drop_database, server, url))


def finish_drops() -> None:
    """Wait for the background drops; the first failure is raised."""
    while _drops:
        _drops.pop(0).result()


def url_parts(url: str) -> dict[str, str]:
    """DB_* variables as the Kubernetes Job passes them, for the same database."""
    p = urlsplit(url)
    return {
        "DB_HOST": p.hostname or "127.0.0.1",
        "DB_PORT": str(p.port or 5432),
        "DB_NAME": p.path.lstrip("/"),
        "DB_USER": p.username or "postgres",
        "DB_PASSWORD": p.password or "",
    }
