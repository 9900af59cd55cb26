"""kill -9 at random moments across full runs of SQL and JS migrations (tests/fixtures/sweep):
after every kill no migration is applied-but-unrecorded or recorded-but-unapplied, no lock
remains, and a rerun succeeds and ends in exactly the schema of an uninterrupted run. Also 32
runners started together on an empty database.

The kill moment is random by design (seeded, so a failure can be replayed); every assertion
is on database state, synchronised on what the server reports. Every database of the sweep is
a copy of one template holding sequelize-cli's ``SequelizeMeta`` with a trigger that NOTIFYs
each commit of a row: the test sleeps on LISTEN until the chosen number of migrations
committed, instead of polling in a loop that would take the CPU from the runner it is about to
kill (2 cores here).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

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


TEMPLATE_SQL = """
CREATE TABLE "SequelizeMeta" ("name" VARCHAR(255) NOT NULL UNIQUE, PRIMARY KEY ("name"));
CREATE FUNCTION sweep_committed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- delivered at commit: the payload is the number of rows then recorded
    PERFORM pg_notify('sweep_committed', (SELECT count(*) FROM "SequelizeMeta")::text);
    RETURN NULL;
END $$;
CREATE TRIGGER sweep_committed AFTER INSERT ON "SequelizeMeta"
    FOR EACH ROW EXECUTE FUNCTION sweep_committed();
"""


@pytest.fixture(scope="module")
def template(pg_server: str) -> Iterator[str]:
    """The database every run of the sweep (and its reference) is copied from."""
    url = create_database(pg_server, "mrkilltpl")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(TEMPLATE_SQL)
        yield url
    finally:
        drop_database(pg_server, url)


def wait_until_committed(url: str, proc: subprocess.Popen[str], target: int) -> None:
    """Sleep on LISTEN until ``target`` SequelizeMeta rows committed or the runner ended."""
    with psycopg.connect(url, autocommit=True) as watch:
        watch.execute("LISTEN sweep_committed")
        row = watch.execute('SELECT count(*) FROM "SequelizeMeta"').fetchone()
        done = int(row[0]) if row else 0
        while done < target and proc.poll() is None:
            for note in watch.notifies(timeout=0.05):
                done = max(done, int(note.payload))
                break


def test_probes_cover_every_migration() -> None:
    assert sorted(PROBES) == NAMES


def test_kill_sweep(pg_server: str, template: str) -> None:
    ref = create_database(pg_server, "mrref", template=template)
    try:
        r = run_cli("up", "--url", ref, "--migrations-path", str(SWEEP))
        assert r.returncode == 0, r.stderr
        reference = dump(ref, "--schema-only")
        assert applied_objects(ref) == tuple(NAMES)
    finally:
        drop_database(pg_server, ref)

    rng = random.Random(20261124)
    # DROP DATABASE waits for a checkpoint (seconds on a loaded machine): drop each run's
    # database in the background while the next run goes on.
    dropper = ThreadPoolExecutor(max_workers=1)
    drops = []
    progress: Counter[int] = Counter()
    interrupted = 0
    attempts = 0
    while interrupted < KILLS:  # count only kills that landed while the runner was running
        attempts += 1
        assert attempts <= KILLS * 2, (interrupted, progress)
        i = attempts
        url = create_database(pg_server, "mrkill", template=template)
        try:
            proc = popen_cli("up", "--url", url, "--migrations-path", str(SWEEP))
            # A random moment, spread over the whole run whatever the machine's speed: wait
            # (on the database) until a random number of migrations committed, then a random
            # few milliseconds more.
            wait_until_committed(url, proc, rng.randrange(len(NAMES)))
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
            drops.append(dropper.submit(drop_database, pg_server, url))
    dropper.shutdown(wait=True)
    for done in drops:
        done.result()
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
    outs = []  # the run log is on stdout (as sequelize-cli's), errors on stderr
    for p in procs:
        out, err = p.communicate(timeout=300)
        codes.append(p.returncode)
        errs.append(err)
        outs.append(out)
    assert codes == [0] * runners, [e for e in errs if e][:2]
    assert meta_rows(db_url) == tuple(NAMES)
    ups = Counter(n for n, d, o in history_rows(db_url) if d == "up" and o == "applied")
    assert ups == Counter(NAMES)
    assert applied_objects(db_url) == tuple(NAMES)
    assert sum("already up to date" in o for o in outs) >= 1
