"""``up --dry-run --analyze`` against a real PostgreSQL 15 and real node: the locks, rewrites and
findings it reports are the ones the server shows for fixtures of known behaviour
(tests/fixtures/analyze), SQL and Sequelize JS alike; blockers are named; what one rolled-back
transaction cannot rehearse is rehearsed on a schema-only copy; ``--fail-on`` gates."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runner.analyze import RULES, Facts, MigrationObs, StatementObs, Thresholds, analyze
from runner.analyze_cli import FINDINGS_EXIT
from runner.preflight import PREFLIGHT_EXIT
from tests.conftest import FIXTURES, popen_cli, run_cli
from tests.support.state import meta_rows

ANALYZE = FIXTURES / "analyze"


@pytest.fixture
def target(db_url: str, db: psycopg.Connection) -> str:
    """The test database with the fixtures' existing schema: a table with rows per pattern."""
    db.execute((ANALYZE / "setup.sql").read_text().encode())
    return db_url


@pytest.fixture
def in_txn(tmp_path: Path) -> Path:
    """The SQL fixtures a single transaction can rehearse (no copy needed: faster)."""
    folder = tmp_path / "sql"
    folder.mkdir()
    for f in sorted((ANALYZE / "sql").glob("00[1-8]-*.sql")):
        (folder / f.name).write_text(f.read_text())
    return folder


def analyze_json(url: str, folder: Path, *extra: str) -> tuple[dict[str, Any], int, str]:
    r = run_cli(
        "up", "--dry-run", "--analyze", "--json", "--url", url, "--migrations-path", str(folder),
        *extra,
    )  # fmt: skip
    doc = json.loads(r.stdout) if r.stdout.strip() else {}
    return doc, r.returncode, r.stderr


def by_migration(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for st in doc["statements"]:
        out.setdefault(st["migration"], []).append(st)
    return out


def ddl(statements: list[dict[str, Any]]) -> dict[str, Any]:
    """The one statement of a migration that touched a table (JS adds session statements)."""
    touched = [s for s in statements if s["locks"] or s["rewrites"]]
    assert len(touched) == 1, statements
    return touched[0]


def locks(st: dict[str, Any]) -> set[tuple[str, str]]:
    return {(x["relation"], x["mode"]) for x in st["locks"]}


def rules(doc: dict[str, Any]) -> set[tuple[str, str, str | None]]:
    return {(f["rule"], f["migration"], f["relation"]) for f in doc["findings"]}


def assert_untouched(db: psycopg.Connection) -> None:
    """A rehearsal leaves the target as it was: no migration recorded, no schema change."""
    assert db.execute("SELECT to_regclass('t_index_name')").fetchone() == (None,)
    cols = db.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 't_default'"
    ).fetchone()
    assert cols == (1,)
    leftovers = db.execute(
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'migrunner_rehearsal_%'"
    ).fetchone()
    assert leftovers == (0,)


