"""Parity fixtures: the forum app with its real node_modules, and the real sequelize-cli.

Parity tests run sequelize-cli 6.6.5 and migrunner with the same command line, in the app's
directory, against the same kind of database, and compare what each leaves behind. The app's
``node_modules`` comes from ``npm ci`` of its lockfile (``.ci/run`` does the same), installed
here once per session when missing or stale, so plain ``pytest`` works on a fresh clone.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, run_cli
from tests.support import node_apps
from tests.support.node_apps import ensure_npm_ci
from tests.support.pg import url_parts

FORUM = FIXTURES / "forum"
SEQUELIZE_CLI = FORUM / "node_modules" / ".bin" / "sequelize-cli"

# The Kubernetes Job's command line, minus the program name.
FORUM_ARGS = (
    "--config",
    "src/config/database.js",
    "--migrations-path",
    "src/migrations",
    "--env",
    "production",
)

MIGRATIONS = tuple(sorted(p.name for p in (FORUM / "src" / "migrations").glob("*.js")))

COMPLETED = "Migrations completed successfully"

SequelizeCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def forum_app() -> Path:
    """The forum fixture directory, with ``npm ci`` done (once, under a file lock)."""
    return ensure_npm_ci(FORUM)


def forum_env(url: str) -> dict[str, str]:
    """What the Job's ConfigMap and Secret put in the environment, for database ``url``."""
    return {**url_parts(url), "NODE_ENV": "production"}


def run_sequelize_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run the forum app's own ``sequelize-cli`` as a real process."""
    return node_apps.run_sequelize_cli(FORUM, *args, env=env, cwd=cwd, timeout=timeout)


@pytest.fixture
def sequelize_cli(forum_app: Path) -> SequelizeCli:
    """``sequelize_cli(*args, env=..., cwd=...)``: the real sequelize-cli 6.6.5 of the app."""
    return run_sequelize_cli


def migrunner(*args: str, url: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """migrunner with the same command line and environment sequelize-cli gets."""
    return run_cli(*args, *FORUM_ARGS, env=forum_env(url), cwd=FORUM, timeout=timeout)


def sequelize(*args: str, url: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_sequelize_cli(*args, *FORUM_ARGS, env=forum_env(url), cwd=FORUM, timeout=timeout)


def ok(done: subprocess.CompletedProcess[str], tool: str) -> str:
    """The run's combined output; fails the test with that output when it exited non-zero."""
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{tool} {done.args[1:]} exited {done.returncode}:\n{output}"
    return output


STATUS_LINE = re.compile(r"^(up|down) (\S+)\s*$")


def parse_status(stdout: str) -> dict[str, str]:
    """``{name: 'up'|'down'}`` from ``db:migrate:status`` (both tools print ``up NAME``)."""
    states: dict[str, str] = {}
    for line in stdout.splitlines():
        match = STATUS_LINE.match(line)
        if match:
            states[match.group(2)] = match.group(1)
    return states
