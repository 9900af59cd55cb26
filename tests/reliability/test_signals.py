"""SIGTERM / SIGINT in every role, as PID 1 too, and --migration-timeout: the running statement
is cancelled, the migration rolled back, the lock released, node stopped (no orphan), one line
naming the signal, exit 128 + signal. Runners are held at known points by an advisory lock the
test holds (observed in pg_stat_activity), never by sleeps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ROOT, cli_env, popen_cli, run_cli
from tests.support.runners import DEFAULT_KEY, advisory_held, finish
from tests.support.state import backends, history_rows, wait_for

GATE = 6161


def sql_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "001-a.sql").write_text(
        f"-- migrate:up\nCREATE TABLE a (id int);\nSELECT pg_advisory_xact_lock({GATE});\n"
    )
    return folder


def js_spinning(tmp_path: Path) -> tuple[Path, Path]:
    """A JS migration that creates a table, writes node's pid, then spins forever."""
    folder = tmp_path / "m"
    folder.mkdir()
    pidfile = tmp_path / "node.pid"
    (folder / "001-spin.js").write_text(
        "module.exports = { async up(qi) {\n"
        "  await qi.sequelize.query('CREATE TABLE spun (id int)');\n"
        f"  require('fs').writeFileSync({str(pidfile)!r}, String(process.pid));\n"
        "  for (;;) {}\n"
        "}, async down() {} };\n"
    )
    return folder, pidfile


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def nothing_left(db_url: str, db: psycopg.Connection, table: str) -> None:
    wait_for(lambda: not backends(db_url, "migrunner/%"), what="runner sessions gone")
    assert db.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,)
    assert not advisory_held(db, DEFAULT_KEY)


@pytest.mark.parametrize(
    ("signum", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")]
)
def test_holder_signal_rolls_back_and_releases(
    db_url: str, db: psycopg.Connection, tmp_path: Path, signum: int, code: int, name: str
) -> None:
    folder = sql_folder(tmp_path)
    db.execute("SELECT pg_advisory_lock(%s)", (GATE,))
    proc = popen_cli("up", "--url", db_url, "--migrations-path", str(folder))
    wait_for(
        lambda: any(b[2] == "Lock" for b in backends(db_url, "migrunner/% running 001-a.sql")),
        what="runner blocked inside 001-a.sql",
    )
    proc.send_signal(signum)
    rc, err = finish(proc)
    assert rc == code, err
    assert last_line(err) == (
        f"error: stopped by {name} while running 001-a.sql (up): rolled back; "
        "the migration lock is released"
    )
    assert "Traceback" not in err
    db.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
    nothing_left(db_url, db, "a")
    assert history_rows(db_url) == [("001-a.sql", "up", "failed")]


def test_waiter_sigterm(db_url: str, db: psycopg.Connection, tmp_path: Path) -> None:
    folder = sql_folder(tmp_path)
    db.execute("SELECT pg_advisory_lock(%s)", (DEFAULT_KEY,))  # someone else holds the lock
    proc = popen_cli("up", "--url", db_url, "--migrations-path", str(folder))
    wait_for(lambda: backends(db_url, "migrunner/% waiting %"), what="a waiter")
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc)
    assert rc == 143, err
    assert last_line(err) == (
        "error: stopped by SIGTERM while waiting for the migration lock; nothing ran"
    )
    wait_for(lambda: not backends(db_url, "migrunner/%"), what="waiter gone")


def test_sigterm_during_cpu_bound_js_leaves_no_orphan(
    db_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    folder, pidfile = js_spinning(tmp_path)
    proc = popen_cli("up", "--url", db_url, "--migrations-path", str(folder))
    wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="node spinning")
    node = int(pidfile.read_text())
    assert alive(node)
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc, timeout=30)
    assert rc == 143, err
    assert "stopped by SIGTERM while running 001-spin.js (up): rolled back" in last_line(err)
    wait_for(lambda: not alive(node), timeout=10, what="node gone")
    nothing_left(db_url, db, "spun")


def test_migration_timeout_stops_a_migration_that_never_settles(
    db_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "001-hang.js").write_text(
        "module.exports = { async up(qi) {\n"
        "  await qi.sequelize.query('CREATE TABLE hung (id int)');\n"
        "  await new Promise(() => {});\n"  # never settles: holds ACCESS EXCLUSIVE on hung
        "}, async down() {} };\n"
    )
    r = run_cli("up", "--url", db_url, "--migrations-path", str(folder), "--migration-timeout", "2")
    assert r.returncode == 1, r.stderr
    assert last_line(r.stderr) == (
        "error: migration 001-hang.js (up) ran longer than --migration-timeout 2s: rolled back"
    )
    nothing_left(db_url, db, "hung")
    assert history_rows(db_url) == [("001-hang.js", "up", "failed")]


def test_lock_status_says_how_long_the_migration_runs(
    db_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    folder = sql_folder(tmp_path)
    db.execute("SELECT pg_advisory_lock(%s)", (GATE,))
    proc = popen_cli("up", "--url", db_url, "--migrations-path", str(folder))
    wait_for(
        lambda: any(b[2] == "Lock" for b in backends(db_url, "migrunner/% running 001-a.sql")),
        what="runner blocked inside 001-a.sql",
    )
    status = run_cli("lock", "status", "--url", db_url)
    assert status.returncode == 3
    assert "running migration: 001-a.sql (for " in status.stdout, status.stdout
    db.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
    assert finish(proc)[0] == 0


def test_pid1_handles_sigterm(db_url: str, db: psycopg.Connection, tmp_path: Path) -> None:
    """As a container's entrypoint: PID 1 of its own pid namespace, where the kernel drops
    every signal the process has no handler for."""
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], check=False)
    if probe.returncode != 0:
        pytest.skip("unshare --pid needs root or user namespaces")
    folder = sql_folder(tmp_path)
    db.execute("SELECT pg_advisory_lock(%s)", (GATE,))
    proc = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            sys.executable,
            "-m",
            "runner",
            "up",
            "--url",
            db_url,
            "--migrations-path",
            str(folder),
        ],
        env=cli_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(
        lambda: any(b[2] == "Lock" for b in backends(db_url, "migrunner/% running 001-a.sql")),
        what="runner blocked inside 001-a.sql",
    )
    init = wait_for(lambda: child_of(proc.pid), what="the namespace's PID 1")
    assert "NSpid:" in (status := Path(f"/proc/{init}/status").read_text())
    assert status.split("NSpid:")[1].splitlines()[0].split()[-1] == "1"  # PID 1 there
    os.kill(init, signal.SIGTERM)
    rc, err = finish(proc)
    assert rc == 143, err
    assert "stopped by SIGTERM while running 001-a.sql (up): rolled back" in last_line(err)
    db.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
    nothing_left(db_url, db, "a")


def child_of(pid: int) -> int | None:
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        if kids:
            return int(kids[0])
    return None