def test_sql_patterns_observed_locks_rewrites_and_findings(
    target: str, db: psycopg.Connection
) -> None:
    doc, code, err = analyze_json(target, ANALYZE / "sql")
    assert code == 0, err
    st = by_migration(doc)
    a = ddl(st["001-volatile-default.sql"])
    # the rewrite takes ACCESS EXCLUSIVE, and SHARE for rebuilding the table's index
    assert locks(a) == {
        ("public.t_default", "AccessExclusiveLock"),
        ("public.t_default", "ShareLock"),
    }
    assert a["rewrites"] == ["public.t_default"]
    widen = ddl(st["002-widen-varchar.sql"])
    assert locks(widen) == {("public.t_widen", "AccessExclusiveLock")}
    assert widen["rewrites"] == []  # varchar widening is binary-compatible: no rewrite
    retype = st["003-int-to-bigint.sql"]
    assert retype[0]["rewrites"] == ["public.t_retype"]
    assert retype[1]["rows"] == 10 and locks(retype[1]) == {("public.t_retype", "RowExclusiveLock")}
    assert locks(ddl(st["004-plain-index.sql"])) == {("public.t_index", "ShareLock")}
    # SHARE ROW EXCLUSIVE on both tables, plus the validation query's reads
    assert locks(ddl(st["005-fk.sql"])) == {
        ("public.t_fk", "ShareRowExclusiveLock"),
        ("public.orgs", "ShareRowExclusiveLock"),
        ("public.t_fk", "AccessShareLock"),
        ("public.orgs", "AccessShareLock"),
        ("public.orgs", "RowShareLock"),
    }
    # NOT VALID: the same lock, no validation (orgs' lock is held already, from 005)
    assert ("public.t_fk_nv", "ShareRowExclusiveLock") in locks(ddl(st["006-fk-not-valid.sql"]))
    assert locks(ddl(st["007-set-not-null.sql"])) == {("public.t_nn", "AccessExclusiveLock")}
    assert all(s["where"] == "target" and s["duration_ms"] >= 0 for s in doc["statements"][:-1])
    # CREATE INDEX CONCURRENTLY cannot run in the rehearsal transaction: rehearsed on a copy,
    # outside a transaction, as the real run runs it.
    cc = st["009-concurrent-index.sql"]
    assert [(s["where"], s["transactional"]) for s in cc] == [("copy", False)]
    assert "009-concurrent-index.sql" in doc["copy"]["reason"]
    assert rules(doc) == {
        ("table-rewrite", "001-volatile-default.sql", "public.t_default"),
        ("table-rewrite", "003-int-to-bigint.sql", "public.t_retype"),
        ("access-exclusive-held", "003-int-to-bigint.sql", "public.t_retype"),
        ("blocking-index", "004-plain-index.sql", "public.t_index"),
        ("fk-validation", "005-fk.sql", "public.t_fk"),
        ("not-null-scan", "007-set-not-null.sql", "public.t_nn"),
    }  # none for the varchar widening, NOT VALID, the validated CHECK, the concurrent index
    (nn,) = [f for f in doc["findings"] if f["rule"] == "not-null-scan"]
    assert nn["sql"] == "ALTER TABLE t_nn ALTER COLUMN email SET NOT NULL"
    assert "fix: add CHECK (email IS NOT NULL) NOT VALID" in nn["message"]
    migs = {m["name"]: m for m in doc["migrations"]}
    assert migs["004-plain-index.sql"]["strongest_lock"] == {
        "relation": "public.t_index",
        "mode": "ShareLock",
    }
    assert migs["003-int-to-bigint.sql"]["lock_held_ms"] >= retype[0]["duration_ms"]
    assert doc["blockers"] == []
    assert_untouched(db)
    assert meta_rows(target) == ()


def test_js_patterns_observed_from_the_sql_sequelize_emits(
    target: str, db: psycopg.Connection
) -> None:
    doc, code, err = analyze_json(target, ANALYZE / "js")
    assert code == 0, err
    st = by_migration(doc)
    index = ddl(st["001-add-index.js"])
    assert index["sql"].startswith('CREATE INDEX "t_index_name_js"')
    assert locks(index) == {("public.t_index", "ShareLock")}
    bigint = ddl(st["002-change-column-bigint.js"])
    assert locks(bigint) == {
        ("public.t_retype", "AccessExclusiveLock"),
        ("public.t_retype", "ShareLock"),
    }
    assert bigint["rewrites"] == ["public.t_retype"]
    assert ddl(st["003-change-column-widen.js"])["rewrites"] == []
    uuidv4 = ddl(st["004-add-column-uuidv4.js"])
    assert "DEFAULT" not in uuidv4["sql"] and uuidv4["rewrites"] == []
    literal = ddl(st["005-add-column-gen-random-uuid.js"])
    assert "gen_random_uuid()" in literal["sql"] and literal["rewrites"] == ["public.t_uuid"]
    assert ("public.t_fk", "ShareRowExclusiveLock") in locks(ddl(st["006-add-constraint-fk.js"]))
    assert {s["where"] for s in st["007-concurrent-index.js"]} == {"copy"}
    assert rules(doc) == {
        ("blocking-index", "001-add-index.js", "public.t_index"),
        ("table-rewrite", "002-change-column-bigint.js", "public.t_retype"),
        ("table-rewrite", "005-add-column-gen-random-uuid.js", "public.t_uuid"),
        ("fk-validation", "006-add-constraint-fk.js", "public.t_fk"),
    }
    assert_untouched(db)


