"""Where a bridge node finds sequelize and pg, and the environment it runs them in.

Decided here, without psycopg, so the run's node session (:mod:`migrations_compat.node_session`)
can tell its node to load sequelize as soon as the runner knows a JS migration is pending, with
exactly the packages and environment a bridge node of its own (:mod:`migrations_compat.bridge`)
would get.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.errors import ConfigError

SHIM_DIR = Path(__file__).resolve().parent / "shim"


@dataclass(frozen=True)
class ResolvedPackages:
    sequelize_dir: Path
    pg_dir: Path
    from_app: bool


def _find_package(name: str, starts: Iterable[Path], exclude: Path | None) -> Path | None:
    """``<dir>/node_modules/<name>`` for the nearest dir walking up from each start, like node."""
    for start in starts:
        for directory in (start, *start.parents):
            if directory.name == "node_modules":
                continue
            candidate = directory / "node_modules" / name
            if not (candidate / "package.json").is_file():
                continue
            if exclude is not None and candidate.resolve().is_relative_to(exclude):
                continue
            return candidate.resolve()
    return None


def resolve_packages(search_dirs: Sequence[Path | str]) -> ResolvedPackages:
    """The app's own sequelize and pg when it has them, else the shim's pinned copies.

    A second copy of sequelize silently changes defaults, so the app's always wins.
    """
    starts = [Path(d).resolve() for d in search_dirs]
    shim_modules = (SHIM_DIR / "node_modules").resolve()
    seq = _find_package("sequelize", starts, exclude=shim_modules)
    from_app = seq is not None
    if seq is None:
        seq = _find_package("sequelize", [SHIM_DIR], exclude=None)
    if seq is None:
        raise ConfigError(
            "sequelize not found: the app has no node_modules/sequelize (searched upwards from "
            + ", ".join(str(s) for s in starts)
            + ") and migrunner's shim is not installed (run: npm ci --prefix "
            + str(SHIM_DIR)
            + ")"
        )
    pg = _find_package("pg", starts, exclude=shim_modules) if from_app else None
    if pg is None and from_app:
        pg = _find_package("pg", [seq], exclude=shim_modules)
    if pg is None:
        pg = _find_package("pg", [SHIM_DIR], exclude=None)
    if pg is None:
        raise ConfigError(f"pg not found; run: npm ci --prefix {SHIM_DIR}")
    return ResolvedPackages(seq, pg, from_app)


@dataclass(frozen=True)
class BridgeLaunch:
    """What a bridge node is started with besides its options (which travel on the socket).

    ``node_path``: put first in ``NODE_PATH``, so a migration's own ``require('sequelize')``
    finds the copy the bridge uses, also when only the shim has one (searched after the app's
    node_modules). ``pg_options``: ``PGOPTIONS`` for connections a migration opens itself
    through the real pg (unless the environment sets one): a ``lock_timeout``, because such a
    connection waiting for a lock held by the runner's open transaction would wait forever.
    """

    sequelize_dir: Path
    pg_dir: Path
    node_path: str
    pg_options: str | None

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` as a bridge node of its own sees it."""
        env = dict(base)
        env["NODE_PATH"] = os.pathsep.join(
            [self.node_path, *([env["NODE_PATH"]] if env.get("NODE_PATH") else [])]
        )
        if self.pg_options and "PGOPTIONS" not in env:
            env["PGOPTIONS"] = self.pg_options
        return env


def bridge_launch(
    search_dirs: Sequence[Path | str], own_connection_lock_timeout: float | None
) -> BridgeLaunch:
    packages = resolve_packages(search_dirs)
    timeout = own_connection_lock_timeout
    return BridgeLaunch(
        sequelize_dir=packages.sequelize_dir,
        pg_dir=packages.pg_dir,
        node_path=str(packages.sequelize_dir.parent),
        pg_options=f"-c lock_timeout={max(1, int(timeout * 1000))}" if timeout else None,
    )
