"""Node fixture apps: their pinned ``node_modules`` (``npm ci``), and the one way the tests
launch an app's real ``sequelize-cli``.

``.ci/run`` runs ``npm ci`` for every fixture; a developer's plain ``pytest`` on a fresh clone
gets the same from :func:`ensure_npm_ci`, called by fixtures (never at collection time, so
nothing is silently skipped because it was not installed yet).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def installed_matches_pins(app: Path) -> bool:
    """True when ``app/node_modules`` holds exactly the versions its package.json pins."""
    manifest = json.loads((app / "package.json").read_text())
    for name, version in manifest.get("dependencies", {}).items():
        path = app / "node_modules" / name / "package.json"
        if not path.is_file() or json.loads(path.read_text()).get("version") != version:
            return False
    return True


def ensure_npm_ci(app: Path) -> Path:
    """``npm ci`` in ``app`` unless its node_modules already match the pins; returns ``app``.
    Parallel sessions (xdist workers, two checkouts) serialise on a lock of the lockfile."""
    if installed_matches_pins(app):
        return app
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(f"npm is required to install {app.relative_to(ROOT)}'s node_modules")
    with (app / "package-lock.json").open() as lockfile:
        fcntl.flock(lockfile, fcntl.LOCK_EX)
        try:
            if not installed_matches_pins(app):
                done = subprocess.run(
                    [
                        npm,
                        "ci",
                        "--no-audit",
                        "--no-fund",
                        "--loglevel=error",
                        "--prefix",
                        str(app),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                if done.returncode != 0:
                    pytest.fail(f"npm ci in {app} failed:\n{done.stderr[-4000:]}")
        finally:
            fcntl.flock(lockfile, fcntl.LOCK_UN)
    assert installed_matches_pins(app), f"npm ci did not install {app}'s pinned versions"
    return app


def run_sequelize_cli(
    app: Path,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``app``'s own ``node_modules/.bin/sequelize-cli ARGS`` as a real process, with the
    environment the CLI tests give migrunner (``DB_*``/``DATABASE_URL``/``NODE_ENV`` cleared,
    then ``env``)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_URL"))}
    base.pop("NODE_ENV", None)
    return subprocess.run(
        [str(app / "node_modules" / ".bin" / "sequelize-cli"), *args],
        env={**base, **(env or {})},
        cwd=cwd or app,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