def test_fail_on_gates_with_its_own_exit_code_and_the_human_table(
    target: str, in_txn: Path
) -> None:
    folder = in_txn
    r = run_cli(
        "up", "--dry-run", "--analyze", "--url", target, "--migrations-path", str(folder),
        "--fail-on", "blocking-index,fk-validation",
    )  # fmt: skip
    assert r.returncode == FINDINGS_EXIT, r.stderr
    assert "2 finding(s) of --fail-on rules: blocking-index, fk-validation" in r.stderr
    out = r.stdout  # the human report: a compact table per migration
    assert (
        "== 004-plain-index.sql (on the target, transactional; strongest lock ShareLock on "
        "public.t_index, held" in out
    )
    assert "public.t_default AccessExclusive" in out
    assert "blocking-index" in out and "fix: CREATE INDEX CONCURRENTLY" in out
    _, code, err = analyze_json(target, folder, "--fail-on", "enum-in-transaction")
    assert code == 0, err
    # thresholds: with more rows required than the tables have, scans and rewrites are fine
    doc, code, err = analyze_json(target, folder, "--fail-on", "all", "--min-rows", "201")
    assert code == FINDINGS_EXIT  # access-exclusive-held is about time, not rows
    assert {f["rule"] for f in doc["findings"]} == {"access-exclusive-held"}
    _, code, err = analyze_json(
        target, folder, "--fail-on", "all", "--min-rows", "201", "--max-lock-ms", "60000"
    )
    assert code == 0, err
    r = run_cli("up", "--dry-run", "--analyze", "--url", target, "--fail-on", "no-such-rule")
    assert r.returncode == 2 and "unknown rule(s) for --fail-on: no-such-rule" in r.stderr
    r = run_cli("up", "--url", target, "--migrations-path", str(folder), "--json")
    assert r.returncode == 2 and "need --analyze" in r.stderr
    assert meta_rows(target) == ()


def test_enum_added_then_used_by_the_next_migration_is_rehearsed_on_a_copy(
    target: str, db: psycopg.Connection
) -> None:
    # one rolled-back transaction cannot rehearse it (55P04: the value is used in the transaction
    # that added it); the plain dry run, too, goes on on a copy and succeeds as the real run does
    r = run_cli("up", "--dry-run", "--url", target, "--migrations-path", str(ANALYZE / "enum-pair"))
    assert r.returncode == 0, r.stderr
    assert "rehearsed on a schema-only copy from 002-use-value.sql" in r.stderr
    assert "55P04" in r.stderr
    assert "INSERT INTO moods VALUES (1, 'happy');" in r.stdout
    assert "ALTER TYPE mood ADD VALUE 'happy';" in r.stdout
    doc, code, err = analyze_json(target, ANALYZE / "enum-pair")
    assert code == 0, err
    st = by_migration(doc)
    assert [s["where"] for s in st["001-add-value.sql"]] == ["target"]
    use = st["002-use-value.sql"]
    assert [(s["where"], s["rows"]) for s in use] == [("copy", 1)]
    assert locks(use[0]) == {("public.moods", "RowExclusiveLock")}
    assert "002-use-value.sql" in doc["copy"]["reason"] and "enum" in doc["copy"]["reason"]
    assert doc["copy"]["database"].startswith("migrunner_rehearsal_")
    assert doc["findings"] == []  # the real run commits 001 before 002: nothing wrong
    assert db.execute("SELECT enum_range(NULL::mood)::text").fetchone() == ("{ok}",)
    assert_untouched(db)
    # ... and the real run does succeed
    up = run_cli("up", "--url", target, "--migrations-path", str(ANALYZE / "enum-pair"))
    assert up.returncode == 0, up.stderr


def test_enum_added_and_used_in_one_migration_is_a_finding(target: str) -> None:
    doc, code, err = analyze_json(target, ANALYZE / "enum-same", "--fail-on", "enum-in-transaction")
    assert code == FINDINGS_EXIT, err
    (mig,) = doc["migrations"]
    assert mig["where"] == "copy" and mig["transactional"] is False
    assert "55P04" in mig["note"]
    assert rules(doc) == {("enum-in-transaction", "001-add-and-use.sql", None)}


