"""Private PostgreSQL clusters for tests that must reconfigure or restart a server.

The shared test server is never reconfigured or restarted (other sessions use it): a test that
needs TLS, a tiny ``max_connections`` or a restart gets a throw-away cluster of its own, in a
temp dir, on a free port, with its log in a file the test can read.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port nothing listens on right now (for a private server or pooler)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bin(name: str) -> str | None:
    """A PostgreSQL server binary (initdb, pg_ctl): on PATH, else Debian's versioned folder."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


@dataclass(frozen=True)
class Cluster:
    port: int
    base: Path  # temp dir holding data/, the socket and anything the caller put there
    log: Path  # the server's log (stderr): FATAL refusals show up here
    as_user: tuple[str, ...]  # prefix that runs a command as the cluster's owner
    pg_ctl: str

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def restart(self) -> None:
        subprocess.run(
            [*self.as_user, self.pg_ctl, "-D", str(self.base / "data"), "-l", str(self.log),
             "-m", "fast", "-w", "-t", "60", "restart"],
            check=True, capture_output=True,
        )  # fmt: skip


@contextmanager
def private_cluster(
    conf: dict[str, str] | None = None, prepare: Callable[[Path], None] | None = None
) -> Iterator[Cluster]:
    """Start a throw-away cluster (trust auth, fsync off) with extra ``postgresql.conf``
    settings (``{base}`` in a value is the cluster's temp dir); ``prepare(base)`` runs before start-up (e.g. to write certificates there).
    Skips when the server binaries are missing (a CI run turns that skip into a failure)."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("initdb and pg_ctl are needed for a private PostgreSQL cluster")
    as_user: tuple[str, ...] = ()
    owner = None
    if os.getuid() == 0:  # initdb refuses to run as root: use the postgres account then
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres account")
        as_user = ("runuser", "-u", "postgres", "--")
    # not under pytest's root-only tmp dir: the postgres account must reach it
    base = Path(tempfile.mkdtemp(prefix="migrunner-pg-"))
    os.chmod(base, 0o755)
    if prepare is not None:
        prepare(base)
    if owner is not None:
        for p in [base, *base.rglob("*")]:
            os.chown(p, owner.pw_uid, owner.pw_gid)
    data, log = base / "data", base / "server.log"
    port = free_port()
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    settings = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(port),
        "unix_socket_directories": f"'{base}'",
        "fsync": "off",
        **{k: v.replace("{base}", str(base)) for k, v in (conf or {}).items()},
    }
    with (data / "postgresql.conf").open("a") as f:
        f.write("".join(f"{k} = {v}\n" for k, v in settings.items()))
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield Cluster(port=port, base=base, log=log, as_user=as_user, pg_ctl=pg_ctl)
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)
