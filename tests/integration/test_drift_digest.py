"""Drift detection with a recorded verification (runner/verified.py, issue 16): a run whose
folder stat digest and database state match a recorded verification skips the hashing, and
every change that could hide drift — an edited file that keeps its size and mtime, a
hand-edited history checksum, a SequelizeMeta row without a file — still makes the run verify
in full and refuse (exit 6)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psycopg

from runner.source import discover
from runner.verified import RACY_NS, folder_digest
from tests.conftest import run_cli
from tests.support.state import wait_for

FILES = {
    "001-a.sql": "-- migrate:up\nCREATE TABLE a (id int);\n-- migrate:down\nDROP TABLE a;\n",
    "002-b.sql": "-- migrate:up\nCREATE TABLE b (id int);\n-- migrate:down\nDROP TABLE b;\n",
    "003-c.sql": "-- migrate:up\nCREATE TABLE c (id int);\n-- migrate:down\nDROP TABLE c;\n",
}


def aged(folder: Path) -> None:
    """Wait until no file changed within the racy window (a digest is never trusted before)."""
    newest = max(max(p.stat().st_ctime_ns, p.stat().st_mtime_ns) for p in folder.iterdir())
    wait_for(
        lambda: time.time_ns() - newest > RACY_NS, timeout=10, what="files out of the racy window"
    )


def write(folder: Path) -> Path:
    folder.mkdir()
    for name, text in FILES.items():
        (folder / name).write_text(text)
    aged(folder)
    return folder


def edit_keeping_size_and_mtime(path: Path) -> None:
    st = path.stat()
    text = path.read_text()
    path.write_text(text.replace("CREATE TABLE", "CREATE TABLE".lower()))  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def verified(db: psycopg.Connection) -> list[tuple[str, object]]:
    return db.execute("SELECT folder, verified_at FROM migrunner_verified ORDER BY 1").fetchall()


def test_digest_sees_an_edit_that_keeps_size_and_mtime(tmp_path: Path) -> None:
    folder = write(tmp_path / "m")
    before = folder_digest(discover(folder).migrations)
    assert before is not None
    assert folder_digest(discover(folder).migrations) == before  # stable
    edit_keeping_size_and_mtime(folder / "002-b.sql")
    assert folder_digest(discover(folder).migrations) is None  # racy: not trusted yet
    aged(folder)
    after = folder_digest(discover(folder).migrations)
    assert after is not None and after != before  # ctime moved: user space cannot set it


def test_a_covered_noop_skips_and_every_drift_is_still_found(
    db_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    folder = write(tmp_path / "m")
    base = ("--url", db_url, "--migrations-path", str(folder))
    r = run_cli("up", *base)
    assert r.returncode == 0, r.stderr
    digest = folder_digest(discover(folder).migrations)
    ((recorded, at),) = verified(db)
    assert recorded == digest  # the run that applied recorded its verification
    # covered: a no-op and status neither hash nor record again
    assert run_cli("up", *base).returncode == 0
    st = run_cli("status", *base)
    assert st.returncode == 0 and "3 applied, 0 pending" in st.stdout, st.stdout + st.stderr
    assert verified(db) == [(recorded, at)]

    # a history checksum edited by hand: the mark moves, the run verifies in full
    ((real,),) = db.execute(
        "SELECT checksum FROM migrunner_history WHERE name = '002-b.sql'"
    ).fetchall()
    db.execute("UPDATE migrunner_history SET checksum = repeat('0', 64) WHERE name = '002-b.sql'")
    r = run_cli("up", *base)
    assert r.returncode == 6 and "002-b.sql" in r.stderr, r.stderr
    db.execute("UPDATE migrunner_history SET checksum = %s WHERE name = '002-b.sql'", (real,))

    # a SequelizeMeta row without a file (sequelize-cli's, or another image's)
    db.execute("INSERT INTO \"SequelizeMeta\" VALUES ('004-ghost.sql')")
    r = run_cli("up", *base)
    assert r.returncode == 6 and "004-ghost.sql" in r.stderr, r.stderr
    db.execute("DELETE FROM \"SequelizeMeta\" WHERE name = '004-ghost.sql'")

    # a no-op that verified in full with no drift records its own verification again
    assert run_cli("up", *base).returncode == 0, r.stderr
    assert [f for f, _ in verified(db)] == [digest]

    # an applied file edited in place, size and mtime kept (an image build that normalises
    # mtimes): drift, whether the file is fresh or old
    edit_keeping_size_and_mtime(folder / "003-c.sql")
    r = run_cli("up", *base)
    assert r.returncode == 6 and "003-c.sql" in r.stderr, r.stderr
    aged(folder)
    r = run_cli("up", *base)
    assert r.returncode == 6 and "003-c.sql" in r.stderr, r.stderr
    st = run_cli("status", *base)
    assert "file changed since applied" in st.stdout, st.stdout


def test_a_role_that_cannot_write_still_runs(
    db_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    """Recording is best effort: a read-only role's no-op and status succeed, unrecorded."""
    folder = write(tmp_path / "m")
    base = ("--url", db_url, "--migrations-path", str(folder))
    assert run_cli("up", *base).returncode == 0
    db.execute("DELETE FROM migrunner_verified")
    db.execute("ALTER DATABASE " + db.info.dbname + " SET default_transaction_read_only = on")
    try:
        assert run_cli("up", *base).returncode == 0
        assert run_cli("status", *base).returncode == 0
    finally:
        db.execute("ALTER DATABASE " + db.info.dbname + " RESET default_transaction_read_only")
    assert verified(db) == []