def test_on_copy_takes_no_lock_on_the_target(target: str, db: psycopg.Connection) -> None:
    # rows come from the target's statistics, which may not know these fresh tables yet;
    # --min-rows 0 judges the statements alone
    doc, code, err = analyze_json(target, ANALYZE / "sql", "--on-copy", "--min-rows", "0")
    assert code == 0, err
    assert {s["where"] for s in doc["statements"]} == {"copy"}
    assert doc["copy"]["reason"] == "--on-copy"
    st = by_migration(doc)
    # each migration committed on its own, as the real run: its locks are all its own
    assert locks(ddl(st["004-plain-index.sql"])) == {("public.t_index", "ShareLock")}
    assert st["001-volatile-default.sql"][0]["rewrites"] == ["public.t_default"]
    assert ("blocking-index", "004-plain-index.sql", "public.t_index") in rules(doc)
    assert not any(f["migration"] == "009-concurrent-index.sql" for f in doc["findings"])
    assert_untouched(db)


@pytest.fixture
def reader(target: str) -> Iterator[psycopg.Connection]:
    """A session of the app holding ACCESS SHARE on t_default in an open transaction."""
    conn = psycopg.connect(target, autocommit=True, application_name="reader-app")
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM t_default")
    try:
        yield conn
    finally:
        conn.close()


def held_by(db: psycopg.Connection, pid: int, relation: str, granted: bool = True) -> bool:
    row = db.execute(
        "SELECT count(*) FROM pg_locks WHERE pid = %s AND relation = %s::regclass AND granted = %s",
        (pid, relation, granted),
    ).fetchone()
    return bool(row and row[0])


def test_a_reader_blocking_the_rehearsal_is_named(
    target: str, db: psycopg.Connection, reader: psycopg.Connection
) -> None:
    pid = reader.info.backend_pid
    assert held_by(db, pid, "t_default")  # the reader's ACCESS SHARE is granted: go
    doc, code, err = analyze_json(
        target, ANALYZE / "sql", "--statement-lock-timeout", "0.5", "--fail-on", "lock-blocked"
    )
    assert code == FINDINGS_EXIT, err
    (b,) = doc["blockers"]
    assert b["pid"] == pid and b["application_name"] == "reader-app"
    assert b["user"] == "postgres" and b["state"] == "idle in transaction"
    assert b["query"] == "SELECT count(*) FROM t_default" and b["transaction_age_s"] > 0
    assert b["waiting_for"] == {"relation": "public.t_default", "mode": "AccessExclusiveLock"}
    assert b["migration"] == "001-volatile-default.sql"
    assert ("lock-blocked", "001-volatile-default.sql", "public.t_default") in rules(doc)
    # the rest of the plan was still rehearsed, on a copy
    assert {s["where"] for s in doc["statements"]} == {"copy"}
    assert len(doc["migrations"]) == 9


def test_lock_status_names_who_blocks_a_real_run(
    target: str, db: psycopg.Connection, reader: psycopg.Connection
) -> None:
    pid = reader.info.backend_pid
    folder = ANALYZE / "sql"
    up = popen_cli(
        "up", "--url", target, "--migrations-path", str(folder), "--statement-lock-timeout", "60"
    )
    try:
        # synchronise on the server: the runner's backend is queued behind the reader
        waiter = None
        deadline = time.monotonic() + 60
        while waiter is None and time.monotonic() < deadline and up.poll() is None:
            row = db.execute(
                "SELECT pid FROM pg_locks WHERE relation = 't_default'::regclass AND NOT granted"
            ).fetchone()
            waiter = row[0] if row else None
        assert waiter is not None, "the run never waited for t_default"
        r = run_cli("lock", "status", "--json", "--url", target)
        assert r.returncode == 3, r.stderr
        info = json.loads(r.stdout)
        (b,) = info["blocked_by"]
        assert b["pid"] == pid and b["waiter_pid"] == waiter
        assert b["application_name"] == "reader-app"
        assert b["waiting_for"] == {"relation": "public.t_default", "mode": "AccessExclusiveLock"}
        text = run_cli("lock", "status", "--url", target).stdout
        assert f"blocked by pid {pid}" in text and "'reader-app'" in text
    finally:
        reader.execute("ROLLBACK")
        _, errs = up.communicate(timeout=60)
    assert up.returncode == 0, errs


