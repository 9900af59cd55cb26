"""README promises that no other test pinned down deterministically.

Each test observes the promise from inside the database (a trigger recording
``txid_current()``, a migration recording ``current_setting``, a gate on an advisory lock the
test holds, a table lock that parks a reader) or from the log lines the runner must write —
never from timing. ``tests/README.md`` maps every promise to its test, and
``tests/mutation/breaks.py`` checks that each one fails when its promise is broken.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from runner.lock import lock_key
from tests.conftest import FIXTURES, popen_cli, run_cli
from tests.support.cluster import Cluster, private_cluster
from tests.support.pg import create_database, with_database
from tests.support.runners import finish
from tests.support.state import backends, history_rows, meta_rows, snapshot, wait_for

PROBE = (
    "INSERT INTO public.probe SELECT '{tag}', txid_current(), current_setting('synchronous_commit')"
)
SETUP = """-- migrate:up
CREATE TABLE probe (tag text PRIMARY KEY, txid bigint NOT NULL, sync text NOT NULL);
CREATE TABLE book (tbl text NOT NULL, op text NOT NULL, name text NOT NULL, txid bigint NOT NULL);
CREATE FUNCTION book() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.book VALUES (TG_TABLE_NAME, TG_OP,
        CASE WHEN TG_OP = 'DELETE' THEN OLD.name ELSE NEW.name END, txid_current());
    RETURN NULL;
