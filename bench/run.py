"""Benchmark harness: migrunner vs sequelize-cli vs the psql floor, on real PostgreSQL and node.

Run from the repository root::

    .venv/bin/python bench/run.py            # full run (~5 min on 2 cores), writes bench/RESULTS.md
    .venv/bin/python bench/run.py --quick    # smoke mode: 1 run, 20 generated migrations

Every measured run gets a fresh database (created from an empty or a pre-migrated template
outside the timed region) and is checked afterwards (exit code, ``SequelizeMeta`` row count),
so a fast failure is never reported as a fast run. Tools alternate run by run (A B A B ...)
after the warm-up runs, so drift of the machine's state hits every tool alike.

Results: ``bench/results/latest.json`` (every figure), a table on stdout, and with a full run
``bench/RESULTS.md`` (the table, the machine and the versions) for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from measure import MIB, Run, run_tree
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from workloads import write_js_app, write_sql, write_sql_concat

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
NODE_DIR = BENCH / "node"
SEQUELIZE_CLI = NODE_DIR / "node_modules" / ".bin" / "sequelize-cli"
DBMATE_DIR = BENCH / "dbmate"
# The native binary the npm package ships (its bin entry is a node wrapper that would add a
# node start to every dbmate run): dbmate measured as fast as it can be run.
DBMATE = DBMATE_DIR / "node_modules" / "@dbmate" / "linux-x64" / "bin" / "dbmate"
FORUM = ROOT / "tests" / "fixtures" / "forum"
EXAMPLE = ROOT / "tests" / "fixtures" / "example" / "migrations"
LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SUCCESS = "Migrations completed successfully"
FORUM_ARGS = [
    "--config",
    "src/config/database.js",
    "--migrations-path",
    "src/migrations",
    "--env",
    "production",
]
JS_ARGS = [
    "--config",
    "config/database.js",
    "--migrations-path",
    "migrations",
    "--env",
    "production",
]


# --------------------------------------------------------------------------- the database


class Server:
    """Scratch databases on the benchmark's PostgreSQL server; all dropped on close."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.params = conninfo_to_dict(url)
        self.prefix = f"mrbench_{os.getpid()}"
        self.created: list[str] = []
        self.counter = 0

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True)

    def create(self, template: str | None = None, name: str | None = None) -> str:
        self.counter += 1
        name = name or f"{self.prefix}_{self.counter}"
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            stmt += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with self.admin() as conn:
            conn.execute(stmt)
        self.created.append(name)
        return name

    def drop(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        if name in self.created:
            self.created.remove(name)

    def close(self) -> None:
        for name in list(self.created):
            for attempt in range(10):  # the server may be restarting (other tests on it)
                try:
                    self.drop(name)
                    break
                except psycopg.OperationalError:
                    time.sleep(0.5 * (attempt + 1))

    def drop_stale(self) -> None:
        """Drop databases left by a harness that was killed (its pid is gone). Only on a local
        server: a pid says nothing about a harness on another machine."""
        if str(self.params.get("host") or "localhost") not in ("localhost", "127.0.0.1", "::1"):
            return
        with self.admin() as conn:
            names = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
        for name in names:
            m = re.fullmatch(r"mrbench_(\d+)_.*", name)
            if m and int(m.group(1)) != os.getpid() and not Path(f"/proc/{m.group(1)}").exists():
                self.drop(name)

    def ready(self) -> bool:
        try:
            with self.admin() as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def wait_ready(self, timeout: float = 300.0) -> None:
        """The shared server may be restarted by other work on the machine: wait for it."""
        deadline = time.monotonic() + timeout
        while not self.ready() and time.monotonic() < deadline:
            time.sleep(1.0)

    def db_url(self, name: str) -> str:
        return urlunsplit(urlsplit(self.url)._replace(path="/" + name))

    def scalar(self, dbname: str, query: str) -> Any:
        with psycopg.connect(self.db_url(name=dbname), autocommit=True) as conn:
            row = conn.execute(query).fetchone()
        return row[0] if row else None

    def meta_rows(self, dbname: str, table: str = "SequelizeMeta") -> int:
        """Rows in the tool's bookkeeping table (0 when it does not exist): SequelizeMeta, or
        dbmate's schema_migrations."""
        ref = f'public."{table}"'
        exists = self.scalar(dbname, f"SELECT to_regclass('{ref}') IS NOT NULL")
        if not exists:
            return 0
        return int(self.scalar(dbname, f"SELECT count(*) FROM {ref}"))

    def env(self, dbname: str) -> dict[str, str]:
        """The same database for every tool, the way each one reads it: DB_* (the Job's
        ConfigMap/Secret, read by the Sequelize configs), DATABASE_URL, and PG* for psql."""
        p = self.params
        env = {
            "DB_HOST": str(p.get("host") or "127.0.0.1"),
            "DB_PORT": str(p.get("port") or 5432),
            "DB_NAME": dbname,
            "DB_USER": str(p.get("user") or "postgres"),
            "DATABASE_URL": self.db_url(dbname),
            "PGHOST": str(p.get("host") or "127.0.0.1"),
            "PGPORT": str(p.get("port") or 5432),
            "PGUSER": str(p.get("user") or "postgres"),
            "PGDATABASE": dbname,
            "NODE_ENV": "production",
        }
        if p.get("password"):
            env["DB_PASSWORD"] = env["PGPASSWORD"] = str(p["password"])
        return env


def base_env() -> dict[str, str]:
    """The harness's environment without anything that would pick another database."""
    drop = ("DB_", "PG", "DATABASE_URL", "MIGRUNNER_", "NODE_ENV", "NODE_OPTIONS")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One tool doing one operation on one workload."""

    workload: str
    op: str
    tool: str
    argv: list[str]
    cwd: Path
    expect_meta: int  # SequelizeMeta rows after a correct run
    template: str | None = None  # starting state (None: empty database)
    copies: int = 1  # processes started together
    must_succeed: bool = True  # False: sequelize-cli racing itself; failures are the finding
    success_line: str | None = None
    meta_table: str = "SequelizeMeta"  # dbmate: schema_migrations
    # changes nothing (a no-op, status): run on the template itself, no copy per run (copying
    # and dropping a database of 10,000 migrations costs a checkpoint each, ~30 s here)
    read_only: bool = False


@dataclass
class Result:
    case: Case
    runs: list[Run] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)  # non-zero exits per run (copies > 1)
    reasons: Counter[str] = field(default_factory=Counter)  # why processes failed, all runs


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "all": values,
    }


def result_json(r: Result) -> dict[str, Any]:
    out: dict[str, Any] = {
        "argv": r.case.argv if r.case.tool != "psql" else [*r.case.argv[:1], "..."],
        "copies": r.case.copies,
        "runs": len(r.runs),
        "errors": r.errors,
    }
    if r.runs:
        out["wall_s"] = summary([x.wall_s for x in r.runs])
        out["peak_rss_mib"] = summary([x.peak_rss / MIB for x in r.runs])
        out["hwm_sum_mib"] = summary([x.hwm_sum / MIB for x in r.runs])
        out["max_process_mib"] = summary([x.max_hwm / MIB for x in r.runs])
        out["cpu_s"] = summary([x.cpu_s for x in r.runs])
        out["processes"] = max(x.processes for x in r.runs)
        out["samples"] = min(x.samples for x in r.runs)
        out["strays"] = max(x.strays for x in r.runs)
    if r.case.copies > 1:
        out["failed_processes"] = r.failures
        out["failure_reasons"] = dict(r.reasons.most_common(5))
    return out


def tool_key(case: Case) -> str:
    return case.tool + (f" x{case.copies}" if case.copies > 1 else "")


def tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


class Bench:
    def __init__(self, server: Server, args: argparse.Namespace, work: Path) -> None:
        self.server = server
        self.args = args
        self.work = work
        self.templates: dict[str, str | None] = {}  # key -> template db (None: setup failed)
        self.template_errors: dict[str, str] = {}

    def command_env(self, dbname: str) -> dict[str, str]:
        env = base_env()
        env.update(self.server.env(dbname))
        # dbmate's own variable: lib/pq would insist on TLS unless the URL says otherwise
        url = env["DATABASE_URL"]
        if "sslmode" not in url:
            url += ("&" if "?" in url else "?") + "sslmode=disable"
        env["DBMATE_BENCH_URL"] = url
        return env

    def execute(self, case: Case, dbname: str, log_dir: Path) -> Run:
        argv = [case.argv] * case.copies
        return run_tree(
            argv,
            env=self.command_env(dbname),
            cwd=case.cwd,
            log_dir=log_dir,
            timeout=self.args.timeout,
            # sampling 32 trees costs the harness ~20% of a core at 3 ms: sample those slower
            interval=0.005 if case.copies == 1 else 0.025,
        )

    def template(self, key: str, setup: Case) -> str | None:
        """A database migrated once by ``setup`` (untimed), copied for each measured run."""
        if key not in self.templates:
            name = self.server.create(name=f"{self.server.prefix}_tpl_{key}")
            run = self.execute(setup, name, self.work / "logs" / f"tpl-{key}")
            error = check(run, setup, self.server.meta_rows(name, setup.meta_table))
            if error:
                self.templates[key] = None
                self.template_errors[key] = f"setup ({' '.join(setup.argv[-8:])}): {error}"
                print(f"  setup {key} FAILED: {error}", flush=True)
            else:
                self.templates[key] = name
        return self.templates[key]

    def measure(self, cases: list[Case], runs: int, warmup: int) -> list[Result]:
        """Alternate the cases run by run (A B A B ...); warm-up runs are not kept."""
        results = [Result(c) for c in cases]
        for i in range(warmup + runs):
            for res in results:
                c = res.case
                if c.template is not None and self.templates.get(c.template) is None:
                    msg = self.template_errors.get(c.template, "no template")
                    if msg not in res.errors:
                        res.errors.append(msg)
                    continue
                if len(res.errors) >= 2:  # a broken tool: do not burn the time budget
                    continue
                tpl = self.templates.get(c.template) if c.template else None
                label = f"{c.workload}-{c.op}-{c.tool}-{c.copies}-{i}"
                for _attempt in range(3):  # a run the server's restart broke is run again
                    self.server.wait_ready()
                    try:
                        if c.read_only and tpl:
                            run = self.execute(c, tpl, self.work / "logs" / label)
                            error = check(run, c, self.server.meta_rows(tpl, c.meta_table))
                            break
                        db = self.server.create(template=tpl)
                        try:
                            run = self.execute(c, db, self.work / "logs" / label)
                            error = check(run, c, self.server.meta_rows(db, c.meta_table))
                        finally:
                            self.server.drop(db)
                    except psycopg.OperationalError as exc:
                        print(f"  server unavailable ({str(exc).strip()[:80]}): again", flush=True)
                        continue
                    if not error or self.server.ready():
                        break
                    print("  the server went away during the run: again", flush=True)
                status = "warm-up" if i < warmup else f"run {i - warmup + 1}/{runs}"
                line = (
                    f"  {c.workload:<16} {c.op:<7} {c.tool:<14} x{c.copies:<3} {status:<9} "
                    f"{run.wall_s:7.3f}s {run.peak_rss / MIB:7.1f} MiB"
                )
                if c.copies > 1:
                    line += f"  failed {sum(1 for x in run.exit_codes if x)}/{c.copies}"
                print(line + (f"  ERROR {error}" if error else ""), flush=True)
                if i >= warmup:
                    res.reasons.update(short_reason(x) for x in run.failure_lines)
                if error:
                    res.errors.append(error)
                elif i >= warmup:
                    res.runs.append(run)
                    res.failures.append(sum(1 for x in run.exit_codes if x))
        return results


def short_reason(line: str) -> str:
    """A failure line without what differs between runs (database names, timings)."""
    line = re.sub(r"mrbench_\w+", "<db>", line)
    return re.sub(r"\d+(\.\d+)?s\b", "<n>s", line)[:200]


def check(run: Run, case: Case, meta: int) -> str | None:
    """Why this run does not count (None: it did what it should)."""
    if run.timed_out:
        return f"timed out; last output: {tail(run.stderr or run.stdout)}"
    if not case.must_succeed:
        return None
    bad = [c for c in run.exit_codes if c != 0]
    if bad and len(run.exit_codes) > 1:
        common = Counter(short_reason(x) for x in run.failure_lines).most_common(1)[0][0]
        return f"{len(bad)}/{len(run.exit_codes)} processes failed, e.g. {common}"
    if bad:
        return f"exit {bad[0]}: {tail(run.stderr or run.stdout)}"
    if meta != case.expect_meta:
        return f"SequelizeMeta has {meta} rows, expected {case.expect_meta}"
    if case.success_line and case.success_line not in run.stdout + run.stderr:
        return f"no {case.success_line!r} line"
    return None


# --------------------------------------------------------------------------- preparation


def ensure_node(prefix: Path) -> None:
    """``npm ci`` a pinned node project when its node_modules is missing."""
    if not (prefix / "node_modules" / ".package-lock.json").is_file():
        print(f"npm ci --prefix {prefix.relative_to(ROOT)}", flush=True)
        subprocess.run(
            ["npm", "ci", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error"],
            check=True,
        )


def forum_dump(bench: Bench, out: Path) -> Path | None:
    """The forum app's end state as one SQL file: ``pg_dump --schema-only`` of a database
    migrated by sequelize-cli, plus its SequelizeMeta rows."""
    tpl = bench.templates.get("forum-sequelize-cli")
    if tpl is None:
        return None
    env = bench.command_env(tpl)
    schema = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", "--no-privileges"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data = subprocess.run(
        ["pg_dump", "--data-only", "--table", '"SequelizeMeta"'],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out.write_text(schema + data)
    return out


def versions(server: Server) -> dict[str, str]:
    def cmd(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "n/a"

    def npm_version(pkg: str) -> str:
        path = NODE_DIR / "node_modules" / pkg / "package.json"
        return str(json.loads(path.read_text())["version"]) if path.is_file() else "n/a"

    rev = cmd("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    dirty = cmd(
        "git", "-C", str(ROOT), "status", "--porcelain", "--", "runner", "migrations_compat"
    )
    with server.admin() as conn:
        row = conn.execute("SHOW server_version").fetchone()
    import pglast

    return {
        "python": platform.python_version(),
        "node": cmd("node", "--version"),
        "postgresql": str(row[0]) if row else "n/a",
        "psql": cmd("psql", "--version"),
        "sequelize": npm_version("sequelize"),
        "sequelize-cli": npm_version("sequelize-cli"),
        "pg": npm_version("pg"),
        "dbmate": cmd(str(DBMATE), "--version").removeprefix("dbmate version ") or "n/a",
        "psycopg": psycopg.__version__,
        "pglast": str(getattr(pglast, "__version__", "n/a")),
        "migrunner": rev + (" (+ uncommitted changes)" if dirty else ""),
    }


def baseline_note(path: Path | None) -> str | None:
    """What ``--baseline`` is: its path, and the commit in a REV file beside it if any."""
    if path is None:
        return None
    rev = path.parent / "REV"
    return f"{path}" + (f" (commit {rev.read_text().strip()})" if rev.is_file() else "")


def loadavg() -> float:
    """1-minute load average: other work on the machine skews every figure, so it is kept."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def machine() -> dict[str, Any]:
    model = "n/a"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu": model,
        "kernel": platform.release(),
    }


