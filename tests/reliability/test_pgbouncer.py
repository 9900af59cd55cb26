"""Behind PgBouncer in transaction-pooling mode a session advisory lock protects nothing:
migrunner detects the pooler and refuses, and a direct URL makes it work. Real PgBouncer."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import FIXTURES, run_cli
from tests.support.cluster import free_port
from tests.support.state import meta_rows, snapshot, wait_for

EXAMPLE = FIXTURES / "example" / "migrations"


@pytest.fixture
def bouncer(db_url: str) -> Iterator[str]:
    """A PgBouncer in transaction mode in front of the test server; its URL."""
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )
    if binary is None:
        pytest.skip("pgbouncer is not installed (.ci/run installs the Debian package)")
    server = urlsplit(db_url)
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="mr-pgbouncer-"))  # readable by the postgres user
    os.chmod(folder, 0o755)
    (folder / "users.txt").write_text(f'"{server.username}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\n* = host={server.hostname} port={server.port or 5432}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = trust\n"
        f"auth_file = {folder}/users.txt\npool_mode = transaction\nunix_socket_dir =\n"
        f"logfile = {folder}/pgbouncer.log\npidfile = {folder}/pgbouncer.pid\n"
    )
    cmd = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        shutil.chown(folder, "postgres")
        for f in folder.iterdir():
            shutil.chown(f, "postgres")
        cmd = [binary, "-u", "postgres", str(folder / "pgbouncer.ini")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, timeout=15, what="pgbouncer listening")
    try:
        yield db_url.replace(f":{server.port or 5432}/", f":{port}/")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def test_transaction_pooler_is_detected_and_refused(bouncer: str, db_url: str) -> None:
    before = snapshot(db_url)
    r = run_cli("up", "--url", bouncer, "--migrations-path", str(EXAMPLE))
    assert r.returncode == 2, r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert "goes through a connection pooler" in line and "MIGRUNNER_DIRECT_URL" in line
    assert snapshot(db_url) == before


def test_direct_url_bypasses_the_pooler(bouncer: str, db_url: str) -> None:
    r = run_cli(
        "up",
        "--migrations-path",
        str(EXAMPLE),
        env={"DATABASE_URL": bouncer, "MIGRUNNER_DIRECT_URL": db_url},
    )
    assert r.returncode == 0, r.stderr
    assert len(meta_rows(db_url)) == len(list(EXAMPLE.iterdir()))
    # a no-op check through the pooler is fine: it takes no lock
    st = run_cli("status", "--exit-code", "--url", bouncer, "--migrations-path", str(EXAMPLE))
    assert st.returncode == 0, st.stderr
