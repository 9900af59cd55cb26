"""A V8 startup snapshot of the app's sequelize, built once and used by every later bridge.

``require('sequelize')`` costs node ~0.15 s of CPU at every JS run, as much as the rest of a
small migration run; node can instead start from a snapshot whose heap already holds sequelize
and the pg parts the bridge uses (``shim/snapshot.js``). Measured here: node + sequelize ready
in ~0.12 s of CPU instead of ~0.27 s.

When it is used: whenever a valid blob exists for this node binary, these node flags, this
app's sequelize/pg and this shim. Built only on request (``migrunner snapshot``, or
``MIGRUNNER_SNAPSHOT=build`` to build on a miss), never silently during a run: a Job's pod
starts on a fresh file system, so building there would cost ~1 s at every start and gain
nothing — bake it into the image instead (``RUN migrunner snapshot --migrations-path ...``).

Validity is checked, not assumed: the cache key covers node's path, size and mtime, its flags
(V8 refuses a blob built with other flags), the shim and migrunner's version; the manifest
lists every file evaluated into the blob with its size and mtime, all compared before use (a
patched or upgraded ``node_modules`` means a miss). A blob node fails to start from is
discarded and the bridge starts without it (``migrations_compat.bridge``).
``MIGRUNNER_SNAPSHOT=0`` disables it. Location: ``MIGRUNNER_SNAPSHOT_DIR``, else
``$XDG_CACHE_HOME/migrunner/snapshots``, else ``~/.cache/migrunner/snapshots``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from runner.errors import ConfigError

SHIM_DIR = Path(__file__).resolve().parent / "shim"
BUILDER = SHIM_DIR / "snapshot.js"
BUILD_TIMEOUT = 120.0


@dataclass(frozen=True)
class SnapshotSpec:
    """What a blob is built from; equal specs may share one."""

    node: str
    node_args: tuple[str, ...]
    sequelize_dir: Path
    pg_dir: Path


def mode(env: Mapping[str, str] | None = None) -> str:
    """``use`` (default: use a valid blob), ``build`` (also build on a miss) or ``off``."""
    value = (env if env is not None else os.environ).get("MIGRUNNER_SNAPSHOT", "").strip().lower()
    if value in ("0", "off", "false", "no"):
        return "off"
    return "build" if value == "build" else "use"


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    env = env if env is not None else os.environ
    if env.get("MIGRUNNER_SNAPSHOT_DIR"):
        return Path(env["MIGRUNNER_SNAPSHOT_DIR"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "migrunner" / "snapshots"


def _node_path(node: str) -> Path | None:
    found = shutil.which(node)
    return Path(found).resolve() if found else None


def key(spec: SnapshotSpec) -> str | None:
    """The cache key, or None when node cannot be found."""
    from runner import __version__

    node = _node_path(spec.node)
    if node is None:
        return None
    st = node.stat()
    parts = {
        "node": [str(node), st.st_size, st.st_mtime_ns],
        "args": list(spec.node_args),
        "sequelize": str(spec.sequelize_dir.resolve()),
        "pg": str(spec.pg_dir.resolve()),
        "builder": hashlib.sha256(BUILDER.read_bytes()).hexdigest(),
        "migrunner": __version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def find(spec: SnapshotSpec, root: Path | None = None) -> Path | None:
    """The blob to start node from, when a valid one exists."""
    k = key(spec)
    if k is None:
        return None
    folder = (root or cache_root()) / k
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    blob = folder / "snapshot.blob"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, list) or not files or not blob.is_file():
        return None
    for entry in files:
        if not (isinstance(entry, list) and len(entry) == 3) or _stat(entry[0]) != entry[1:]:
            return None
    return blob


def discard(blob: Path) -> None:
    """Forget a blob node could not start from (another node build, a corrupt file)."""
    shutil.rmtree(blob.parent, ignore_errors=True)


def build(spec: SnapshotSpec, root: Path | None = None) -> Path:
    """Build (or rebuild) the blob for ``spec``; returns its path. Atomic: readers never see a
    half-written blob, and two concurrent builders each publish a complete one."""
    k = key(spec)
    if k is None:
        raise ConfigError(f"node not found ({spec.node!r}): cannot build a snapshot")
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        blob, listed = work / "snapshot.blob", work / "evaluated.json"
        env = {
            **os.environ,
            "MIGRUNNER_SNAPSHOT_SPEC": json.dumps(
                {
                    "sequelizeDir": str(spec.sequelize_dir),
                    "pgDir": str(spec.pg_dir),
                    "manifest": str(listed),
                }
            ),
        }
        cmd = [spec.node, "--snapshot-blob", str(blob), *spec.node_args]
        cmd += ["--build-snapshot", str(BUILDER)]
        try:
            proc = subprocess.run(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=BUILD_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"cannot build the sequelize snapshot: {exc}") from None
        if proc.returncode != 0 or not blob.is_file():
            lines = [
                line
                for line in proc.stderr.decode(errors="replace").splitlines()
                if line.strip() and "Warning:" not in line
            ]
            detail = lines[-1] if lines else f"exit code {proc.returncode}"
            raise ConfigError(f"cannot build the sequelize snapshot: {detail}")
        files = [[f, *(_stat(f) or [0, 0])] for f in json.loads(listed.read_text())]
        (work / "manifest.json").write_text(json.dumps({"key": k, "files": files}))
        listed.unlink()
        final = root / k
        old = root / f".old-{k}-{os.getpid()}"
        with contextlib.suppress(OSError):
            final.rename(old)
        os.rename(work, final)
        shutil.rmtree(old, ignore_errors=True)
        return final / "snapshot.blob"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def node_command(
    spec: SnapshotSpec, script: Path, env: Mapping[str, str] | None = None
) -> tuple[list[str], Path | None]:
    """The argv prefix to start ``script`` with, and the blob it uses (None: plain start)."""
    plain = [spec.node, *spec.node_args, str(script)]
    m = mode(env)
    if m == "off":
        return plain, None
    blob = find(spec, cache_root(env))
    if blob is None and m == "build":
        try:
            blob = build(spec, cache_root(env))
        except (ConfigError, OSError):
            blob = None
    if blob is None:
        return plain, None
    return [spec.node, "--snapshot-blob", str(blob), *spec.node_args, str(script)], blob