# --------------------------------------------------------------------------- the workloads


def plan(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Cases per workload, with their run counts."""
    mig = [str(args.migrunner)]
    seq = [str(SEQUELIZE_CLI)]
    psql = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f"]
    n = args.count
    sql_dir = work / "sql"
    js_app = work / "js"
    groups: dict[str, Any] = {}

    def forum(op: str, tool: str, argv: list[str], meta: int, migrated: bool) -> Case:
        return Case(
            "forum",
            op,
            tool,
            argv,
            FORUM,
            meta,
            template=f"forum-{tool.replace(BEFORE, 'migrunner')}" if migrated else None,
            success_line=SUCCESS if tool == "migrunner" and op in ("up", "noop") else None,
        )

    groups["forum"] = {
        op: [
            forum(op, "migrunner", [*mig, m_cmd, *FORUM_ARGS], meta, migrated),
            forum(op, "sequelize-cli", [*seq, s_cmd, *FORUM_ARGS], meta, migrated),
        ]
        for op, m_cmd, s_cmd, meta, migrated in [
            ("up", "db:migrate", "db:migrate", 11, False),
            ("noop", "db:migrate", "db:migrate", 11, True),
            ("status", "db:migrate:status", "db:migrate:status", 11, True),
            ("down", "db:migrate:undo:all", "db:migrate:undo:all", 0, True),
        ]
    }
    # The cycle: undo everything, then migrate again (one shell, both commands timed).
    groups["forum"]["cycle"] = [
        forum(
            "cycle",
            tool,
            [
                "sh",
                "-c",
                f"{shlex.join([*cmd, 'db:migrate:undo:all', *FORUM_ARGS])} && "
                f"{shlex.join([*cmd, 'db:migrate', *FORUM_ARGS])}",
            ],
            11,
            True,
        )
        for tool, cmd in (("migrunner", mig), ("sequelize-cli", seq))
    ]
    groups["forum-psql"] = {
        "up": [
            Case("forum-psql", "up", "psql", [*psql, str(work / "forum-end-state.sql")], work, 11)
        ]
    }
    groups["sql"] = {
        "up": [
            Case(
                "sql",
                "up",
                "migrunner",
                [*mig, "up", "--migrations-path", str(sql_dir)],
                work,
                n,
                success_line=SUCCESS,
            ),
            Case("sql", "up", "psql", [*psql, str(work / "sql-concat.sql")], work, n),
            Case(
                "sql",
                "up",
                "psql-txn-per-migration",
                [*psql[:-2], "-f", str(work / "sql-per-migration.sql")],
                work,
                n,
            ),
        ]
    }
    groups["js"] = {
        "up": [
            Case(
                "js",
                "up",
                "migrunner",
                [*mig, "db:migrate", *JS_ARGS],
                js_app,
                n,
                success_line=SUCCESS,
            ),
            Case("js", "up", "sequelize-cli", [*seq, "db:migrate", *JS_ARGS], js_app, n),
        ]
    }
    groups["scale"] = scale_cases(args, work, mig, psql)
    k = args.concurrency
    example_n = len(list(EXAMPLE.glob("*.sql")))
    groups["concurrent"] = {
        "forum": [
            Case("concurrent", "forum", "migrunner", [*mig, "db:migrate", *FORUM_ARGS], FORUM, 11),
            Case(
                "concurrent",
                "forum",
                "migrunner",
                [*mig, "db:migrate", *FORUM_ARGS],
                FORUM,
                11,
                copies=k,
            ),
            Case(
                "concurrent",
                "forum",
                "sequelize-cli",
                [*seq, "db:migrate", *FORUM_ARGS],
                FORUM,
                11,
                copies=k,
                must_succeed=False,
            ),
        ],
        "sql": [
            Case(
                "concurrent",
                "sql",
                "migrunner",
                [*mig, "up", "--migrations-path", str(EXAMPLE)],
                work,
                example_n,
            ),
            Case(
                "concurrent",
                "sql",
                "migrunner",
                [*mig, "up", "--migrations-path", str(EXAMPLE)],
                work,
                example_n,
                copies=k,
            ),
        ],
    }
    if args.baseline:
        add_baseline(groups, str(args.migrunner), str(args.baseline))
    return groups


BEFORE = "migrunner-before"


def add_baseline(groups: dict[str, Any], current: str, baseline: str) -> None:
    """Beside every migrunner case, the same case run by ``--baseline`` (another build, e.g.
    main before a change), alternating run by run with the others: before/after ratios from
    one run of a machine whose load changes. It starts from migrunner's own templates."""
    for ops in groups.values():
        for op, cases in ops.items():
            out = []
            for c in cases:
                out.append(c)
                if c.tool == "migrunner":
                    argv = [a.replace(current, baseline) for a in c.argv]
                    out.append(replace(c, tool=BEFORE, argv=argv))
            ops[op] = out


def dbmate_argv() -> list[str]:
    """dbmate reads its URL from ``DBMATE_BENCH_URL`` (set per run by ``Bench.command_env``).
    No schema dump after a migration (it would time a pg_dump migrunner does not run)."""
    return [str(DBMATE), "--env", "DBMATE_BENCH_URL", "--no-dump-schema"]


def scale_cases(
    args: argparse.Namespace, work: Path, mig: list[str], psql: list[str]
) -> dict[str, list[Case]]:
    """10,000 generated `.sql` migrations (``--scale-count``), migrunner side by side with
    dbmate (the fastest SQL runner we can run here): from empty, a no-op and ``status`` with
    every one applied (each tool on a database it migrated itself)."""
    n = args.scale_count
    folder = work / "scale"
    m_path = ["--migrations-path", str(folder)]
    d_dir = ["--migrations-dir", str(folder)]
    dbm = dbmate_argv()

    def case(op: str, tool: str, argv: list[str], template: bool) -> Case:
        return Case(
            "scale",
            op,
            tool,
            argv,
            work,
            n,
            template=f"scale-{tool.replace(BEFORE, 'migrunner')}" if template else None,
            success_line=SUCCESS if tool == "migrunner" and op != "status" else None,
            meta_table="schema_migrations" if tool == "dbmate" else "SequelizeMeta",
            read_only=template,
        )

    return {
        "up": [
            case("up", "migrunner", [*mig, "up", *m_path], False),
            case("up", "dbmate", [*dbm, *d_dir, "migrate"], False),
            # no `psql -1 -f` floor here: 10,000 migrations in one transaction exceed the
            # server's lock table (max_locks_per_transaction) and would starve other sessions
        ],
        "noop": [
            case("noop", "migrunner", [*mig, "up", *m_path], True),
            case("noop", "dbmate", [*dbm, *d_dir, "migrate"], True),
        ],
        "status": [
            case("status", "migrunner", [*mig, "status", *m_path], True),
            case("status", "dbmate", [*dbm, *d_dir, "status"], True),
        ],
    }


def prepare(args: argparse.Namespace, work: Path) -> None:
    # Measure migrunner as it is deployed: a wheel install or the image ships bytecode, while an
    # editable checkout under PYTHONDONTWRITEBYTECODE=1 (set on these machines) would compile
    # every module from source on every start (~5 ms of the no-op path).
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "runner", "migrations_compat"],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    write_sql(work / "sql", args.count)
    write_sql_concat(work / "sql-concat.sql", args.count)
    write_sql_concat(work / "sql-per-migration.sql", args.count, per_migration=True)
    write_js_app(work / "js", args.count, NODE_DIR / "node_modules")
    if not args.only or "scale" in args.only.split(","):
        write_sql(work / "scale", args.scale_count)
    build_snapshots(args, work)


