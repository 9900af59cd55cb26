"""Runner processes held at a known point: a migration that blocks on an advisory lock the
test holds, observed through pg_stat_activity (no sleeps)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg

from runner.lock import lock_key, pg_locks_ids
from tests.conftest import popen_cli, run_cli
from tests.support.state import Snapshot, backends, snapshot, wait_for

DEFAULT_KEY = lock_key(None, "SequelizeMeta")


def gated_copy(src: Path, dst: Path, target: str, gate_key: int) -> Path:
    """Copy a SQL migrations folder; ``target`` then blocks on ``pg_advisory_xact_lock(gate)``
    after its own statements ran."""
    shutil.copytree(src, dst)
    path = dst / target
    body, down = path.read_text().split("-- migrate:down")
    path.write_text(body + f"SELECT pg_advisory_xact_lock({gate_key});\n-- migrate:down" + down)
    return dst


def start_blocked(
    db_url: str, folder: Path, target: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start ``up`` and return once its worker waits on the gate inside ``target``."""
    proc = popen_cli(
        "up",
        "--url",
        db_url,
        "--migrations-path",
        str(folder),
        "--statement-lock-timeout",
        "60",
        *extra,
        env=env,
    )
    wait_for(
        lambda: any(b[2] == "Lock" for b in backends(db_url, f"migrunner/% running {target}")),
        what=f"runner blocked inside {target}",
    )
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    """Wait for a runner; its exit code and stderr."""
    _out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def advisory_held(conn: psycopg.Connection, key: int = DEFAULT_KEY) -> bool:
    """Whether any session of this database holds (or waits for) the migration lock."""
    classid, objid = pg_locks_ids(key)
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid "
        "AND objid = %s::oid AND objsubid = 1 "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (classid, objid),
    ).fetchone()
    return bool(row and row[0])


@dataclass
class Blocked:
    """A runner held inside the second migration of a folder whose first one is applied."""

    folder: Path
    names: list[str]
    before: Snapshot  # the database before the blocked run started
    gate: psycopg.Connection  # holds the advisory lock the migration waits for
    gate_key: int
    proc: subprocess.Popen[str]

    def open_gate(self) -> None:
        self.gate.execute("SELECT pg_advisory_unlock(%s)", (self.gate_key,))
        self.gate.close()


def block_in_second_migration(db_url: str, src: Path, workdir: Path, gate_key: int) -> Blocked:
    names = sorted(p.name for p in src.iterdir())
    folder = gated_copy(src, workdir / "m", names[1], gate_key)
    first = run_cli("up", "--to", names[0], "--url", db_url, "--migrations-path", str(folder))
    assert first.returncode == 0, first.stderr
    before = snapshot(db_url)
    gate = psycopg.connect(db_url, autocommit=True)
    gate.execute("SELECT pg_advisory_lock(%s)", (gate_key,))
    proc = start_blocked(db_url, folder, names[1])
    return Blocked(folder, names, before, gate, gate_key, proc)
