"""`migrunner fleet up|status` over real tenant databases and schemas.

Each test creates its own tenants (databases with a per-test prefix, or schemas in the test's
database) and checks what landed in every one of them: SequelizeMeta, the history's
``applied`` rows, the tables. The example SQL folder keeps 20-tenant runs fast.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from runner.errors import ConfigError
from runner.fleet import (
    Shard,
    TargetResult,
    fleet_exit_code,
    make_target,
    parse_target_lines,
    shard_of,
    targets_from_values,
    with_search_path,
)
from tests.conftest import FIXTURES, popen_cli, run_cli
from tests.support.pg import with_database

EXAMPLE = FIXTURES / "example" / "migrations"
EXAMPLE_NAMES = sorted(p.name for p in EXAMPLE.iterdir())
PINNED_SHARDS = [1, 0, 0, 0, 1, 2, 3, 1]  # sha256-based: the same in every release


@pytest.fixture
def tenants(pg_server: str) -> Iterator[list[str]]:
    """20 empty tenant databases (URLs), dropped afterwards."""
    prefix = f"mrt_fleet_{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}_{i:02d}" for i in range(20)]
    with psycopg.connect(pg_server, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield [with_database(pg_server, n) for n in names]
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            for name in names:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def targets_file(tmp_path: Path, urls: list[str]) -> Path:
    path = tmp_path / "targets.txt"
    path.write_text("# tenants of the test\n\n" + "\n".join(urls) + "\n")
    return path


def applied(url: str, schema: str = "public") -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        ref = f'"{schema}"."SequelizeMeta"'
        if conn.execute("SELECT to_regclass(%s)", (ref,)).fetchone() == (None,):
            return []
        return [r[0] for r in conn.execute(f"SELECT name FROM {ref} ORDER BY name")]


def applied_rows(url: str, schema: str = "public") -> list[str]:
    """Every ``applied`` history row: a migration run twice would show twice."""
    with psycopg.connect(url, autocommit=True) as conn:
        return [
            r[0]
            for r in conn.execute(
                f'SELECT name FROM "{schema}".migrunner_history '
                "WHERE outcome = 'applied' ORDER BY name"
            )
        ]


def fleet(*args: str, timeout: float = 180) -> tuple[int, dict, str]:
    proc = run_cli("fleet", *args, "--migrations-path", str(EXAMPLE), "--json", timeout=timeout)
    doc = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, doc, proc.stderr


def test_one_broken_tenant_does_not_stop_the_others_and_a_rerun_resumes(
    tenants: list[str], tmp_path: Path
) -> None:
    broken = tenants[7]
    with psycopg.connect(broken, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int)")  # the first migration creates "users"
    path = targets_file(tmp_path, tenants)

    code, doc, err = fleet("up", "--targets", str(path), "--parallel", "3")

    assert code == 1, err
    label = broken.rsplit("/", 1)[1]
    failed = [t for t in doc["targets"] if t["outcome"] == "failed"]
    assert [t["target"] for t in failed] == [label]
    assert "already exists" in failed[0]["error"] and failed[0]["exit_code"] == 1
    assert f"FAILED {label}" in err
    assert doc["summary"] == {"total": 20, "done": 19, "failed": 1, "skipped": 0}
    for url in tenants:
        assert applied(url) == ([] if url == broken else EXAMPLE_NAMES)

    with psycopg.connect(broken, autocommit=True) as conn:
        conn.execute("DROP TABLE users")
    code, doc, err = fleet("up", "--targets", str(path), "--parallel", "3")

    assert code == 0, err
    assert doc["summary"]["done"] == 20
    by_target = {t["target"]: t["applied"] for t in doc["targets"]}
    assert by_target[label] == EXAMPLE_NAMES  # only the broken one had work left
    assert all(v == [] for k, v in by_target.items() if k != label)
    for url in tenants:
        assert applied_rows(url) == EXAMPLE_NAMES


def test_three_shards_at_once_cover_every_tenant_exactly_once(
    tenants: list[str], tmp_path: Path
) -> None:
    path = targets_file(tmp_path, tenants)
    common = ["--targets", str(path), "--migrations-path", str(EXAMPLE), "--json"]
    procs = [popen_cli("fleet", "up", "--shard", f"{i}/3", *common) for i in (0, 1)]
    # The third takes its index the way an Indexed Job's pod does.
    procs.append(
        popen_cli("fleet", "up", "--shards", "3", *common, env={"JOB_COMPLETION_INDEX": "2"})
    )
    covered: list[set[str]] = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        doc = json.loads(out)
        covered.append({t["target"] for t in doc["targets"] if t["applied"] == EXAMPLE_NAMES})
        assert {t["target"] for t in doc["targets"]} == covered[-1]  # did all it was given

    assert all(covered), covered  # each shard has a part
    assert sum(len(c) for c in covered) == 20
    assert set().union(*covered) == {u.rsplit("/", 1)[1] for u in tenants}
    for url in tenants:
        assert applied_rows(url) == EXAMPLE_NAMES


def test_two_fleets_over_the_same_tenants_apply_each_migration_once(
    tenants: list[str], tmp_path: Path
) -> None:
    path = targets_file(tmp_path, tenants[:10])
    args = ["fleet", "up", "--targets", str(path), "--migrations-path", str(EXAMPLE)]
    procs = [popen_cli(*args, "--parallel", "2") for _ in range(2)]
    for proc in procs:
        _out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    for url in tenants[:10]:
        assert applied_rows(url) == EXAMPLE_NAMES


def test_schema_per_tenant_keeps_its_own_sequelize_meta(db_url: str) -> None:
    schemas = ["tenant_a", "tenant_b", "Tenant C"]
    with psycopg.connect(db_url, autocommit=True) as conn:
        for s in schemas:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(s)))
    select = "SELECT nspname FROM pg_namespace WHERE nspname ILIKE 'tenant%' ORDER BY 1"

    code, doc, err = fleet("up", "--url", db_url, "--schemas-sql", select, "--parallel", "2")

    assert code == 0, err
    assert sorted(t["schema"] for t in doc["targets"]) == sorted(schemas)
    with psycopg.connect(db_url, autocommit=True) as conn:
        for s in schemas:
            assert applied(db_url, s) == EXAMPLE_NAMES
            assert applied_rows(db_url, s) == EXAMPLE_NAMES
            tables = {
                r[0]
                for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (s,))
            }
            assert {"users", "posts", "SequelizeMeta"} <= tables
        # nothing landed in public
        assert conn.execute("SELECT to_regclass('public.users')").fetchone() == (None,)

    code, doc, err = fleet("status", "--url", db_url, "--schemas-sql", select)
    assert code == 0, err
    assert [t["pending"] for t in doc["targets"]] == [0, 0, 0]


def test_a_failing_canary_stops_the_fleet(tenants: list[str], tmp_path: Path) -> None:
    with psycopg.connect(tenants[0], autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int)")
    path = targets_file(tmp_path, tenants[:6])

    code, doc, err = fleet("up", "--targets", str(path), "--canary", "2", "--parallel", "2")

    assert code == 1
    assert "a canary failed" in err
    outcomes = [(t["canary"], t["outcome"]) for t in doc["targets"]]
    assert outcomes[:2] == [(True, "failed"), (True, "done")]
    assert outcomes[2:] == [(False, "skipped")] * 4
    assert all(applied(u) == [] for u in tenants[2:6])


def test_status_counts_pending_per_tenant_and_gates_with_exit_code(
    tenants: list[str], tmp_path: Path
) -> None:
    path = targets_file(tmp_path, tenants[:3])
    run = run_cli("up", "--url", tenants[1], "--migrations-path", str(EXAMPLE))
    assert run.returncode == 0, run.stderr

    code, doc, err = fleet("status", "--targets", str(path), "--exit-code")

    assert code == 3, err
    assert [t["pending"] for t in doc["targets"]] == [len(EXAMPLE_NAMES), 0, len(EXAMPLE_NAMES)]


def test_passwords_of_targets_never_appear(pg_server: str, tmp_path: Path) -> None:
    secret = "Sup3rS3cretPw"
    host_url = pg_server.replace("postgres@", f"postgres:{secret}@", 1)
    urls = [with_database(host_url, "mrt_fleet_no_such_db_1"), "postgresql://x:" + secret + "@"]
    path = targets_file(tmp_path, urls[:1])

    code, doc, err = fleet("up", "--targets", str(path))
    assert code == 2  # no such database: a configuration error
    assert secret not in err and secret not in json.dumps(doc)
    assert doc["targets"][0]["target"] == "mrt_fleet_no_such_db_1"

    bad = tmp_path / "bad.txt"
    bad.write_text(urls[0] + "\nmysql://u:" + secret + "@h/db\n")
    proc = run_cli("fleet", "up", "--targets", str(bad), "--migrations-path", str(EXAMPLE))
    assert proc.returncode == 2
    assert "line 2" in proc.stderr and secret not in proc.stderr + proc.stdout


# ---- pure parts ----------------------------------------------------------------------------


def test_target_lines_skip_comments_and_refuse_duplicates() -> None:
    lines = ["# a", "", "postgresql://u@h:5433/t1", "  postgres://u:pw@h:5433/t2  "]
    targets = parse_target_lines(lines, "t")
    assert [t.label for t in targets] == ["t1", "t2"]
    assert [t.key for t in targets] == ["h:5433/t1", "h:5433/t2"]
    assert "pw" not in repr(targets)
    with pytest.raises(ConfigError, match="listed twice"):
        parse_target_lines([lines[2], lines[2]], "t")


def test_shards_are_stable_disjoint_and_cover_the_list() -> None:
    targets = [make_target({"host": "h", "dbname": f"tenant_{i}"}) for i in range(200)]
    shards = [Shard.parse(f"{i}/4") for i in range(4)]
    parts = [[t.key for t in targets if s.holds(t)] for s in shards]
    assert sorted(k for p in parts for k in p) == sorted(t.key for t in targets)
    assert all(20 < len(p) < 80 for p in parts)
    # a target's shard depends on its own key only, pinned so a release cannot move tenants
    assert [shard_of(f"h:5432/tenant_{i}", 4) for i in range(8)] == PINNED_SHARDS
    for bad in ("4/4", "x", "1/0", "-1/3"):
        with pytest.raises(ConfigError):
            Shard.parse(bad)


def test_schema_targets_quote_the_search_path() -> None:
    base = {"host": "h", "dbname": "d", "options": "-c work_mem=4MB"}
    (target,) = targets_from_values(['We "ird" s'], base, schemas=True, where="x")
    assert target.conninfo["options"] == '-c work_mem=4MB -c search_path="We\\ ""ird""\\ s",public'
    assert target.label == 'd/We "ird" s' and target.schema == 'We "ird" s'
    assert with_search_path({}, "a")["options"] == '-c search_path="a",public'


def test_exit_code_prefers_retryable_only_when_every_failure_is() -> None:
    t = make_target({"dbname": "x"})

    def failed(code: int) -> TargetResult:
        return TargetResult(t, "failed", exit_code=code)

    assert fleet_exit_code([TargetResult(t, "done")]) == 0
    assert fleet_exit_code([failed(5), failed(4)]) == 5
    assert fleet_exit_code([failed(6), failed(6)]) == 6
    assert fleet_exit_code([failed(5), failed(1), failed(6)]) == 1


def test_js_fleet_boots_one_node_per_worker_not_per_tenant(
    tenants: list[str], tmp_path: Path
) -> None:
    """Six tenants, two workers: sequelize is loaded twice at most (once per node process),
    where a shell loop of sequelize-cli loads it six times."""
    app = FIXTURES / "image"
    select = "SELECT " + " UNION ALL SELECT ".join(
        f"'{u}'" for u in tenants[:6]
    )  # URLs, not names: the other form of --targets-sql
    proc = run_cli(
        "fleet",
        "up",
        "--url",
        tenants[0],
        "--migrations-path",
        str(app / "src" / "migrations"),
        "--targets-sql",
        select,
        "--parallel",
        "2",
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    boots = [ln for ln in proc.stdout.splitlines() if "using sequelize" in ln]  # run log: stdout
    assert 1 <= len(boots) <= 2, boots
    names = sorted(p.name for p in (app / "src" / "migrations").iterdir())
    for url in tenants[:6]:
        assert applied(url) == names


def test_fail_fast_stops_starting_targets_and_stdin_lists_them(
    tenants: list[str], tmp_path: Path
) -> None:
    with psycopg.connect(tenants[1], autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int)")
    proc = run_cli(
        "fleet",
        "up",
        "--targets",
        "-",
        "--migrations-path",
        str(EXAMPLE),
        "--fail-fast",
        "--json",
        input="\n".join(tenants[:5]) + "\n",
    )
    assert proc.returncode == 1, proc.stderr
    outcomes = [t["outcome"] for t in json.loads(proc.stdout)["targets"]]
    assert outcomes == ["done", "failed", "skipped", "skipped", "skipped"]
    assert applied(tenants[0]) == EXAMPLE_NAMES
    assert all(applied(u) == [] for u in tenants[1:5])
