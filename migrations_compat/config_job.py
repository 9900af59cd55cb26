"""Which files node must evaluate for the app's config: decided from the command line and the
file system alone, so the run's node can start before anything else (see
:mod:`migrations_compat.node_session`; hence plain ``os.path`` here, no pathlib or dataclasses:
this runs before Python's own imports). The full rules, errors included, are in
:mod:`migrations_compat.config`, whose node branches build the same :class:`ConfigJob`.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from os import PathLike

    StrPath = str | PathLike[str]


class ConfigJob(NamedTuple):
    """What one node evaluates (the request of ``shim/config-eval.js``), in ``cwd``; absolute,
    normalised paths as strings."""

    cwd: str
    rc_path: str | None
    config_path: str | None
    skip_config: bool  # --url given: sequelize-cli never reads the config file

    def request(self) -> str:
        return json.dumps(
            {"rcPath": self.rc_path, "configPath": self.config_path, "skipConfig": self.skip_config}
        )


def job(
    cwd: StrPath, rc_path: StrPath | None, config_path: StrPath | None, url: object
) -> ConfigJob:
    return ConfigJob(
        os.fspath(cwd),
        os.fspath(rc_path) if rc_path else None,
        os.fspath(config_path) if config_path else None,
        bool(url),
    )


def config_job(
    cwd: StrPath, options_path: StrPath | None, config_path: StrPath | None, url: str | None
) -> ConfigJob | None:
    """The job :func:`migrations_compat.config.start_loading` would give node for these options,
    or None when it would start none (a JSON config, no config, or an error it reports)."""
    rc_path = absolute(options_path, cwd) if options_path else os.path.join(cwd, ".sequelizerc")
    if os.path.exists(rc_path):
        given = absolute(config_path, cwd) if config_path else None
        return job(cwd, rc_path, given, url)
    if options_path is not None or url:
        return None
    path = absolute(config_path, cwd) if config_path else default_config_file(cwd)
    if not os.access(path, os.R_OK) or path.endswith(".json"):
        return None
    return job(cwd, None, path, False)


def default_config_file(cwd: StrPath) -> str:
    """sequelize-cli's default: ``config/config.js`` when readable, else ``config/config.json``."""
    js = os.path.join(cwd, "config", "config.js")
    return js if os.access(js, os.R_OK) else os.path.join(cwd, "config", "config.json")


def absolute(path: StrPath, cwd: StrPath) -> str:
    return os.path.normpath(os.path.join(cwd, path))
