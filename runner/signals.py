"""SIGTERM / SIGINT and the per-migration time limit.

Kubernetes ends a Job's pod (deletion, node drain, ``activeDeadlineSeconds``) with SIGTERM and,
after the grace period, SIGKILL. migrunner is the container's PID 1 there, and the kernel
delivers no signal to PID 1 for which it has no handler: without one, every SIGTERM became a
SIGKILL 30 s later, exit 137 and no message. So both signals get a handler, in every role
(holder, waiter, a process that has not connected yet):

* the node child is killed at once (a CPU-bound or never-settling migration would not read
  its socket), so no orphan outlives the runner;
* :class:`Interrupted` (a ``KeyboardInterrupt``, which psycopg answers by cancelling the
  running statement) unwinds the run: the open transaction is rolled back, the lock released
  and every connection closed on the way out;
* the CLI prints one line naming the signal and exits ``128 + signal`` (143 / 130).

A second signal while that cleanup runs exits at once; the server rolls back whatever is
still open when the connection drops, and frees the lock with it.

``--migration-timeout`` uses the same path through SIGALRM, raising :class:`MigrationTimeout`
inside the migration's code; the migrator turns it into a failure of that migration (exit 1).

Signal dispositions are process-wide by nature: this module is the one place that keeps state
about them (what was received), and only the CLI's entry point installs the handlers.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType

HANDLED = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}
_received: list[int] = []


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived; ``context`` says what the runner was doing."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.context = ""

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def message(self) -> str:
        name = HANDLED.get(signal.Signals(self.signum), f"signal {self.signum}")
        return f"stopped by {name}{self.context}"


class MigrationTimeout(KeyboardInterrupt):
    """A migration's code ran longer than ``--migration-timeout``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def install() -> None:
    """Handle SIGTERM and SIGINT (from the CLI's entry point, in the main thread)."""
    for signum in HANDLED:
        signal.signal(signum, _on_signal)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _received:  # a second signal during the cleanup: leave now
        os._exit(128 + _received[0])
    _received.append(signum)
    kill_children()
    raise Interrupted(signum)


def describe(exc: KeyboardInterrupt) -> tuple[int, str]:
    """Exit code and the one line the CLI prints for an interruption."""
    if isinstance(exc, Interrupted):
        return exc.exit_code, exc.message
    return 130, "stopped by SIGINT"


def kill_children() -> None:
    """SIGKILL this process's children (the node bridge): their state no longer matters
    and nothing they hold can commit without our connection."""
    for pid in children():
        with suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def children() -> list[int]:
    """Our children's pids, from /proc — only when /proc belongs to our pid namespace (as PID 1
    of a container that does not mount its own /proc, its pids would name other processes;
    then the bridge's own shutdown stops node, a few seconds later)."""
    pids: list[int] = []
    try:
        if os.readlink("/proc/self") != str(os.getpid()):
            return pids
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return pids
    for task in tasks:
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return pids


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`MigrationTimeout` in the main thread after ``seconds`` (None: no limit).
    psycopg cancels a statement interrupted this way; the node child is killed."""
    if not seconds:
        yield
        return

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        kill_children()
        raise MigrationTimeout(seconds)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