def build_snapshots(args: argparse.Namespace, work: Path) -> None:
    """As deployed: the image build runs ``migrunner snapshot`` (container/Dockerfile*), so
    node starts with the app's sequelize loaded. Built here, outside every timed region, for
    each JS app, in migrunner's default cache; a build without the command (an older
    ``--baseline``) simply has none."""
    for folder in (FORUM / "src" / "migrations", work / "js" / "migrations"):
        done = subprocess.run(
            [str(args.migrunner), "snapshot", "--migrations-path", str(folder)],
            env=base_env(),
            cwd=folder,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(f"no sequelize snapshot for {folder}: {done.stderr.strip()[-200:]}")


# --------------------------------------------------------------------------- report


def stats_of(doc: dict[str, Any], workload: str, op: str, tool: str) -> dict[str, Any] | None:
    entry = doc["workloads"].get(workload, {}).get(op, {}).get(tool)
    return entry if entry and entry.get("runs") else None


def ratios(
    doc: dict[str, Any], n: int, k: int, nproc: int, me: str = "migrunner"
) -> list[dict[str, Any]]:
    """Ratios of medians with the issue's targets (reported, never asserted)."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, unit: str = "×", target: float | None = None) -> None:
        met = None if value is None or target is None else value <= target
        out.append({"name": name, "value": value, "unit": unit, "target": target, "met": met})

    def wall(w: str, op: str, tool: str) -> float | None:
        s = stats_of(doc, w, op, tool)
        return float(s["wall_s"]["median"]) if s else None

    def cpu(w: str, op: str, tool: str) -> float | None:
        s = stats_of(doc, w, op, tool)
        return float(s["cpu_s"]["median"]) if s else None

    def div(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    for op, target in [
        ("noop", 0.4),
        ("up", 0.8),
        ("cycle", 0.8),
        ("status", 0.4),
        ("down", None),
    ]:
        add(
            f"forum {op}: migrunner / sequelize-cli",
            div(wall("forum", op, me), wall("forum", op, "sequelize-cli")),
            target=target,
        )
    for op in ("noop", "status", "up", "cycle"):
        # CPU is what a loaded node (or a 100m-CPU Job) pays; wall time depends on the neighbours
        add(
            f"forum {op}, CPU seconds: migrunner / sequelize-cli",
            div(cpu("forum", op, me), cpu("forum", op, "sequelize-cli")),
        )
    for op in ("up", "noop", "status"):
        add(
            f"scale {op}, CPU seconds: migrunner / dbmate",
            div(cpu("scale", op, me), cpu("scale", op, "dbmate")),
        )
    for tool in (me, "sequelize-cli"):
        add(
            f"forum up: {tool} / psql floor",
            div(wall("forum", "up", tool), wall("forum-psql", "up", "psql")),
        )
    m, p = wall("sql", "up", me), wall("sql", "up", "psql")
    add(f"{n} SQL: migrunner / psql floor", div(m, p), target=1.5)
    add(
        f"{n} SQL: migrunner / psql with one transaction per migration",
        div(m, wall("sql", "up", "psql-txn-per-migration")),
    )
    add(
        f"{n} SQL: migrunner overhead per migration over the floor",
        None if m is None or p is None else (m - p) / n * 1000,
        "ms",
    )
    ns = doc["meta"].get("scale_count") or 10000
    for op in ("up", "noop", "status"):
        add(
            f"{ns} SQL {op}: migrunner / dbmate",
            div(wall("scale", op, me), wall("scale", op, "dbmate")),
            target=0.8 if op == "up" else 1.0,
        )
    mj = wall("js", "up", me)
    add(
        f"{n} JS: migrunner / sequelize-cli", div(mj, wall("js", "up", "sequelize-cli")), target=0.8
    )
    add(f"{n} JS: migrunner time per migration", div(mj, n / 1000), "ms")
    for w in ("forum", "sql"):
        one, many = wall("concurrent", w, me), wall("concurrent", w, f"{me} x{k}")
        add(f"{k} concurrent runners ({w}): all done / one alone", div(many, one), target=1.5)
        # With fewer cores than runners the batch cannot end before its CPU time has been
        # served: ~1.0 means no time lost waiting, the rest is CPU (fewer cores than pods).
        batch_cpu = cpu("concurrent", w, f"{me} x{k}")
        floor = None if one is None or batch_cpu is None else max(one, batch_cpu / nproc)
        add(
            f"{k} concurrent runners ({w}): all done / CPU-bound floor on {nproc} cores",
            div(many, floor),
        )
        add(f"{k} concurrent runners ({w}): CPU per runner", div(batch_cpu, k), "s")
        # the one that migrates costs what a runner alone costs; the rest only wait and find
        # nothing to do
        alone = cpu("concurrent", w, me)
        add(
            f"{k} concurrent runners ({w}): CPU per waiting runner",
            None if batch_cpu is None or alone is None else (batch_cpu - alone) / (k - 1),
            "s",
        )
    for w, op, limit in [
        ("forum", "up", 128),
        ("forum", "noop", 128),
        ("js", "up", 128),
        ("sql", "up", 64),
        ("concurrent", "sql", 64),
    ]:
        s = stats_of(doc, w, op, me)
        add(
            f"peak memory, migrunner {w} {op} (tree, worst run)",
            float(s["peak_rss_mib"]["max"]) if s else None,
            "MiB",
            float(limit),
        )
    for op in ("up", "noop"):
        # largest single process (VmHWM): migrunner's python or node vs sequelize-cli's node
        m = stats_of(doc, "forum", op, me)
        q = stats_of(doc, "forum", op, "sequelize-cli")
        add(
            f"largest single process, forum {op}: migrunner / sequelize-cli (worst runs)",
            div(
                m and m.get("max_process_mib") and float(m["max_process_mib"]["max"]),
                q and q.get("max_process_mib") and float(q["max_process_mib"]["max"]),
            ),
            target=1.0,
        )
    return out


def fmt_range(s: dict[str, Any], key: str, unit: str, digits: int) -> str:
    d = s[key]
    return f"{d['median']:.{digits}f} {unit} ({d['min']:.{digits}f}–{d['max']:.{digits}f})"


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "×":
        return f"{value:.2f}×"
    return f"{value:.{0 if unit == 'MiB' else 2}f} {unit}"


def esc(text: str) -> str:
    """Error text inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(doc: dict[str, Any]) -> str:
    meta = doc["meta"]
    lines = [
        "| workload | operation | tool | wall time, median (min–max) | peak memory of the "
        "process tree, median (min–max) | CPU s | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for w, ops in doc["workloads"].items():
        for op, tools in ops.items():
            for tool, s in tools.items():
                if not s.get("runs"):
                    err = (s.get("errors") or ["not run"])[0]
                    lines.append(f"| {w} | {op} | {tool} | failed: {esc(err[:160])} | | | 0 |")
                    continue
                extra = ""
                if max(s.get("failed_processes") or [0]) > 0:
                    reason = next(iter(s["failure_reasons"]), "")[:120]
                    extra = (
                        f" — {max(s['failed_processes'])}/{s['copies']} processes failed ({reason})"
                    )
                if s.get("errors"):
                    extra += (
                        f" — {len(s['errors'])} failed run(s) not counted: {s['errors'][0][:120]}"
                    )
                lines.append(
                    f"| {w} | {op} | {tool} | {fmt_range(s, 'wall_s', 's', 3)}{esc(extra)} | "
                    f"{fmt_range(s, 'peak_rss_mib', 'MiB', 0)} | "
                    f"{s['cpu_s']['median']:.2f} | {s['runs']} |"
                )
    before = {r["name"]: r for r in doc.get("ratios_before") or []}
    if before:
        lines += [
            "",
            f"| ratio (medians; before = `{BEFORE}`, after = `migrunner`) | before | after "
            "| target | after |",
            "|---|---|---|---|---|",
        ]
    else:
        lines += ["", "| ratio (medians) | value | target | |", "|---|---|---|---|"]
    for r in doc["ratios"]:
        was = before.get(r["name"])
        lines.append(
            f"| {r['name']} | "
            + (f"{fmt_value(was['value'], was['unit'])} | " if before and was else "")
            + ("n/a | " if before and not was else "")
            + f"{fmt_value(r['value'], r['unit'])} | "
            f"{'' if r['target'] is None else '≤ ' + fmt_value(r['target'], r['unit'])} | "
            f"{ {True: 'met', False: '**missed**', None: ''}[r['met']] } |"
        )
    lines += [
        "",
        f"{meta['runs']} runs per fast case and {meta['big_runs']} per {meta['count']}-migration "
        f"case, after {meta['warmup']} warm-up run(s); {meta['concurrency']} concurrent runners; "
        f"scale: {meta.get('scale_count', 'n/a')} migrations, {meta['big_runs']} runs of `up`.",
    ]
    return "\n".join(lines) + "\n"


def results_md(doc: dict[str, Any]) -> str:
    m, v = doc["meta"]["machine"], doc["meta"]["versions"]
    return (
        "# Benchmark results\n\n"
        "Produced by `.venv/bin/python bench/run.py` (see `bench/README.md`); every figure is in "
        "`bench/results/latest.json`.\n\n"
        f"* Date: {doc['meta']['date']}\n"
        f"* Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB RAM, Linux "
        f"{m['kernel']}\n"
        f"* Versions: Python {v['python']}, node {v['node']}, PostgreSQL {v['postgresql']} "
        f"(same machine, local TCP), sequelize {v['sequelize']}, sequelize-cli "
        f"{v['sequelize-cli']}, pg {v['pg']}, dbmate {v.get('dbmate', 'n/a')}, "
        f"psycopg {v['psycopg']}, pglast {v['pglast']}, "
        f"migrunner {v['migrunner']}\n"
        + (
            f"* Before/after: `migrunner-before` is {doc['meta']['baseline']}, measured in the "
            "same run, alternating with the others\n"
            if doc["meta"].get("baseline")
            else ""
        )
        + f"* Memory: {doc['meta']['memory_method']}\n"
        f"* Load average (1 min) before / after: "
        f"{' / '.join(str(x) for x in doc['meta']['loadavg_before_after'])} (a shared "
        "machine: other work running at the same time widens the spread)\n\n"
        + markdown(doc)
        + "\nWhy the missed targets are missed, and what it would take: `bench/README.md`, "
        '"Findings".\n'
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke mode: 1 run, tiny workloads")
    ap.add_argument("--runs", type=int, help="measured runs per fast case (default 5)")
    ap.add_argument("--big-runs", type=int, help="measured runs per generated case (default 3)")
    ap.add_argument("--warmup", type=int, help="warm-up runs per case (default 1)")
    ap.add_argument("--count", type=int, help="generated migrations (default 1000)")
    ap.add_argument("--concurrency", type=int, help="concurrent runners (default 32)")
    ap.add_argument(
        "--only",
        help="comma-separated workloads: forum,forum-psql,sql,js,scale,concurrent (default: all)",
    )
    ap.add_argument(
        "--scale-count", type=int, help="migrations of the scale workload (default 10000)"
    )
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per command")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "latest.json")
    ap.add_argument(
        "--markdown",
        type=Path,
        help="write the results table here (default: bench/RESULTS.md on a full run, "
        "none with --quick or --only)",
    )
    ap.add_argument(
        "--migrunner",
        type=Path,
        default=default_migrunner(),
        help="the migrunner executable (default: the one next to this Python, else on PATH)",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        help="another migrunner build measured beside --migrunner as 'migrunner-before'",
    )
    ap.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: rewrite the tables from the --out JSON (to --markdown)",
    )
    args = ap.parse_args(argv)
    args.out = args.out.resolve()  # the workloads live next to it; commands run elsewhere
    if args.markdown is not None:
        args.markdown = args.markdown.resolve()
    quick = args.quick
    args.runs = args.runs or (1 if quick else 5)
    args.big_runs = args.big_runs or (1 if quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (0 if quick else 1)
    args.count = args.count or (20 if quick else 1000)
    args.scale_count = args.scale_count or (30 if quick else 10000)
    args.concurrency = args.concurrency or (4 if quick else 32)
    if args.markdown is None and not quick and not args.only:
        args.markdown = BENCH / "RESULTS.md"
    return args


def default_migrunner() -> Path:
    """The console script installed with the interpreter running the bench (any venv, not
    only ``.venv``), else whatever ``migrunner`` is on PATH."""
    beside = Path(sys.executable).parent / "migrunner"
    if beside.exists():
        return beside
    found = shutil.which("migrunner")
    return Path(found) if found else beside


@contextmanager
def server_from_env() -> Iterator[Server]:
    server = Server(os.environ.get("MIGRUNNER_TEST_DATABASE_URL") or LOCAL_URL)
    try:
        yield server
    finally:
        server.close()


MEMORY_METHOD = (
    "sampled RSS of the whole process tree (the runner and every descendant, e.g. node) from "
    "/proc every 5 ms (25 ms for concurrent batches); the figure is the largest simultaneous "
    "sum (cgroup v2 memory.peak is not available: this machine mounts cgroup v1). The JSON "
    "also has the sum of each process's kernel-kept VmHWM, an upper bound."
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        saved: dict[str, Any] = json.loads(args.out.read_text())
        m = saved["meta"]  # ratios again, with this version's definitions
        nproc = m["machine"]["nproc"] or 1
        saved["ratios"] = ratios(saved, m["count"], m["concurrency"], nproc)
        if any(BEFORE in tools for ops in saved["workloads"].values() for tools in ops.values()):
            saved["ratios_before"] = ratios(saved, m["count"], m["concurrency"], nproc, BEFORE)
        print(markdown(saved))
        if args.markdown:
            args.markdown.write_text(results_md(saved))
            print(f"wrote {args.markdown}")
        return 0
    only = set(args.only.split(",")) if args.only else None
    ensure_node(NODE_DIR)
    ensure_node(FORUM)
    ensure_node(DBMATE_DIR)
    work = args.out.parent / "work"
    prepare(args, work)
    started = time.time()
    load_before = loadavg()
    with server_from_env() as server:
        server.drop_stale()
        bench = Bench(server, args, work)
        groups = plan(args, work)
        wanted = [w for w in groups if only is None or w in only]
        if {"forum", "forum-psql"} & set(wanted):
            for tool in ("migrunner", "sequelize-cli"):
                setup = next(c for c in groups["forum"]["up"] if c.tool == tool)
                bench.template(f"forum-{tool}", setup)
            if forum_dump(bench, work / "forum-end-state.sql") is None:
                (work / "forum-end-state.sql").write_text("SELECT 1/0; -- no sequelize-cli dump\n")
        if "scale" in wanted:
            for tool in ("migrunner", "dbmate"):
                setup = next(c for c in groups["scale"]["up"] if c.tool == tool)
                bench.template(f"scale-{tool}", setup)
        doc: dict[str, Any] = {"meta": {}, "workloads": {}, "ratios": []}
        for w in wanted:
            doc["workloads"][w] = {}
            for op, cases in groups[w].items():
                big = w in ("sql", "js") or (w, op) == ("scale", "up")
                runs = args.big_runs if big else args.runs
                print(f"{w} {op}", flush=True)
                results = bench.measure(cases, runs, args.warmup)
                doc["workloads"][w][op] = {tool_key(r.case): result_json(r) for r in results}
        doc["meta"] = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "duration_s": round(time.time() - started, 1),
            "quick": args.quick,
            "runs": args.runs,
            "big_runs": args.big_runs,
            "warmup": args.warmup,
            "count": args.count,
            "scale_count": args.scale_count,
            "concurrency": args.concurrency,
            "machine": machine(),
            "loadavg_before_after": [load_before, loadavg()],
            "versions": versions(server),
            "memory_method": MEMORY_METHOD,
            "baseline": baseline_note(args.baseline),
        }
    doc["ratios"] = ratios(doc, args.count, args.concurrency, os.cpu_count() or 1)
    if args.baseline:
        doc["ratios_before"] = ratios(
            doc, args.count, args.concurrency, os.cpu_count() or 1, BEFORE
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    table = markdown(doc)
    print()
    print(table)
    print(f"wrote {args.out}")
    if args.markdown:
        args.markdown.write_text(results_md(doc))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
