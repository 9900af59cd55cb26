"""Peak memory of a JS migration that SELECTs a large result: migrunner vs sequelize-cli.

A migration that reads a whole table to transform it is ordinary; its rows cross the bridge
(PostgreSQL -> Python -> node) instead of going straight to node's pg. The bridge streams them
in bounded chunks, so the target is: the whole process tree (python + node) within 1.25x of
sequelize-cli's peak for the same migration, and within the Job's 256 MiB limit wherever
sequelize-cli is. Run from the repository root::

    .venv/bin/python bench/big_select.py                 # 1,000,000 rows, 3 runs per tool
    .venv/bin/python bench/big_select.py --rows 200000 --runs 1

The migration (generated in a temporary folder, run with ``bench/node``'s sequelize 6.37.8,
pg 8.16.3 and sequelize-cli 6.6.5) does ``SELECT g AS id, md5(g::text) AS h FROM
generate_series(1, N) g`` with ``QueryTypes.SELECT``, checks it got N rows and records N in a
table. Each run gets a fresh database; tools alternate. Memory is sampled as in ``run.py``
(largest simultaneous RSS sum of the process tree, every 5 ms; also the sum of VmHWM).
Results go to stdout and ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from measure import MIB, run_tree
from run import BENCH, ROOT, Server, base_env, ensure_node, server_from_env

MIGRATION = """'use strict';

module.exports = {{
  async up(queryInterface, Sequelize) {{
    const rows = await queryInterface.sequelize.query(
      'SELECT g AS id, md5(g::text) AS h FROM generate_series(1, {rows}) g',
      {{ type: Sequelize.QueryTypes.SELECT }},
    );
    if (rows.length !== {rows} || rows[{rows} - 1].id !== {rows}) throw new Error('rows lost');
    await queryInterface.sequelize.query('CREATE TABLE big_select_done (n integer)');
    await queryInterface.sequelize.query(`INSERT INTO big_select_done VALUES (${{rows.length}})`);
  }},
}};
"""


def commands(migrunner: Path) -> dict[str, list[str]]:
    """Each tool's command line (the folder and the URL are appended per run)."""
    return {
        "migrunner": [str(migrunner), "up"],
        "sequelize-cli": [
            str(BENCH / "node" / "node_modules" / ".bin" / "sequelize-cli"),
            "db:migrate",
        ],
    }


def measure(
    server: Server, tool: str, argv: list[str], folder: Path, log_dir: Path, rows: int
) -> dict[str, Any]:
    db = server.create()
    try:
        url = server.db_url(db)
        cmd = [*argv, "--url", url, "--migrations-path", str(folder)]
        run = run_tree([cmd], {**base_env(), **server.env(db)}, BENCH / "node", log_dir, 900)
        done = server.scalar(db, "SELECT to_regclass('big_select_done') IS NOT NULL")
        n = server.scalar(db, "SELECT n FROM big_select_done") if done else None
    finally:
        server.drop(db)
    ok = run.exit_codes == [0] and n == rows
    return {
        "tool": tool,
        "ok": ok,
        "wall_s": round(run.wall_s, 3),
        "peak_rss_mib": round(run.peak_rss / MIB, 1),
        "hwm_sum_mib": round(run.hwm_sum / MIB, 1),
        "error": None if ok else (run.stderr.strip().splitlines() or ["?"])[-1][:300],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--migrunner", type=Path, default=ROOT / ".venv" / "bin" / "migrunner")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "big_select.json")
    args = ap.parse_args(argv)
    ensure_node(BENCH / "node")
    tools = commands(args.migrunner)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mrbench-big-") as tmp, server_from_env() as server:
        folder = Path(tmp) / "migrations"
        folder.mkdir()
        (folder / "20240101000000-big-select.js").write_text(MIGRATION.format(rows=args.rows))
        for i in range(args.runs):
            for tool, cmd in tools.items():
                r = measure(server, tool, cmd, folder, Path(tmp) / f"{tool}-{i}", args.rows)
                results.append(r)
                print(json.dumps(r), flush=True)
    summary: dict[str, Any] = {"rows": args.rows, "runs": results}
    for tool in tools:
        ok = [r for r in results if r["tool"] == tool and r["ok"]]
        if ok:
            summary[tool] = {
                "peak_rss_mib_median": statistics.median(r["peak_rss_mib"] for r in ok),
                "peak_rss_mib_max": max(r["peak_rss_mib"] for r in ok),
                "wall_s_median": statistics.median(r["wall_s"] for r in ok),
            }
    mr, sc = summary.get("migrunner"), summary.get("sequelize-cli")
    if mr and sc:
        summary["ratio_peak_max"] = round(mr["peak_rss_mib_max"] / sc["peak_rss_mib_max"], 2)
        summary["ratio_peak_median"] = round(
            mr["peak_rss_mib_median"] / sc["peak_rss_mib_median"], 2
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
