"""Shared fixtures: a real PostgreSQL, a scratch database per test, and the CLI as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.ci import under_ci
from tests.support.pg import (
    create_database,
    drop_database,
    drop_database_soon,
    finish_drops,
    server_url,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def _node_from_the_extra() -> None:
    """Without node on PATH, the ``migrunner[node]`` extra's node (and its npm) serve the tests'
    own node calls too (sequelize-cli for parity, npm ci of the fixtures)."""
    from migrations_compat.node_runtime import path_node, wheel_node

    bundled = wheel_node()
    if bundled and not path_node(os.environ):
        os.environ["PATH"] = os.pathsep.join([str(Path(bundled).parent), os.environ["PATH"]])


_node_from_the_extra()


def _own_snapshot_cache() -> None:
    """Node starts plainly in tests unless a test builds a sequelize snapshot itself (or the
    caller sets MIGRUNNER_SNAPSHOT_DIR, e.g. with MIGRUNNER_SNAPSHOT=build to run the suite
    from snapshots): a developer's ~/.cache must not decide what the suite exercises."""
    if "MIGRUNNER_SNAPSHOT_DIR" not in os.environ:
        os.environ["MIGRUNNER_SNAPSHOT_DIR"] = tempfile.mkdtemp(prefix="migrunner-test-snapshots-")


_own_snapshot_cache()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database (``postgres``)."""
    with server_url() as url:
        try:
            yield url
        finally:
            # the background drops need the server: an embedded one stops when this returns
            finish_drops()


@pytest.fixture
def db_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database for this test; dropped afterwards."""
    url = create_database(pg_server)
    try:
        yield url
    finally:
        drop_database_soon(pg_server, url)


@pytest.fixture
def other_db_url(pg_server: str) -> Iterator[str]:
    """A second fresh database, so each tool gets its own."""
    url = create_database(pg_server)
    try:
        yield url
    finally:
        drop_database(pg_server, url)


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test's database, for assertions."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_URL"))}
    env.pop("NODE_ENV", None)
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float = 120,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m runner ARGS`` as a real process and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        env=cli_env(env),
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


def popen_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | str | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        env=cli_env(env),
        cwd=cwd or ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under CI (``CI=true`` or ``1``) a skipped test is a failure: every skip in this suite names a
    missing prerequisite, and .ci/run installs them all, so a skip there means a broken setup."""
    outcome = yield
    report = outcome.get_result()
    if under_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where every prerequisite is installed: {reason}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Every scratch database is gone before the session ends."""
    finish_drops()
