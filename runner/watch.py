"""Watching the lock's session while a JS migration's code runs.

The session that holds the migration lock is the one running the migration, so nothing it runs
can commit once that session is gone. A JS migration, though, may also write through
connections of its own (a second Sequelize instance, the app's models, the bridge's pool
mode), and while node computes or waits the runner sends nothing on its session and would
only notice the loss at node's next query. So while node runs a migration, a thread polls the
session's socket for the server's hang-up (``POLLRDHUP``: the backend was terminated, timed
out, or the server went away) and kills node at once: a migration never goes on unlocked.
The main thread then finds its connection closed and reports the lost lock (exit 4/5).
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from runner.signals import kill_children

if TYPE_CHECKING:
    import psycopg

POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)
HANGUP = POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL


@contextmanager
def session_watch(conn: psycopg.Connection, enabled: bool = True) -> Iterator[None]:
    if not enabled or not hasattr(select, "poll"):
        yield
        return
    try:
        fd = conn.fileno()
    except Exception:
        yield
        return
    stop_r, stop_w = os.pipe()

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, HANGUP)
        poller.register(stop_r, select.POLLIN)
        while True:
            for ready, events in poller.poll():
                if ready == stop_r:
                    return
                if events & HANGUP:
                    kill_children()
                    return

    thread = threading.Thread(target=watch, name="migrunner-session-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        os.write(stop_w, b"x")
        thread.join()
        os.close(stop_r)
        os.close(stop_w)