END $$;
-- migrate:down
DROP TABLE probe, book;
DROP FUNCTION book();
"""


def sql_probe(stem: str) -> str:
    return (
        f"-- migrate:up\nCREATE TABLE t_{stem} (a int);\n{PROBE.format(tag=stem + ':up')};\n"
        f"-- migrate:down\nDROP TABLE t_{stem};\n{PROBE.format(tag=stem + ':down')};\n"
    )


def js_probe(stem: str) -> str:
    up = PROBE.format(tag=stem + ":up")
    down = PROBE.format(tag=stem + ":down")
    return (
        "module.exports = {\n"
        "  up: async (queryInterface) => {\n"
        f"    await queryInterface.createTable('t_{stem}', {{ a: {{ type: 'INTEGER' }} }});\n"
        f"    await queryInterface.sequelize.query({up!r});\n"
        "  },\n"
        "  down: async (queryInterface) => {\n"
        f"    await queryInterface.dropTable('t_{stem}');\n"
        f"    await queryInterface.sequelize.query({down!r});\n"
        "  },\n"
        "};\n"
    )


MIGRATIONS = {
    "001-setup.sql": SETUP,
    "002-a.sql": sql_probe("002"),
    "003-b.js": js_probe("003"),
    "004-c.sql": sql_probe("004"),
}
NAMES = sorted(MIGRATIONS)


@pytest.fixture
def probed(db_url: str, db: psycopg.Connection, tmp_path: Path) -> Path:
    """A folder of probing migrations whose first one is applied; every insert into and
    delete from SequelizeMeta and migrunner_history is booked with its transaction id."""
    folder = tmp_path / "m"
    folder.mkdir()
    for name, text in MIGRATIONS.items():
        (folder / name).write_text(text)
    first = run_cli("up", "--to", NAMES[0], "--url", db_url, "--migrations-path", str(folder))
    assert first.returncode == 0, first.stderr
    for table in ('"SequelizeMeta"', "migrunner_history"):
        db.execute(
            f"CREATE TRIGGER book AFTER INSERT OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION book()"
        )
    return folder


def probes(db: psycopg.Connection) -> dict[str, tuple[int, str]]:
    return {r[0]: (r[1], r[2]) for r in db.execute("SELECT tag, txid, sync FROM probe")}


def booked(db: psycopg.Connection, name: str) -> dict[tuple[str, str], int]:
    rows = db.execute("SELECT tbl, op, txid FROM book WHERE name = %s", (name,)).fetchall()
    return {(r[0], r[1]): r[2] for r in rows}


def test_migration_and_its_rows_commit_in_one_transaction(
    db_url: str, db: psycopg.Connection, probed: Path
) -> None:
    """The transaction id the migration saw is the one that wrote its SequelizeMeta row and its
    history row (SQL and JS, up and down)."""
    base = ("--url", db_url, "--migrations-path", str(probed))
    r = run_cli("up", *base)
    assert r.returncode == 0, r.stderr
    seen = probes(db)
    for name in NAMES[1:]:
        txid = seen[name[:3] + ":up"][0]
        assert booked(db, name) == {
            ("SequelizeMeta", "INSERT"): txid,
            ("migrunner_history", "INSERT"): txid,
        }, name
    db.execute("TRUNCATE book")
    r = run_cli("down", "--step", "2", *base)
    assert r.returncode == 0, r.stderr
    seen = probes(db)
    for name in NAMES[2:]:
        txid = seen[name[:3] + ":down"][0]
        assert booked(db, name) == {
            ("SequelizeMeta", "DELETE"): txid,
            ("migrunner_history", "INSERT"): txid,
        }, name


def test_every_commit_but_the_last_is_asynchronous(
    db_url: str, db: psycopg.Connection, probed: Path
) -> None:
    """``synchronous_commit`` as each migration of a run saw it: off, off, then on for the
    last, whose durable commit flushes the earlier ones too."""
    r = run_cli("up", "--url", db_url, "--migrations-path", str(probed))
    assert r.returncode == 0, r.stderr
    seen = probes(db)
    assert [seen[f"00{i}:up"][1] for i in (2, 3, 4)] == ["off", "off", "on"]
    # a run of one migration: its only commit is the last one
    r = run_cli("down", "--url", db_url, "--migrations-path", str(probed))
    assert r.returncode == 0, r.stderr
    assert probes(db)["004:down"][1] == "on"


def test_kill_9_while_the_bookkeeping_waits_leaves_no_trace(
    db_url: str, db: psycopg.Connection, probed: Path
) -> None:
    """A runner killed after its migration ran but before its SequelizeMeta row went in: the
    migration's work must be gone with it (it was never committed on its own)."""
    gate = 7171
    db.execute(
        "CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"PERFORM pg_advisory_xact_lock({gate}); RETURN NEW; END $$"
    )
    db.execute(
        'CREATE TRIGGER gate BEFORE INSERT ON "SequelizeMeta" FOR EACH ROW EXECUTE FUNCTION gate()'
    )
    holder = psycopg.connect(db_url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (gate,))
    before = snapshot(db_url)
    proc = popen_cli("up", "--to", NAMES[1], "--url", db_url, "--migrations-path", str(probed))
    wait_for(
        lambda: any(b[2] == "Lock" for b in backends(db_url, f"migrunner/% running {NAMES[1]}")),
        what="runner parked in SequelizeMeta's insert trigger",
    )
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    # client_connection_check_interval ends the orphaned backend within about a second
    wait_for(lambda: not backends(db_url, "migrunner/%"), what="the killed runner's sessions gone")
    holder.close()
    after = snapshot(db_url)
    assert (after.schema, after.meta, after.data) == (before.schema, before.meta, before.data)
    assert probes(db) == {}
    db.execute('DROP TRIGGER gate ON "SequelizeMeta"')
    assert run_cli("up", "--url", db_url, "--migrations-path", str(probed)).returncode == 0
    assert meta_rows(db_url) == tuple(NAMES)


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def retry_lines(stderr: str) -> list[str]:
    return re.findall(r"rolled back, retry (\d+/\d+ in [\d.]+s)", stderr)


