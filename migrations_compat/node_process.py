"""The node child of a run, and its I/O: a socketpair for the protocol, pipes for its output.

Shared by the bridge (:mod:`migrations_compat.bridge`) and the run's node session
(:mod:`migrations_compat.node_session`, which starts node before psycopg is imported: so this
module imports nothing heavy).
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from os import PathLike

_STOP_TIMEOUT = 3.0
_STDERR_TAIL = 30
#: node flags of every bridge node: a 1 MiB young generation keeps node near 70 MiB instead of
#: 85 under a long migration, so runner and node fit a 128 MiB Job together (~15 ms start-up).
BRIDGE_NODE_ARGS: tuple[str, ...] = ("--max-semi-space-size=1",)


class NodeGone(Exception):
    """The node process closed the protocol socket (it exited or crashed)."""


class NodeProcess:
    """The node child: a socketpair for the protocol, pipes for what migrations print.

    All I/O is multiplexed in one thread, so reading a big reply can never deadlock against
    node blocking on a full stdout pipe, and printed lines reach the log in order.
    """

    def __init__(
        self,
        script: list[str],
        args: list[str],
        env: Mapping[str, str],
        on_output: Callable[[str, str], None],
        cwd: PathLike[str] | str | None = None,
    ) -> None:
        parent, child = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [*script, str(child.fileno()), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(child.fileno(),),
                env=dict(env),
                cwd=cwd,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.sock = parent
        self.sock.setblocking(False)
        self.on_output = on_output
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ, "proto")
        self._streams: dict[str, Any] = {"stdout": self.proc.stdout, "stderr": self.proc.stderr}
        for name, stream in self._streams.items():
            os.set_blocking(stream.fileno(), False)
            self._sel.register(stream, selectors.EVENT_READ, name)
        self._inbuf = bytearray()
        self._inbox: deque[dict[str, Any]] = deque()
        self._outbuf = bytearray()
        self._partial = {"stdout": b"", "stderr": b""}
        self.stderr_tail: deque[str] = deque(maxlen=_STDERR_TAIL)
        self._eof = False

    def send(self, msg: Mapping[str, Any]) -> None:
        data = json.dumps(msg, ensure_ascii=False, separators=(",", ":"), default=str)
        self._outbuf += data.encode("utf-8") + b"\n"
        self._pump(lambda: not self._outbuf)

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        self._pump(lambda: bool(self._inbox), timeout)
        if not self._inbox:
            raise TimeoutError
        return self._inbox.popleft()

    def pending(self) -> list[dict[str, Any]]:
        """Messages already received and not yet consumed."""
        out = list(self._inbox)
        self._inbox.clear()
        return out

    def drain_output(self) -> None:
        """Forward whatever node has printed so far (console.log to a pipe is synchronous)."""
        self._quiet_socket()
        while True:
            events = self._sel.select(0)
            if not events:
                return
            self._dispatch(events)

    def _pump(self, done: Callable[[], bool], timeout: float | None = None) -> None:
        while not done():
            if self._eof:
                raise NodeGone
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._outbuf else 0)
            self._sel.modify(self.sock, want, "proto")
            events = self._sel.select(timeout)
            if not events and timeout is not None:
                return
            self._dispatch(events)

    def _quiet_socket(self) -> None:
        """Stop waiting for the socket to become writable (it nearly always is)."""
        if not self._eof:
            self._sel.modify(self.sock, selectors.EVENT_READ, "proto")

    def _dispatch(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, mask in events:
            if key.data == "proto":
                self._on_socket(mask)
            else:
                self._on_stream(key.data)

    def _on_socket(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE and self._outbuf:
            try:
                sent = self.sock.send(self._outbuf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._mark_eof()
                return
            del self._outbuf[:sent]
        if mask & selectors.EVENT_READ:
            try:
                data = self.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._mark_eof()
                return
            start = len(self._inbuf)  # scan only new data: big messages stay linear
            self._inbuf += data
            while (nl := self._inbuf.find(b"\n", start)) >= 0:
                line = bytes(self._inbuf[:nl])
                del self._inbuf[: nl + 1]
                start = 0
                if line:
                    self._inbox.append(json.loads(line))

    def _mark_eof(self) -> None:
        self._eof = True
        self._outbuf.clear()
        self._sel.unregister(self.sock)

    def _on_stream(self, name: str) -> None:
        stream = self._streams[name]
        try:
            data = os.read(stream.fileno(), 1 << 16)
        except BlockingIOError:
            return
        if not data:
            self._sel.unregister(stream)
            rest = self._partial[name]
            self._partial[name] = b""
            if rest:
                self._emit(name, rest)
            return
        buf = self._partial[name] + data
        *lines, self._partial[name] = buf.split(b"\n")
        for line in lines:
            self._emit(name, line)

    def _emit(self, name: str, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if name == "stderr":
            self.stderr_tail.append(line)
        self.on_output(name, line)

    def finish_output(self, timeout: float) -> None:
        """After node is gone: read its remaining output to EOF (for the stderr tail)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._quiet_socket()
        deadline = time.monotonic() + _STOP_TIMEOUT
        # A grandchild may keep the pipes open: stop at the deadline rather than at EOF.
        while any(key.data != "proto" for key in self._sel.get_map().values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._dispatch(self._sel.select(remaining))

    def stop(self) -> list[dict[str, Any]]:
        """Close the protocol socket (node exits on EOF); returns messages it sent last."""
        leftover = self.pending()
        if not self._eof:
            try:
                self.sock.shutdown(socket.SHUT_WR)
                while True:
                    leftover.append(self.recv(_STOP_TIMEOUT))
            except (NodeGone, TimeoutError, OSError):
                pass
        try:
            self.proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.finish_output(0)
        self._sel.close()
        self.sock.close()
        for stream in self._streams.values():
            stream.close()
        return leftover
