"""Wall time, CPU time and peak memory of a whole process tree (a runner and its node child).

Peak memory is sampled, not read from a cgroup: this machine mounts cgroup v1 (no v2
``memory.peak``), and the v1 memory controller here is the session machinery's, which the
harness must not reorganise. v1 ``max_usage_in_bytes`` would also count page cache (every
file node reads), which is not what a process "uses". So a thread reads ``VmRSS`` and
``VmHWM`` of every process in the tree from ``/proc`` every few milliseconds:

* ``peak_rss`` = the largest *simultaneous* sum of RSS over the tree seen by a sample (what a
  container's working set is; may miss a peak shorter than the interval);
* ``hwm_sum`` = the sum of each process's own high-water mark (``VmHWM``, kept by the kernel,
  so no peak is missed): an upper bound of the tree's peak, exact when the peaks coincide.

The kernel here has no ``/proc/PID/task/TID/children``, so descendants are found by reading
the parent pid of every new ``/proc`` entry once and caching it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024


@dataclass
class Run:
    """One measured command (or, for a concurrent batch, the whole batch)."""

    wall_s: float
    peak_rss: int  # bytes, largest simultaneous sum of RSS over the tree
    hwm_sum: int  # bytes, sum of per-process high-water marks
    cpu_s: float  # user + system of the command(s) and their reaped descendants
    exit_codes: list[int]
    processes: int  # processes seen in the tree (python + node + ...)
    samples: int
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    strays: int = 0  # tree processes still alive after every command exited
    ends_s: list[float] = field(default_factory=list)  # per command, from the common start
    failure_lines: list[str] = field(default_factory=list)  # last stderr line of each failure
    max_hwm: int = 0  # bytes, the largest single process's high-water mark (VmHWM)


def read_ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid ..."; comm may contain spaces and parentheses.
    rest = data[data.rfind(b")") + 2 :].split(b" ", 2)
    return int(rest[1]) if len(rest) > 1 else None


def read_mem(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes; (0, 0) for a zombie or a process already gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, hwm


class TreeSampler(threading.Thread):
    """Samples the memory of the process trees rooted at ``roots`` until stopped."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.roots: set[int] = set()
        self.members: set[int] = set()
        self.others: set[int] = set(self.pids())  # present before the run: never ours
        self.hwm: dict[int, int] = {}
        self.peak_rss = 0
        self.samples = 0
        self.lock = threading.Lock()
        self.done = threading.Event()

    @staticmethod
    def pids() -> list[int]:
        return [int(n) for n in os.listdir("/proc") if n.isdigit()]

    def add_root(self, pid: int) -> None:
        with self.lock:
            self.roots.add(pid)
            self.members.add(pid)
            self.others.discard(pid)

    def discover(self) -> None:
        live = self.pids()
        new = sorted(p for p in live if p not in self.members and p not in self.others)
        changed = True
        while new and changed:  # a child may be listed before its parent is known
            changed = False
            rest = []
            for pid in new:
                ppid = read_ppid(pid)
                if ppid is not None and ppid in self.members:
                    self.members.add(pid)
                    changed = True
                else:
                    rest.append(pid)
            new = rest
        self.others.update(new)
        self.others.intersection_update(live)  # a pid that went away may be reused by us

    def sample(self) -> None:
        with self.lock:
            self.discover()
            total = 0
            for pid in self.members:
                rss, hwm = read_mem(pid)
                total += rss
                if hwm > self.hwm.get(pid, 0):
                    self.hwm[pid] = hwm
            self.peak_rss = max(self.peak_rss, total)
            self.samples += 1

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            self.done.wait(self.interval)

    def stop(self) -> None:
        self.done.set()
        self.join()


def run_tree(
    commands: Sequence[Sequence[str]],
    env: Mapping[str, str],
    cwd: Path,
    log_dir: Path,
    timeout: float,
    interval: float = 0.005,
) -> Run:
    """Start ``commands`` together and measure until the last has exited.

    Output goes to files (never pipes the harness would have to drain while timing). A
    command still running after ``timeout`` is killed with its whole process group.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    sampler = TreeSampler(interval)
    sampler.start()
    procs: list[subprocess.Popen[bytes]] = []
    files = []
    start = time.perf_counter()
    for i, cmd in enumerate(commands):
        out = open(log_dir / f"{i}.out", "wb")  # noqa: SIM115 -- closed below
        err = open(log_dir / f"{i}.err", "wb")  # noqa: SIM115
        files += [out, err]
        p = subprocess.Popen(
            list(cmd),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        sampler.add_root(p.pid)
        procs.append(p)
    codes: dict[int, int] = {}
    ends: dict[int, float] = {}
    cpu = 0.0
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        for p in procs:
            kill_group(p.pid)

    timer = threading.Timer(timeout, expire)
    timer.start()
    while len(codes) < len(procs):
        pid, status, usage = os.wait4(-1, 0)
        if pid in sampler.roots:
            ends[pid] = time.perf_counter() - start
            codes[pid] = os.waitstatus_to_exitcode(status)
            cpu += usage.ru_utime + usage.ru_stime
    timer.cancel()
    wall = max(ends.values())
    sampler.sample()  # last look: high-water marks of processes still being torn down
    sampler.stop()
    strays = [pid for pid in sampler.members if pid not in codes and alive(pid)]
    for p in procs:
        p.returncode = codes[p.pid]
        kill_group(p.pid)  # strays (an orphaned node child) must not outlive the run
    for f in files:
        f.close()
    first_out = (log_dir / "0.out").read_text(errors="replace")
    first_err = (log_dir / "0.err").read_text(errors="replace")
    failure_lines = []
    for i, p in enumerate(procs):
        if codes[p.pid] != 0:
            lines = (log_dir / f"{i}.err").read_text(errors="replace").strip().splitlines()
            failure_lines.append(f"exit {codes[p.pid]}: {lines[-1] if lines else ''}")
    return Run(
        wall_s=wall,
        peak_rss=sampler.peak_rss,
        hwm_sum=sum(sampler.hwm.values()),
        cpu_s=cpu,
        exit_codes=[codes[p.pid] for p in procs],
        processes=len(sampler.members),
        samples=sampler.samples,
        stdout=first_out,
        stderr=first_err,
        timed_out=expired.is_set(),
        strays=len(strays),
        ends_s=[ends[p.pid] for p in procs],
        failure_lines=failure_lines,
        max_hwm=max(sampler.hwm.values(), default=0),
    )


def alive(pid: int) -> bool:
    """True for a running process; False for a zombie or a pid that is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] not in (b"Z", b"X")


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