def test_real_deadlock_is_rolled_back_and_retried(
    db_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    """A genuine deadlock between the migration and an app transaction (the migration is the
    victim: it runs the deadlock check first) — 40P01, rolled back, retried, applied."""
    db.execute("CREATE TABLE a (x int); CREATE TABLE b (x int)")
    gate = 7272
    # JS: each statement is its own savepoint, so the 40P01 reaches the migration and fails
    # it. (A SQL section's batch is replayed statement by statement after an error to find
    # the failing line, which also absorbs a deadlock: the replay simply succeeds.)
    q = "await queryInterface.sequelize.query"
    folder = write(
        tmp_path / "m",
        {
            "001-lock-a-then-b.js": "module.exports = { up: async (queryInterface) => {\n"
            f"  {q}(\"SET LOCAL deadlock_timeout = '10ms'\");\n"
            f"  {q}('LOCK TABLE a IN ACCESS EXCLUSIVE MODE');\n"
            f"  {q}('SELECT pg_advisory_xact_lock({gate})');\n"
            f"  {q}('LOCK TABLE b IN ACCESS EXCLUSIVE MODE');\n"
            f"  {q}('CREATE TABLE done (x int)');\n"
            "}, down: async () => {} };\n"
        },
    )
    holder = psycopg.connect(db_url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (gate,))
    app = psycopg.connect(db_url)  # the app: holds b, then wants a
    app.execute("SET deadlock_timeout = '100s'")  # it never runs the check: the migration does
    app.execute("LOCK TABLE b IN ACCESS EXCLUSIVE MODE")
    proc = popen_cli(
        "up", "--url", db_url, "--migrations-path", str(folder), "--statement-lock-timeout", "60"
    )
    wait_for(
        lambda: any(b[2] == "Lock" for b in backends(db_url, "migrunner/% running 001%")),
        what="migration holding a, parked on the gate",
    )
    app_pid = app.info.backend_pid
    locker = threading.Thread(target=lambda: (app.execute("LOCK TABLE a"), app.commit()))
    locker.start()
    wait_for(
        lambda: (
            db.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (app_pid,)
            ).fetchone()
            == ("Lock",)
        ),
        what="app waiting for a",
    )
    holder.execute("SELECT pg_advisory_unlock(%s)", (gate,))
    code, err = finish(proc)
    locker.join(timeout=30)
    app.close()
    holder.close()
    assert code == 0, err
    assert "deadlock detected (SQLSTATE 40P01); rolled back, retry 1/5 in 0.2s" in err
    row = db.execute(
        "SELECT outcome, attempts, note FROM migrunner_history WHERE name = '001-lock-a-then-b.js'"
    ).fetchall()
    assert row == [("applied", 2, "retried after SQLSTATE 40P01")]
    assert meta_rows(db_url) == ("001-lock-a-then-b.js",)