def test_rules_are_pure_and_skip_tables_the_plan_creates() -> None:
    from runner.analyze import Lock

    st = StatementObs(
        migration="m",
        sql="CREATE INDEX i ON fresh (a)",
        locks=[Lock("public.fresh", "ShareLock")],
        rewrites=[],
        rows=None,
        duration_ms=1.0,
        started=0.0,
    )
    mig = MigrationObs("m", "target", True, 0.0, 1.0, [st])
    created = Facts(rows={"public.fresh": 5000}, created=frozenset({"public.fresh"}))
    assert analyze([mig], created, Thresholds()) == []
    existing = Facts(rows={"public.fresh": 5000}, created=frozenset())
    (f,) = analyze([mig], existing, Thresholds())
    assert f.rule == "blocking-index" and "5000+ rows" in f.message
    assert set(RULES) >= {f.rule}


def test_analyze_with_nothing_pending_prints_an_empty_document(target: str, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "001.sql").write_text("-- migrate:up\nSELECT 1;\n-- migrate:down\nSELECT 1;\n")
    assert run_cli("up", "--url", target, "--migrations-path", str(folder)).returncode == 0
    doc, code, err = analyze_json(target, folder)
    assert code == 0, err
    assert doc["statements"] == [] and doc["findings"] == [] and doc["blockers"] == []


def test_preflight_refuses_while_an_old_transaction_holds_a_needed_table(
    target: str, db: psycopg.Connection, reader: psycopg.Connection, in_txn: Path
) -> None:
    assert held_by(db, reader.info.backend_pid, "t_default")
    r = run_cli(
        "up", "--preflight", "0", "--wait-timeout", "0", "--statement-lock-timeout", "0.3",
        "--url", target, "--migrations-path", str(in_txn),
    )  # fmt: skip
    assert r.returncode == PREFLIGHT_EXIT, r.stderr
    assert "preflight: sessions older than 0s hold locks the plan needs: pid" in r.stderr
    assert f"pid {reader.info.backend_pid} user postgres app 'reader-app'" in r.stderr
    assert meta_rows(target) == ()  # nothing ran


def test_preflight_waits_for_the_old_transaction_then_runs(
    target: str, reader: psycopg.Connection, in_txn: Path
) -> None:
    up = popen_cli(
        "up", "--preflight", "0", "--wait-timeout", "60", "--statement-lock-timeout", "0.3",
        "--url", target, "--migrations-path", str(in_txn),
    )  # fmt: skip
    assert up.stderr is not None
    try:
        for line in up.stderr:  # synchronise on what the runner says it is waiting for
            if "preflight: waiting for" in line:
                assert "'reader-app'" in line
                break
        else:
            raise AssertionError("the preflight never waited")
    finally:
        reader.execute("ROLLBACK")
    _, errs = up.communicate(timeout=60)
    assert up.returncode == 0, errs
    assert len(meta_rows(target)) == 8


def test_a_copy_without_createdb_is_a_clear_error(
    target: str, db: psycopg.Connection, pg_server: str
) -> None:
    role = f"mr_nocreatedb_{uuid.uuid4().hex[:8]}"
    dbname = target.rsplit("/", 1)[1]
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
        admin.execute(f'GRANT ALL ON DATABASE "{dbname}" TO "{role}"')
    db.execute(f'GRANT ALL ON SCHEMA public TO "{role}"')
    db.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
    try:
        url = target.replace("postgres@", f"{role}@", 1)
        r = run_cli(
            "up", "--dry-run", "--analyze", "--on-copy", "--url", url,
            "--migrations-path", str(ANALYZE / "enum-pair"),
        )  # fmt: skip
        assert r.returncode == 2, r.stderr
        # stdout is the dry run's document, so its progress lines are on stderr too
        (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert line.startswith("error: cannot rehearse on a copy: CREATE DATABASE failed on")
        assert "(the role needs CREATEDB)" in line
        assert "Traceback" not in r.stderr
    finally:
        db.execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{role}"')
        db.execute(f'REVOKE ALL ON SCHEMA public FROM "{role}"')
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f'REVOKE ALL ON DATABASE "{dbname}" FROM "{role}"')
            admin.execute(f'DROP ROLE "{role}"')


def test_dry_run_without_pg_dump_says_why_it_cannot_go_on(target: str) -> None:
    r = run_cli(
        "up", "--dry-run", "--url", target, "--migrations-path", str(ANALYZE / "enum-pair"),
        env={"PATH": "/nonexistent"},
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert "[SQLSTATE 55P04]" in line and "002-use-value.sql" in line
    assert (
        "rehearsing it on a copy failed: cannot rehearse on a copy: pg_dump is not installed"
        in line
    )
