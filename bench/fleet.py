"""Fleet benchmark: many tenants from one command, against a shell loop of sequelize-cli.

    .venv/bin/python bench/fleet.py                 # 50 databases + 500 schemas, ~2 min
    .venv/bin/python bench/fleet.py --tenants 5 --schemas 20 --runs 1    # smoke

* ``databases``: N fresh tenant databases with the forum fixture (11 JS migrations, its own
  config, DB_* as the Job passes them). migrunner: ``fleet up --targets-sql ... --parallel P``
  (one node process per worker). sequelize-cli: ``for db in ...; do DB_NAME=$db npx
  sequelize-cli db:migrate ...; done`` — what SaaS teams run today. Tools alternate run by run;
  every run gets fresh databases, created and dropped outside the timed region.
* ``schemas``: M schemas of one database with the SQL example, ``fleet up --schemas-sql``.

Wall time, CPU and peak RSS of the whole process tree come from :mod:`bench.measure` (the same
sampler as ``bench/run.py``). Each run is checked: every tenant has every migration recorded.
Results: ``bench/results/fleet.json``; the table is printed (and pasted into the README).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.measure import MIB, run_tree
from bench.run import (
    EXAMPLE,
    FORUM,
    FORUM_ARGS,
    NODE_DIR,
    SEQUELIZE_CLI,
    base_env,
    ensure_node,
)

SERVER = os.environ.get(
    "MIGRUNNER_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def admin() -> psycopg.Connection[Any]:
    return psycopg.connect(SERVER, autocommit=True)


def create_dbs(prefix: str, n: int) -> list[str]:
    names = [f"{prefix}_{i:03d}" for i in range(n)]
    with admin() as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return names


def drop_dbs(names: list[str]) -> None:
    with admin() as conn:
        for name in names:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def db_url(name: str) -> str:
    return SERVER.rsplit("/", 1)[0] + "/" + name


def meta_count(url: str, schema: str = "public") -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{schema}"."SequelizeMeta"').fetchone()
        return int(row[0]) if row else 0


def server_env() -> dict[str, str]:
    from urllib.parse import urlsplit

    p = urlsplit(SERVER)
    env = base_env()
    env.update(
        {
            "DB_HOST": p.hostname or "127.0.0.1",
            "DB_PORT": str(p.port or 5432),
            "DB_USER": p.username or "postgres",
            "DB_PASSWORD": p.password or "",
            "DB_NAME": p.path.lstrip("/") or "postgres",
            "NODE_ENV": "production",
            "PYTHONPATH": str(FORUM.parent.parent.parent),
        }
    )
    return env


def migrunner() -> list[str]:
    return [sys.executable, "-m", "runner"]


def databases_case(tool: str, n: int, parallel: int, work: Path) -> dict[str, Any]:
    prefix = f"mrbfleet_{uuid.uuid4().hex[:6]}"
    names = create_dbs(prefix, n)
    expected = len(list((FORUM / "src" / "migrations").iterdir()))
    try:
        env = server_env()
        if tool == "migrunner":
            select = f"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}\\_%' ORDER BY 1"
            cmd = [
                *migrunner(),
                "fleet",
                "up",
                *FORUM_ARGS,
                "--targets-sql",
                select,
                "--parallel",
                str(parallel),
            ]
        else:
            loop = (
                'for db in "$@"; do DB_NAME="$db" "$CLI" db:migrate '
                + " ".join(FORUM_ARGS)
                + " >/dev/null || exit 1; done"
            )
            env["CLI"] = str(SEQUELIZE_CLI)
            cmd = ["bash", "-c", loop, "loop", *names]
        run = run_tree([cmd], env, FORUM, work / f"{tool}-{prefix}", timeout=1800)
        ok = run.exit_codes == [0] and all(meta_count(db_url(d)) == expected for d in names)
        return {
            "tool": tool,
            "tenants": n,
            "wall_s": run.wall_s,
            "cpu_s": run.cpu_s,
            "peak_mib": run.peak_rss / MIB,
            "ok": ok,
            "failure": run.failure_lines,
        }
    finally:
        drop_dbs(names)


def schemas_case(m: int, parallel: int, work: Path) -> dict[str, Any]:
    (name,) = create_dbs(f"mrbfleet_{uuid.uuid4().hex[:6]}", 1)
    url = db_url(name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(";".join(f'CREATE SCHEMA "tenant_{i:04d}"' for i in range(m)).encode())
        select = "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant\\_%' ORDER BY 1"
        cmd = [
            *migrunner(),
            "fleet",
            "up",
            "--url",
            url,
            "--migrations-path",
            str(EXAMPLE),
            "--schemas-sql",
            select,
            "--parallel",
            str(parallel),
        ]
        run = run_tree([cmd], server_env(), FORUM, work / f"schemas-{name}", timeout=1800)
        expected = len(list(EXAMPLE.iterdir()))
        ok = run.exit_codes == [0] and all(
            meta_count(url, f"tenant_{i:04d}") == expected for i in range(0, m, max(1, m // 20))
        )
        return {
            "tool": "migrunner",
            "schemas": m,
            "wall_s": run.wall_s,
            "cpu_s": run.cpu_s,
            "peak_mib": run.peak_rss / MIB,
            "ok": ok,
            "failure": run.failure_lines,
        }
    finally:
        drop_dbs([name])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--tenants", type=int, default=50)
    ap.add_argument("--schemas", type=int, default=500)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fleet.json")
    args = ap.parse_args()
    ensure_node(NODE_DIR)
    ensure_node(FORUM)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mrbfleet") as tmp:
        work = Path(tmp)
        for i in range(args.runs):
            order = ["migrunner", "sequelize-cli"] if i % 2 == 0 else ["sequelize-cli", "migrunner"]
            for tool in order:
                r = databases_case(tool, args.tenants, args.parallel, work)
                print(json.dumps(r), flush=True)
                results.append(r)
        schemas = schemas_case(args.schemas, args.parallel, work)
        print(json.dumps(schemas), flush=True)

    def med(tool: str, key: str) -> float:
        return statistics.median(r[key] for r in results if r["tool"] == tool and r["ok"])

    mr, sc = med("migrunner", "wall_s"), med("sequelize-cli", "wall_s")
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nproc": os.cpu_count(),
        "parallel": args.parallel,
        "databases": results,
        "schemas": schemas,
        "ratio": mr / sc,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    n = args.tenants
    print()
    print(f"| {n} tenant databases, forum (11 JS) | wall (median) | per tenant | peak tree |")
    print("|---|---|---|---|")
    for tool in ("migrunner", "sequelize-cli"):
        label = (
            f"migrunner `fleet up --parallel {args.parallel}`"
            if tool == "migrunner"
            else "shell loop of `sequelize-cli db:migrate`"
        )
        wall = med(tool, "wall_s")
        peak = max(r["peak_mib"] for r in results if r["tool"] == tool and r["ok"])
        print(f"| {label} | {wall:.2f} s | {wall / n * 1000:.0f} ms | {peak:.0f} MiB |")
    print(f"\nratio migrunner / loop: {mr / sc:.2f}x")
    print(
        f"{args.schemas} schemas, SQL example (4 migrations each), --parallel {args.parallel}: "
        f"{schemas['wall_s']:.2f} s ({schemas['wall_s'] / args.schemas * 1000:.1f} ms per schema), "
        f"peak {schemas['peak_mib']:.0f} MiB, ok={schemas['ok']}"
    )
    return 0 if all(r["ok"] for r in [*results, schemas]) else 1


if __name__ == "__main__":
    sys.exit(main())