def test_retries_follow_the_backoff_schedule_then_fail_with_a_failed_row(
    db_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    """A migration that always hits 55P03: each retry logged with its delay (0.2 s doubling),
    then exit 1, a `failed` history row noting every retry, nothing applied."""
    folder = write(
        tmp_path / "m",
        {
            "001-ok.sql": "-- migrate:up\nCREATE TABLE ok (a int);\n",
            "002-always-locked.sql": "-- migrate:up\nCREATE TABLE partial (a int);\n"
            "DO $$ BEGIN RAISE EXCEPTION 'could not obtain lock on relation \"x\"' "
            "USING ERRCODE = '55P03'; END $$;\n",
        },
    )
    r = run_cli("up", "--retries", "3", "--url", db_url, "--migrations-path", str(folder))
    assert r.returncode == 1, r.stderr
    assert retry_lines(r.stderr) == ["1/3 in 0.2s", "2/3 in 0.4s", "3/3 in 0.8s"]
    (error,) = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert "002-always-locked.sql" in error and "[SQLSTATE 55P03]" in error, error
    assert history_rows(db_url) == [
        ("001-ok.sql", "up", "applied"),
        ("002-always-locked.sql", "up", "failed"),
    ]
    (note,) = db.execute(
        "SELECT note FROM migrunner_history WHERE outcome = 'failed'"
    ).fetchone() or (None,)
    assert note == "; ".join(["retried after SQLSTATE 55P03"] * 3)
    assert meta_rows(db_url) == ("001-ok.sql",)
    assert db.execute("SELECT to_regclass('partial')").fetchone() == (None,)
    # --retries 0: the first 55P03 is final
    r = run_cli("up", "--retries", "0", "--url", db_url, "--migrations-path", str(folder))
    assert r.returncode == 1 and retry_lines(r.stderr) == [], r.stderr


@pytest.fixture
def crowded() -> Iterator[tuple[Cluster, str]]:
    """A private server with room for four clients, and a database on it."""
    with private_cluster({"max_connections": "4", "superuser_reserved_connections": "0"}) as c:
        yield c, create_database(c.url)


def test_too_many_clients_at_connect_is_retried(crowded: tuple[Cluster, str]) -> None:
    """Every slot taken when the runner starts: it gets 53300, keeps retrying (the server logs
    each refusal), and migrates once the slots free up."""
    cluster, url = crowded
    hogs = [psycopg.connect(with_database(cluster.url, "postgres")) for _ in range(4)]
    example = FIXTURES / "example" / "migrations"
    proc = popen_cli("up", "--url", url, "--migrations-path", str(example), "--wait-timeout", "60")
    try:
        wait_for(
            lambda: cluster.log_text().count("too many clients") >= 2 or proc.poll() is not None,
            what="the runner refused twice",
        )
    finally:
        for hog in hogs:
            hog.close()
    code, err = finish(proc)
    assert code == 0, err
    assert meta_rows(url) == tuple(sorted(p.name for p in example.iterdir()))


def test_a_waiter_holds_one_connection_and_boots_no_node(
    db_url: str, db: psycopg.Connection
) -> None:
    """While another session holds the migration lock, a runner with JS migrations pending
    waits on one connection and has no node child."""
    sweep = FIXTURES / "sweep" / "migrations"
    db.execute("SELECT pg_advisory_lock(%s)", (lock_key(None, "SequelizeMeta"),))
    proc = popen_cli("up", "--url", db_url, "--migrations-path", str(sweep))
    try:
        wait_for(
            lambda: backends(db_url, "migrunner/% waiting %") or proc.poll() is not None,
            what="the runner waiting for the lock",
        )
        assert [b[1] for b in backends(db_url, "migrunner/%")] == [
            b[1] for b in backends(db_url, "migrunner/% waiting %")
        ]
        assert len(backends(db_url, "migrunner/%")) == 1
        assert children(proc.pid) == []
    finally:
        db.execute("SELECT pg_advisory_unlock_all()")
    code, err = finish(proc)
    assert code == 0, err
    assert meta_rows(db_url) == tuple(sorted(p.name for p in sweep.iterdir()))


def children(pid: int) -> list[str]:
    """Command names of the live child processes of ``pid`` (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :]
        fields = rest.split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(name)
    return found


def test_status_wait_flips_from_pending_to_done(db_url: str, tmp_path: Path) -> None:
    """``status --exit-code --wait`` keeps polling while migrations are pending and exits 0
    once they are applied. A table lock the test holds parks each of its reads, so the test
    knows it has read "pending" and polled again before the migrations run."""
    folder = write(
        tmp_path / "m",
        {f"00{i}-t.sql": f"-- migrate:up\nCREATE TABLE t{i} (a int);\n" for i in (1, 2)},
    )
    base = ("--url", db_url, "--migrations-path", str(folder))
    assert run_cli("up", "--to", "001-t.sql", *base).returncode == 0
    gate = psycopg.connect(db_url)
    proc = popen_cli("status", "--exit-code", "--wait", "--wait-timeout", "60", *base)

    def parked() -> bool:
        assert proc.poll() is None, proc.communicate()
        return any(b[2] == "Lock" for b in backends(db_url, "migrunner/%"))

    for _ in range(2):  # two reads parked, so at least one read saw "pending" and went on
        gate.execute('LOCK TABLE "SequelizeMeta" IN ACCESS EXCLUSIVE MODE')
        wait_for(parked, what="status reading SequelizeMeta")
        gate.commit()
    gate.close()
    assert run_cli("up", *base).returncode == 0
    code, err = finish(proc)
    assert code == 0, err


def test_js_dry_run_leaves_meta_and_history_unchanged(db_url: str) -> None:
    """A dry run of pending JS (and SQL) migrations prints their statements and rolls back:
    SequelizeMeta, the history and every table keep their rows; only sequences may move."""
    sweep = FIXTURES / "sweep" / "migrations"
    names = sorted(p.name for p in sweep.iterdir())
    base = ("--url", db_url, "--migrations-path", str(sweep))
    assert run_cli("up", "--to", names[0], *base).returncode == 0
    before = snapshot(db_url)
    r = run_cli("up", "--dry-run", *base)
    assert r.returncode == 0, r.stderr
    assert "orders" in r.stdout  # the JS migration's createTable was printed
    after = snapshot(db_url)
    assert (after.schema, after.meta, after.data) == (before.schema, before.meta, before.data)
    assert history_rows(db_url) == [(names[0], "up", "applied")]


def test_secret_in_a_failing_statement_is_redacted_everywhere(db_url: str, tmp_path: Path) -> None:
    """The connection's password inside a failing migration's error text (here the value the
    server echoes back): the CLI's error line redacts it, and so does ``history``."""
    secret = "pw-7f3a9c"
    url = db_url.replace("postgres@", f"postgres:{secret}@")
    folder = write(tmp_path / "m", {"001-leak.sql": f"-- migrate:up\nSELECT '{secret}'::int;\n"})
    r = run_cli("up", "--url", url, "--migrations-path", str(folder))
    assert r.returncode == 1, r.stderr
    (error,) = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert "invalid input syntax for type integer" in error and "***" in error, error
    assert secret not in r.stdout + r.stderr
    h = run_cli("history", "--url", url, "--migrations-path", str(folder))
    assert h.returncode == 0, h.stderr
    assert "failed" in h.stdout and secret not in h.stdout + h.stderr
