"""The Job's memory limit, for real: run a large-SELECT migration under a memory cgroup.

``big_select.py`` compares sampled RSS sums; a Kubernetes Job is judged by its cgroup instead:
the kernel charges anonymous memory and page cache to it, reclaims clean file pages under
pressure, and kills the container (SIGKILL) when it cannot stay under the limit. node also
sizes V8's heap from that limit (libuv's ``uv_get_constrained_memory``). So this script puts
each run in a fresh memory cgroup with the Job's limit (default 256 MiB) and records, for each
result size, whether the tool succeeded and the cgroup's own peak (v1
``memory.max_usage_in_bytes``, v2 ``memory.peak``). The question it answers: up to how many
rows does each tool fit in the limit? Run from the repository root, as root (it creates
cgroups)::

    .venv/bin/python bench/memlimit.py                          # 256 MiB, 0.8M..1.4M rows
    .venv/bin/python bench/memlimit.py --limit-mib 256 --rows 1000000,1200000 --runs 1

The migration is ``big_select.py``'s (``SELECT g AS id, md5(g::text) AS h FROM
generate_series(1, N) g`` with ``QueryTypes.SELECT``). Each run gets a fresh database; the
tools alternate. JSON goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from big_select import MIGRATION, commands
from measure import MIB
from run import BENCH, ROOT, Server, base_env, ensure_node, server_from_env

CGROUP = Path("/sys/fs/cgroup")


@dataclass
class Outcome:
    tool: str
    rows: int
    ok: bool
    exit_code: int
    peak_mib: float
    limit_hits: int
    wall_s: float
    error: str | None


class MemoryCgroup:
    """A fresh memory cgroup (v2 if the unified hierarchy has the controller, else v1)."""

    def __init__(self, limit_bytes: int) -> None:
        name = f"migrunner-bench-{os.getpid()}-{time.monotonic_ns()}"
        self.v2 = (CGROUP / "cgroup.controllers").exists() and "memory" in (
            CGROUP / "cgroup.controllers"
        ).read_text().split()
        self.path = (CGROUP / name) if self.v2 else (CGROUP / "memory" / name)
        self.path.mkdir()
        if self.v2:
            (self.path / "memory.max").write_text(str(limit_bytes))
            (self.path / "memory.swap.max").write_text("0")
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))

    def enter(self) -> None:
        """Called in the child between fork and exec: the tool and its children are inside."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int((self.path / name).read_text())

    def limit_hits(self) -> int:
        if self.v2:
            events = dict(
                line.split() for line in (self.path / "memory.events").read_text().splitlines()
            )
            return int(events.get("max", 0))
        return int((self.path / "memory.failcnt").read_text())

    def remove(self) -> None:
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.05)  # teardown: the last member is still exiting


@contextmanager
def cgroup(limit_bytes: int) -> Iterator[MemoryCgroup]:
    cg = MemoryCgroup(limit_bytes)
    try:
        yield cg
    finally:
        cg.remove()


def measure(
    server: Server, tool: str, argv: list[str], folder: Path, rows: int, limit: int
) -> Outcome:
    db = server.create()
    try:
        cmd = [*argv, "--url", server.db_url(db), "--migrations-path", str(folder)]
        with cgroup(limit) as cg:
            start = time.perf_counter()
            proc = subprocess.run(
                cmd,
                env={**base_env(), **server.env(db)},
                cwd=BENCH / "node",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                preexec_fn=cg.enter,  # only writes the child's pid to a file
                timeout=900,
                check=False,
            )
            wall = time.perf_counter() - start
            peak, hits = cg.peak(), cg.limit_hits()
        done = server.scalar(db, "SELECT to_regclass('big_select_done') IS NOT NULL")
        n = server.scalar(db, "SELECT n FROM big_select_done") if done else None
    finally:
        server.drop(db)
    ok = proc.returncode == 0 and n == rows
    lines = proc.stderr.decode(errors="replace").strip().splitlines()
    error = None if ok else (lines[-1][:400] if lines else f"exit {proc.returncode}")
    peak_mib = round(peak / MIB, 1)
    return Outcome(tool, rows, ok, proc.returncode, peak_mib, hits, round(wall, 2), error)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--limit-mib", type=int, default=256)
    ap.add_argument(
        "--rows", default="800000,900000,1000000,1050000,1100000,1150000,1200000,1300000"
    )
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--migrunner", type=Path, default=ROOT / ".venv" / "bin" / "migrunner")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "memlimit.json")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("memlimit.py creates memory cgroups: run it as root", file=sys.stderr)
        return 2
    ensure_node(BENCH / "node")
    tools = commands(args.migrunner)
    limit = args.limit_mib * MIB
    outcomes: list[Outcome] = []
    tmpdir = tempfile.TemporaryDirectory(prefix="mrbench-memlimit-")
    with tmpdir as tmp, server_from_env() as server:
        for rows in (int(r) for r in args.rows.split(",")):
            folder = Path(tmp) / f"m{rows}"
            folder.mkdir()
            (folder / "20240101000000-big-select.js").write_text(MIGRATION.format(rows=rows))
            for _ in range(args.runs):
                for tool, cmd in tools.items():
                    o = measure(server, tool, cmd, folder, rows, limit)
                    outcomes.append(o)
                    print(json.dumps(asdict(o)), flush=True)
    largest = {
        tool: max((o.rows for o in outcomes if o.tool == tool and o.ok), default=0)
        for tool in tools
    }
    # "Fits wherever sequelize-cli fits": every size sequelize-cli completed, migrunner did too.
    sc_ok = {o.rows for o in outcomes if o.tool == "sequelize-cli" and o.ok}
    mr_failed = {o.rows for o in outcomes if o.tool == "migrunner" and not o.ok}
    summary = {
        "limit_mib": args.limit_mib,
        "largest_ok_rows": largest,
        "sizes_sequelize_cli_fits_and_migrunner_does_not": sorted(sc_ok & mr_failed),
        "runs": [asdict(o) for o in outcomes],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
