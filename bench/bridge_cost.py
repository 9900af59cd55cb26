"""The node bridge's per-query round trip and node's peak memory, measured (never asserted in
the functional tests, where a loaded machine would make a bound flaky).

    .venv/bin/python bench/bridge_cost.py [--queries 500] [--runs 5]

Runs ``tests/fixtures/bridge/many-queries.js`` (N x ``SELECT 1`` through Sequelize) inside one
transaction on a scratch database, as the migrator drives the bridge, and prints the median
per-query time the migration measured itself and node's VmHWM (peak RSS).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from migrations_compat.bridge import BridgeOptions, NodeBridge  # noqa: E402
from runner.log import Log  # noqa: E402
from tests.support.pg import LOCAL_URL, create_database, drop_database  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "bridge" / "many-queries.js"


def once(url: str, queries: int) -> tuple[float, int]:
    env = {**os.environ, "DATABASE_URL": url, "MIGRUNNER_TEST_QUERIES": str(queries)}
    log = Log(fmt="text", stream=io.StringIO(), out_stream=io.StringIO())
    with (
        NodeBridge(BridgeOptions(search_dirs=(FIXTURE.parent,), env=env), log) as bridge,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        conn.execute("BEGIN")
        bridge.run(FIXTURE, "up", conn)
        row = conn.execute("SELECT ms FROM round_trip").fetchone()
        conn.execute("ROLLBACK")
        status = Path(f"/proc/{bridge.node_pid}/status").read_text()
        peak_kib = int(next(x for x in status.splitlines() if x.startswith("VmHWM")).split()[1])
    assert row is not None
    return float(row[0]), peak_kib


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    server = os.environ.get("MIGRUNNER_TEST_DATABASE_URL") or LOCAL_URL
    url = create_database(server, prefix="mrbench")
    try:
        results = [once(url, args.queries) for _ in range(args.runs)]
    finally:
        drop_database(server, url)
    ms = [r[0] for r in results]
    mib = [r[1] / 1024 for r in results]
    print(
        f"bridge round trip: {statistics.median(ms):.3f} ms/query median "
        f"({min(ms):.3f}-{max(ms):.3f}) over {args.runs} runs of {args.queries} queries"
    )
    low, high = min(mib), max(mib)
    print(f"node peak RSS (VmHWM): {statistics.median(mib):.0f} MiB median ({low:.0f}-{high:.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
