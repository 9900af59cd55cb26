"""Why node went away, in words a platform engineer can act on.

A container that reaches its memory limit gets its largest process killed by the kernel with
SIGKILL, and in a JS run that is node: "exit code -9" alone hides "out of memory". V8 that runs
out of heap prints "JavaScript heap out of memory" and aborts. Both are named here, with the
container's memory limit when the cgroup exposes one (v2 ``memory.max``, v1
``memory.limit_in_bytes``), so the one-line error says what to raise.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 reports "no limit" as the largest page-aligned 63-bit number.
_UNLIMITED = 1 << 60
MIB = 1024 * 1024


def memory_limit(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT
) -> int | None:
    """The memory limit of this process's cgroup in bytes, or None when there is none.

    Kubernetes puts a container's ``resources.limits.memory`` here. The path in
    ``/proc/self/cgroup`` is relative to the hierarchy's mount; inside a container's cgroup
    namespace it is ``/``, so the mount's own file is the container's.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    candidates: list[Path] = []
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        rel = rel.lstrip("/")
        if controllers == "":  # v2 unified hierarchy
            candidates += [root / rel / "memory.max", root / "memory.max"]
        elif "memory" in controllers.split(","):
            base = root / "memory"
            candidates += [base / rel / "memory.limit_in_bytes", base / "memory.limit_in_bytes"]
    for path in candidates:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit():
            return None
        value = int(text)
        return None if value >= _UNLIMITED else value
    return None


def describe_exit(code: int | None, stderr_lines: Sequence[str], limit: int | None) -> str:
    """How node ended, to follow "node exited: ": ``exit code 1``, ``killed by SIGKILL ...``."""
    heap = any("heap out of memory" in line for line in stderr_lines)
    if heap:
        return "out of JavaScript heap (V8: heap out of memory)." + _limit_hint(limit)
    if code is None:
        return "no exit status"
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code == signal.SIGKILL:
        return f"killed by SIGKILL (exit code {code}): out of memory?" + _limit_hint(limit)
    return f"killed by {name} (exit code {code})"


def _limit_hint(limit: int | None) -> str:
    if limit is None:
        return ""
    return f" This container's memory limit is {limit / MIB:.0f} MiB (migrunner and node share it)."
