"""The lock service for DBAs (lock status / release / history) and faults around the lock:
a terminated backend, a restarted server, a reader holding a table lock under app traffic."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import psycopg

from runner.lock import lock_key, pg_locks_ids
from tests.conftest import FIXTURES, popen_cli, run_cli
from tests.support.cluster import private_cluster
from tests.support.pg import create_database
from tests.support.runners import block_in_second_migration, finish, gated_copy, start_blocked
from tests.support.state import backends, history_rows, meta_rows, snapshot, wait_for

EXAMPLE = FIXTURES / "example" / "migrations"
NAMES = sorted(p.name for p in EXAMPLE.iterdir())
KEY = lock_key(None, "SequelizeMeta")


def gated_example(tmp_path: Path, gate_key: int, target: str = NAMES[1]) -> Path:
    """The example, with ``target`` blocking on an advisory lock the test holds."""
    return gated_copy(EXAMPLE, tmp_path / "m", target, gate_key)


def test_lock_status_shows_holder_migration_and_waiters(db_url: str, tmp_path: Path) -> None:
    folder = gated_example(tmp_path, 5151)
    free = run_cli("lock", "status", "--url", db_url)
    assert free.returncode == 0 and "state: free" in free.stdout and str(KEY) in free.stdout
    classid, objid = pg_locks_ids(KEY)
    assert f"classid={classid} objid={objid} objsubid=1" in free.stdout

    gate = psycopg.connect(db_url, autocommit=True)
    gate.execute("SELECT pg_advisory_lock(5151)")
    env = {"POD_NAME": "migrate-abc12", "POD_NAMESPACE": "educard", "HOSTNAME": "migrate-abc12"}
    holder = start_blocked(db_url, folder, NAMES[1], env=env)
    waiters = [popen_cli("up", "--url", db_url, "--migrations-path", str(folder)) for _ in range(2)]
    wait_for(lambda: len(backends(db_url, "migrunner/% waiting %")) == 2, what="2 waiters")

    r = run_cli("lock", "status", "--json", "--url", db_url)
    assert r.returncode == 3, r.stderr
    info = json.loads(r.stdout)
    assert info["held"] is True and info["key"] == KEY
    # the holder is the session running the migration (a lock that cannot outlive it)
    assert info["holder"]["application_name"] == f"migrunner/0.1.0 running {NAMES[1]}"
    assert info["running_migration"] == NAMES[1]
    assert "pg_advisory_xact_lock(5151)" in info["running_backends"][0]["query"]
    assert len(info["waiters"]) == 2 and info["since"]
    text = run_cli("lock", "status", "--url", db_url).stdout
    assert "state: held" in text and f"running migration: {NAMES[1]}" in text
    assert text.count("waiter: pid") == 2

    gate.execute("SELECT pg_advisory_unlock(5151)")
    gate.close()
    assert [finish(p)[0] for p in [holder, *waiters]] == [0, 0, 0]
    assert run_cli("lock", "status", "--url", db_url).returncode == 0


def test_lock_release_needs_force_and_rolls_the_holder_back(db_url: str, tmp_path: Path) -> None:
    run = block_in_second_migration(db_url, EXAMPLE, tmp_path, 5252)

    refused = run_cli("lock", "release", "--url", db_url)
    assert refused.returncode == 2 and "without --force" in refused.stderr
    assert "lock holder: pid" in refused.stdout

    released = run_cli("lock", "release", "--force", "--url", db_url)
    assert released.returncode == 0, released.stderr
    assert "terminated backend" in released.stdout
    code, err = finish(run.proc)
    assert code in (4, 5), err  # lost its lock / its connection: never a silent success
    run.open_gate()
    after = snapshot(db_url)
    assert (after.schema, after.meta) == (run.before.schema, run.before.meta)
    assert run_cli("up", "--url", db_url, "--migrations-path", str(run.folder)).returncode == 0
    assert meta_rows(db_url) == tuple(NAMES)


def test_lock_release_without_privilege_is_a_clear_error(
    db_url: str, pg_server: str, tmp_path: Path
) -> None:
    folder = gated_example(tmp_path, 5353)
    role = f"mr_weak_{os.getpid()}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
    gate = psycopg.connect(db_url, autocommit=True)
    gate.execute("SELECT pg_advisory_lock(5353)")
    proc = start_blocked(db_url, folder, NAMES[1])
    weak = db_url.replace("postgres@", f"{role}@")
    try:
        r = run_cli("lock", "release", "--force", "--url", weak)
        assert r.returncode == 2
        assert "not allowed to terminate backend" in r.stderr and "pg_signal_backend" in r.stderr
    finally:
        gate.execute("SELECT pg_advisory_unlock(5353)")
        gate.close()
        assert finish(proc)[0] == 0
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_history_command(db_url: str, tmp_path: Path) -> None:
    base = ("--url", db_url, "--migrations-path", str(EXAMPLE))
    assert run_cli("up", *base, env={"POD_NAME": "job-x", "POD_NAMESPACE": "prod"}).returncode == 0
    assert run_cli("down", *base).returncode == 0
    r = run_cli("history", "--json", "--limit", "3", *base)
    rows = json.loads(r.stdout)
    assert [(x["name"], x["direction"], x["outcome"]) for x in rows] == [
        (NAMES[-1], "down", "reverted"),
        (NAMES[-1], "up", "applied"),
        (NAMES[-2], "up", "applied"),
    ]
    assert rows[1]["runner_pod"] == "prod/job-x" and rows[1]["runner_version"] == "0.1.0"
    header, *text = run_cli("history", *base).stdout.splitlines()
    assert header.split()[:4] == ["finished", "dir", "outcome", "migration"]
    assert len(text) == len(NAMES) + 1 and "reverted" in text[0] and "prod/job-x" in text[1]


def test_backend_terminated_mid_migration(db_url: str, tmp_path: Path) -> None:
    run = block_in_second_migration(db_url, EXAMPLE, tmp_path, 5454)
    ((pid, *_),) = backends(db_url, f"migrunner/% running {NAMES[1]}")
    run.gate.execute("SELECT pg_terminate_backend(%s)", (pid,))
    code, err = finish(run.proc)
    assert code == 4, err  # the session holding the lock ended: exit 4, "lost the lock"
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: lost the migration lock while running " + NAMES[1]), last
    assert "terminated by an administrator" in last and "rolled it back" in last
    run.open_gate()
    wait_for(lambda: not backends(db_url, "migrunner/%"), what="runner sessions gone")
    after = snapshot(db_url)
    assert (after.schema, after.meta) == (run.before.schema, run.before.meta)
    assert run_cli("up", "--url", db_url, "--migrations-path", str(run.folder)).returncode == 0
    assert meta_rows(db_url) == tuple(NAMES)


def test_server_restart_mid_run(tmp_path: Path) -> None:
    """On a private cluster: the shared test server is never restarted."""
    with private_cluster() as cluster:
        db_url = create_database(cluster.url)
        run = block_in_second_migration(db_url, EXAMPLE, tmp_path, 5555)
        cluster.restart()
        code, err = finish(run.proc)
        assert code == 5, err
        assert "connection lost" in err.strip().splitlines()[-1]
        run.gate.close()  # its session died with the server
        assert run_cli("wait", "--url", db_url, "--wait-timeout", "30").returncode == 0
        after = snapshot(db_url)
        assert (after.schema, after.meta) == (run.before.schema, run.before.meta)
        r = run_cli("up", "--url", db_url, "--migrations-path", str(run.folder))
        assert r.returncode == 0, r.stderr
        assert meta_rows(db_url) == tuple(NAMES)


def test_reader_lock_forces_retries_while_app_traffic_flows(
    db_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)")
    db.execute("INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 1000) g")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "001-alter.sql").write_text(
        "-- migrate:up\nALTER TABLE accounts ADD COLUMN frozen boolean NOT NULL DEFAULT false;\n"
    )
    reader = psycopg.connect(db_url)  # a long report: holds ACCESS SHARE on accounts
    reader.execute("SELECT sum(balance) FROM accounts").fetchone()
    proc = popen_cli(
        "up",
        "--url",
        db_url,
        "--migrations-path",
        str(folder),
        "--statement-lock-timeout",
        "0.2",
        "--retries",
        "100",
    )
    lines: list[str] = []
    pump = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    pump.start()
    app = psycopg.connect(db_url, autocommit=True)
    app.execute("SET lock_timeout = '2s'")  # the app would fail if queued behind DDL for 2s
    served = 0
    while sum("retry" in line for line in lines) < 3:
        assert proc.poll() is None, "".join(lines)
        app.execute("SELECT count(*) FROM accounts WHERE balance > 0").fetchone()
        served += 1
    reader.commit()  # the report ends; the next retry succeeds
    reader.close()
    assert proc.wait(timeout=60) == 0
    pump.join(timeout=10)
    assert served > 0
    row = db.execute(
        "SELECT attempts, note FROM migrunner_history WHERE name = '001-alter.sql' AND outcome = 'applied'"
    ).fetchone()
    assert row is not None and row[0] >= 4 and "retried after SQLSTATE 55P03" in row[1]
    assert any(
        "lock not available (SQLSTATE 55P03); rolled back, retry 1/100" in line for line in lines
    )
    assert history_rows(db_url) == [("001-alter.sql", "up", "applied")]
    app.close()
