"""Where the tests find a real PostgreSQL, and per-test scratch databases.

Order (DESIGN.md): ``MIGRUNNER_TEST_DATABASE_URL``; else testcontainers when a Docker engine
answers; else the local server at ``postgresql://postgres@127.0.0.1:5432/postgres``.
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


@contextmanager
def server_url() -> Iterator[str]:
    explicit = os.environ.get("MIGRUNNER_TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    if docker_answers():
        from testcontainers.postgres import PostgresContainer  # type: ignore[import-untyped]

        with PostgresContainer("postgres:15", driver=None) as pg:
            yield pg.get_connection_url()
        return
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
