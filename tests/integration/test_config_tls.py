"""``dialectOptions.ssl`` against a real TLS PostgreSQL: libpq must accept and refuse exactly
the servers that pg 8 (what sequelize-cli uses) accepts and refuses.

The shared test server runs without TLS, so this module starts a private PostgreSQL with a
throw-away CA and a server certificate for ``localhost`` only.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from migrations_compat.config import ConfigRequest, load_app_config

ROOT = Path(__file__).resolve().parents[2]
PG_MODULE_DIRS = [
    ROOT / "tests" / "fixtures" / "forum" / "node_modules",
    ROOT / "migrations_compat" / "shim" / "node_modules",
]


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


def node_pg_dir() -> Path | None:
    return next((d for d in PG_MODULE_DIRS if (d / "pg" / "package.json").is_file()), None)


@dataclass(frozen=True)
class TlsServer:
    port: int
    ca_file: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsServer]:
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl and shutil.which("openssl") and shutil.which("node")):
        pytest.skip("initdb, pg_ctl, openssl and node are needed for the TLS tests")
    # initdb refuses to run as root: use the postgres account then
    as_user: list[str] = []
    owner = None
    if os.getuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres account")
        as_user = ["runuser", "-u", "postgres", "--"]
    # not under pytest's root-only tmp dir: the postgres account must reach it
    base = Path(tempfile.mkdtemp(prefix="migrunner-tls-"))
    certs = base / "certs"
    certs.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=migrunner test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=certs)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", "server.key", "-out", "server.csr", cwd=certs)  # fmt: skip
    (certs / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem",
            cwd=certs)  # fmt: skip
    data = base / "data"
    if owner is not None:
        for p in (base, certs, *certs.iterdir()):
            os.chown(p, owner.pw_uid, owner.pw_gid)
    os.chmod(certs / "server.key", 0o600)
    port = free_port()
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(
            f"listen_addresses = '127.0.0.1'\nport = {port}\n"
            f"unix_socket_directories = '{base}'\nssl = on\n"
            f"ssl_cert_file = '{certs / 'server.pem'}'\nssl_key_file = '{certs / 'server.key'}'\n"
            "fsync = off\n"
        )
    log = base / "server.log"
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield TlsServer(port=port, ca_file=certs / "ca.pem")
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


def libpq_outcome(cwd: Path, server: TlsServer, host: str, ssl_js: str) -> str:
    """Load a JS config with this ssl option through migrunner and connect with libpq."""
    (cwd / "config").mkdir(exist_ok=True)
    (cwd / "config" / "config.js").write_text(
        "const fs = require('fs');\n"
        "module.exports = {development: {dialect: 'postgres', username: 'postgres',\n"
        f"  database: 'postgres', host: {json.dumps(host)}, port: {server.port},\n"
        f"  dialectOptions: {{ssl: {ssl_js}}}}}}};\n"
    )
    cfg = load_app_config(ConfigRequest(cwd=cwd, environ={"PATH": os.environ["PATH"]}))
    assert cfg is not None
    try:
        with psycopg.connect(**cfg.conninfo, connect_timeout=10) as conn:  # type: ignore[arg-type]
            row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            return "tls" if row.fetchone() == (True,) else "plain"
    except psycopg.OperationalError:
        return "refused"


def node_pg_outcome(cwd: Path, server: TlsServer, host: str, ssl_js: str) -> str:
    """The same connection made by pg 8, the driver sequelize-cli uses."""
    script = cwd / "pg-connect.js"
    script.write_text(
        "const fs = require('fs');\n"
        "const { Client } = require('pg');\n"
        f"const c = new Client({{user: 'postgres', database: 'postgres', host: {json.dumps(host)},"
        f" port: {server.port}, ssl: {ssl_js}}});\n"
        "c.connect()\n"
        "  .then(() => c.query('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'))\n"
        "  .then((r) => { console.log(r.rows[0].ssl ? 'tls' : 'plain'); return c.end(); })\n"
        "  .catch(() => { console.log('refused'); process.exit(0); });\n"
    )
    env = {"PATH": os.environ["PATH"], "NODE_PATH": str(node_pg_dir())}
    done = subprocess.run(
        ["node", str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    return done.stdout.strip()


CASES = [
    # (host, ssl option as written in a config, expected outcome)
    ("localhost", "{require: true, rejectUnauthorized: false}", "tls"),
    ("127.0.0.1", "'no-verify'", "tls"),
    ("localhost", "{ca: fs.readFileSync(process.env.CA_FILE)}", "tls"),
    # pg checks an IP host's certificate against the name "localhost" (node's default)
    ("127.0.0.1", "{ca: fs.readFileSync(process.env.CA_FILE)}", "tls"),
    (
        "127.0.0.1",
        "{ca: [fs.readFileSync(process.env.CA_FILE, 'utf8')], checkServerIdentity: () => {}}",
        "tls",
    ),
    ("localhost", "true", "refused"),  # the test CA is not a system CA
    ("localhost", "{require: true}", "refused"),  # pg 8 verifies unless told otherwise
    ("localhost", "false", "plain"),
]


@pytest.mark.parametrize(("host", "ssl_js", "expected"), CASES)
def test_tls_outcome_matches_pg(
    tmp_path: Path,
    tls_server: TlsServer,
    monkeypatch: pytest.MonkeyPatch,
    host: str,
    ssl_js: str,
    expected: str,
) -> None:
    ssl_js = ssl_js.replace("process.env.CA_FILE", json.dumps(str(tls_server.ca_file)))
    assert libpq_outcome(tmp_path, tls_server, host, ssl_js) == expected
    if node_pg_dir() is not None:
        assert node_pg_outcome(tmp_path, tls_server, host, ssl_js) == expected
