"""``dialectOptions.ssl`` against a real TLS PostgreSQL: libpq must accept and refuse exactly
the servers that pg 8 (what sequelize-cli uses) accepts and refuses.

The shared test server runs without TLS, so this module starts a private PostgreSQL with a
throw-away CA and a server certificate for ``localhost`` only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from migrations_compat.config import ConfigRequest, load_app_config
from tests.support.cluster import private_cluster
from tests.support.node_apps import ensure_npm_ci

ROOT = Path(__file__).resolve().parents[2]
PG_MODULE_DIRS = [
    ROOT / "tests" / "fixtures" / "forum" / "node_modules",
    ROOT / "migrations_compat" / "shim" / "node_modules",
]


def node_pg_dir() -> Path | None:
    return next((d for d in PG_MODULE_DIRS if (d / "pg" / "package.json").is_file()), None)


@dataclass(frozen=True)
class TlsServer:
    port: int
    ca_file: Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsServer]:
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed for the TLS tests")

    def certificates(base: Path) -> None:
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
        os.chmod(certs / "server.key", 0o600)

    conf = {
        "ssl": "on",
        "ssl_cert_file": "'{base}/certs/server.pem'",
        "ssl_key_file": "'{base}/certs/server.key'",
    }
    with private_cluster(conf, prepare=certificates) as cluster:
        yield TlsServer(port=cluster.port, ca_file=cluster.base / "certs" / "ca.pem")


@pytest.fixture(scope="module")
def node_pg() -> Path:
    """node_modules holding pg 8 (the shim's pinned copy; ``npm ci`` here when missing):
    every case is compared with it, never silently libpq alone."""
    if not shutil.which("node"):
        pytest.skip("node is needed to compare with pg")
    ensure_npm_ci(ROOT / "migrations_compat" / "shim")
    found = node_pg_dir()
    assert found is not None, "npm ci of migrations_compat/shim installed no pg"
    return found


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
    except psycopg.OperationalError as exc:
        # only a refused certificate counts: any other failure (server down, wrong port)
        # must not pass for the expected refusal
        return "untrusted" if "certificate verify failed" in str(exc) else f"error: {exc}"


def node_pg_outcome(cwd: Path, server: TlsServer, host: str, ssl_js: str, modules: Path) -> str:
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
        "  .catch((e) => { console.log(/CERT|SIGNATURE|ISSUER/.test(e.code || '') ?\n"
        "    'untrusted' : 'error: ' + (e.code || e.message)); process.exit(0); });\n"
    )
    env = {"PATH": os.environ["PATH"], "NODE_PATH": str(modules)}
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
    ("localhost", "true", "untrusted"),  # the test CA is not a system CA
    ("localhost", "{require: true}", "untrusted"),  # pg 8 verifies unless told otherwise
    ("localhost", "false", "plain"),
]


@pytest.mark.parametrize(("host", "ssl_js", "expected"), CASES)
def test_tls_outcome_matches_pg(
    tmp_path: Path,
    tls_server: TlsServer,
    node_pg: Path,
    monkeypatch: pytest.MonkeyPatch,
    host: str,
    ssl_js: str,
    expected: str,
) -> None:
    ssl_js = ssl_js.replace("process.env.CA_FILE", json.dumps(str(tls_server.ca_file)))
    assert libpq_outcome(tmp_path, tls_server, host, ssl_js) == expected
    assert node_pg_outcome(tmp_path, tls_server, host, ssl_js, node_pg) == expected
