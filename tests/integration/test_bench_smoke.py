"""The benchmark harness end to end in its quick mode: real PostgreSQL, real node, the real
sequelize-cli from npm, tiny workloads. Checks the harness's output, never its timings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ROOT

EXPECTED = {
    "forum": {
        "up": {"migrunner", "sequelize-cli"},
        "noop": {"migrunner", "sequelize-cli"},
        "status": {"migrunner", "sequelize-cli"},
        "down": {"migrunner", "sequelize-cli"},
        "cycle": {"migrunner", "sequelize-cli"},
    },
    "forum-psql": {"up": {"psql"}},
    "sql": {"up": {"migrunner", "psql", "psql-txn-per-migration"}},
    "js": {"up": {"migrunner", "sequelize-cli"}},
    "scale": {
        "up": {"migrunner", "dbmate"},
        "noop": {"migrunner", "dbmate"},
        "status": {"migrunner", "dbmate"},
    },
    "concurrent": {
        "forum": {"migrunner", "migrunner x3", "sequelize-cli x3"},
        "sql": {"migrunner", "migrunner x3"},
    },
}


def bench_databases(server: str) -> set[str]:
    with psycopg.connect(server, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'mrbench%'")
        return {r[0] for r in rows}


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_quick_run_reports_every_workload_and_tool(pg_server: str, tmp_path: Path) -> None:
    before = bench_databases(pg_server)
    out = tmp_path / "latest.json"
    md = tmp_path / "RESULTS.md"
    bench = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--runs",
            "1",
            "--count",
            "20",
            "--concurrency",
            "3",
            "--timeout",
            "60",
            "--out",
            str(out),
            "--markdown",
            str(md),
        ],
        cwd=ROOT,
        env={**os.environ, "MIGRUNNER_TEST_DATABASE_URL": pg_server},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = bench.communicate(timeout=240)
    proc = subprocess.CompletedProcess(bench.args, bench.returncode, stdout, stderr)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())

    assert doc["meta"]["count"] == 20 and doc["meta"]["concurrency"] == 3
    assert {
        w: {op: set(tools) for op, tools in ops.items()} for w, ops in doc["workloads"].items()
    } == EXPECTED
    for w, ops in doc["workloads"].items():
        for op, tools in ops.items():
            for tool, s in tools.items():
                where = f"{w}/{op}/{tool}"
                assert s["errors"] == [], (where, s["errors"])
                assert s["runs"] == 1, where
                for key in ("wall_s", "peak_rss_mib", "hwm_sum_mib", "cpu_s"):
                    assert s[key]["median"] > 0, (where, key, s[key])
                # the sampler saw the tree, and the kernel's high-water marks bound its peak
                assert s["samples"] >= 1 and s["processes"] >= s["copies"], where
                assert s["hwm_sum_mib"]["median"] >= s["peak_rss_mib"]["median"] * 0.99, where
                assert s["strays"] == 0, where

    # migrunner's JS runs really ran node (python + node, plus the config's node process)
    assert doc["workloads"]["js"]["up"]["migrunner"]["processes"] >= 2
    assert doc["workloads"]["sql"]["up"]["migrunner"]["processes"] == 1
    # every migrunner in the concurrent batch succeeded
    assert doc["workloads"]["concurrent"]["forum"]["migrunner x3"]["failed_processes"] == [0]
    assert doc["workloads"]["concurrent"]["sql"]["migrunner x3"]["failed_processes"] == [0]

    ratios = {r["name"]: r for r in doc["ratios"]}
    assert len(ratios) == len(doc["ratios"]) >= 15
    for name, r in ratios.items():
        assert r["value"] is not None and r["value"] > 0, name
    assert "20 SQL: migrunner / psql floor" in ratios
    assert "3 concurrent runners (forum): all done / one alone" in ratios

    for key in ("python", "node", "postgresql", "sequelize", "sequelize-cli", "migrunner"):
        assert doc["meta"]["versions"][key] not in ("", "n/a"), key
    assert doc["meta"]["versions"]["sequelize-cli"] == "6.6.5"
    assert doc["meta"]["versions"]["sequelize"] == "6.37.8"
    text = md.read_text()
    assert "| forum | noop | sequelize-cli |" in text and "CPUs" in text

    # every scratch and template database of this bench (named after its pid) was dropped;
    # another bench running on the same server at the same time is not this one's to judge
    mine = {d for d in bench_databases(pg_server) - before if d.startswith(f"mrbench_{bench.pid}_")}
    assert mine == set()
