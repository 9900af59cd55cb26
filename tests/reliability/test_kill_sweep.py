"""kill -9 at random moments across full runs of SQL and JS migrations (tests/fixtures/sweep):
after every kill no migration is applied-but-unrecorded or recorded-but-unapplied, no lock
remains, and a rerun succeeds and ends in exactly the schema of an uninterrupted run. Also 32
runners started together on an empty database.

The kill moment is random by design (seeded, so a failure can be replayed); every assertion
is on database state, synchronised on what the server reports.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter

import psycopg
import pytest

from tests.conftest import FIXTURES, popen_cli, run_cli
from tests.support.pg import create_database, drop_database
from tests.support.runners import advisory_held
from tests.support.state import backends, dump, history_rows, meta_rows, wait_for

SWEEP = FIXTURES / "sweep" / "migrations"
NAMES = sorted(p.name for p in SWEEP.iterdir())
KILLS = int(os.environ.get("MIGRUNNER_KILL_SWEEP", "50"))

# What each migration leaves behind, as a query that is true exactly when it is applied.
PROBES = {
    "20240201000001-accounts.sql": "SELECT to_regclass('sweep_accounts') IS NOT NULL",
    "20240201000002-orders.js": "SELECT to_regclass('sweep_orders') IS NOT NULL",
    "20240201000003-balance-check.sql": "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'sweep_balance_nonneg')",
    "20240201000004-order-notes.js": "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'sweep_orders' AND column_name = 'note')",
    "20240201000005-audit.sql": "SELECT to_regclass('sweep_audit') IS NOT NULL",
    "20240201000006-order-index.js": "SELECT to_regclass('sweep_orders_open') IS NOT NULL",
    "20240201000007-view.sql": "SELECT to_regclass('sweep_order_totals') IS NOT NULL",
    "20240201000008-tags.js": "SELECT to_regclass('sweep_tags') IS NOT NULL",
}


def applied_objects(url: str) -> tuple[str, ...]:
    with psycopg.connect(url, autocommit=True) as conn:
        return tuple(n for n in NAMES if conn.execute(PROBES[n]).fetchone() == (True,))


def advisory_held_at(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        return advisory_held(conn)


def committed(conn: psycopg.Connection) -> int:
    try:
        row = conn.execute('SELECT count(*) FROM "SequelizeMeta"').fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def test_probes_cover_every_migration() -> None:
    assert sorted(PROBES) == NAMES


def test_kill_sweep(pg_server: str) -> None:
    ref = create_database(pg_server, "mrref")
    try:
        r = run_cli("up", "--url", ref, "--migrations-path", str(SWEEP))
        assert r.returncode == 0, r.stderr
        reference = dump(ref, "--schema-only")
        assert applied_objects(ref) == tuple(NAMES)
    finally:
        drop_database(pg_server, ref)

    rng = random.Random(20261124)
    progress: Counter[int] = Counter()
    interrupted = 0
    attempts = 0
    while interrupted < KILLS:  # count only kills that landed while the runner was running
        attempts += 1
        assert attempts <= KILLS * 2, (interrupted, progress)
        i = attempts
        url = create_database(pg_server, "mrkill")
        try:
            proc = popen_cli("up", "--url", url, "--migrations-path", str(SWEEP))
            # A random moment, spread over the whole run whatever the machine's speed: wait
            # (on the database) until a random number of migrations committed, then a random
            # few milliseconds more.
            target = rng.randrange(len(NAMES))
            with psycopg.connect(url, autocommit=True) as watch:
                while proc.poll() is None and committed(watch) < target:
                    pass  # a tight poll on the database: the runs are fast
            time.sleep(rng.uniform(0.0, 0.015))
            if proc.poll() is None:
                interrupted += 1
            proc.send_signal(signal.SIGKILL)  # no-op if it already finished
            proc.wait(timeout=10)
            for stream in (proc.stdout, proc.stderr):
                stream and stream.close()
            wait_for(lambda u=url: not backends(u, "migrunner/%"), what=f"kill {i}: sessions gone")
            assert not advisory_held_at(url), f"kill {i}: the advisory lock outlived the runner"
            recorded = meta_rows(url)
            assert applied_objects(url) == recorded, (
                f"kill {i}: applied {applied_objects(url)} but recorded {recorded}"
            )
            progress[len(recorded)] += 1
            r = run_cli("up", "--url", url, "--migrations-path", str(SWEEP))
            assert r.returncode == 0, f"kill {i}: rerun failed: {r.stderr}"
            assert meta_rows(url) == tuple(NAMES)
            assert dump(url, "--schema-only") == reference, f"kill {i}: schema differs"
            ups = Counter(n for n, d, o in history_rows(url) if d == "up" and o == "applied")
            assert ups == Counter(NAMES), f"kill {i}: history {ups}"
        finally:
            drop_database(pg_server, url)
    # The kills must have landed all over the run, not all before or after it.
    assert len(progress) >= 4, progress
    print(
        f"\nkill sweep: {attempts} kills, {interrupted} mid-run, progress at kill: {dict(sorted(progress.items()))}"
    )


@pytest.mark.parametrize("runners", [32])
def test_many_runners_sql_and_js(db_url: str, runners: int) -> None:
    procs = [
        popen_cli("up", "--url", db_url, "--migrations-path", str(SWEEP)) for _ in range(runners)
    ]
    codes = []
    errs = []
    for p in procs:
        _out, err = p.communicate(timeout=300)
        codes.append(p.returncode)
        errs.append(err)
    assert codes == [0] * runners, [e for e in errs if e and "completed successfully" not in e][:2]
    assert meta_rows(db_url) == tuple(NAMES)
    ups = Counter(n for n, d, o in history_rows(db_url) if d == "up" and o == "applied")
    assert ups == Counter(NAMES)
    assert applied_objects(db_url) == tuple(NAMES)
    assert sum("already up to date" in e for e in errs) >= 1
