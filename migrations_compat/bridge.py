"""The node bridge: Sequelize JS migrations, unmodified, with their SQL executed by Python.

One ``node`` process per run (started on the first JS migration, reused after) loads the app's
own ``sequelize`` and gives each migration a Sequelize instance whose pg ``dialectModule`` sends
every query back over a socketpair. Python executes it on the runner's connection, inside the
runner's transaction (see :mod:`migrations_compat.bridge_exec`), and replies with text values
and type OIDs. The protocol has its own channel (an inherited socket); node's stdout and stderr
carry only what migrations print, and are forwarded to the run log tagged with the migration.

A migration can opt out of the runner's transaction (sequelize-cli semantics, e.g. for
``CREATE INDEX CONCURRENTLY``) by exporting ``useTransaction: false`` next to ``up``/``down``::

    module.exports = { useTransaction: false, async up(queryInterface) { ... } };

:meth:`NodeBridge.wants_transaction` reads that flag so the migrator can choose the mode first.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import pq

from migrations_compat import snapshot
from migrations_compat.bridge_exec import (
    ExecutedStatement,
    RowSink,
    StatementError,
    StatementExecutor,
)
from migrations_compat.bridge_sql import LABEL_INTROSPECTION, analyze, first_line
from migrations_compat.node_exit import describe_exit, memory_limit
from migrations_compat.snapshot import SnapshotSpec, node_command
from runner.errors import (
    AtomicModeUnavailable,
    ConfigError,
    DatabaseUnavailable,
    MigrationFailed,
    MigrunnerError,
)
from runner.log import Log

SHIM_DIR = Path(__file__).resolve().parent / "shim"
BRIDGE_JS = SHIM_DIR / "bridge.js"
#: The sequelize release the bridge is built and tested against (pinned in shim/package.json).
SUPPORTED_SEQUELIZE_MAJOR = 6
_STARTUP_TIMEOUT = 60.0
_STOP_TIMEOUT = 3.0
_STDERR_TAIL = 30
_SHORT_SECRET = 4
#: Config keys about reaching the database: never sent to node (the bridge is the connection).
#: Dry run: the savepoint a migration with connections of its own is rolled back to.
_REHEARSAL = "migrunner_rehearsal"
#: How many floating statements the warning names.
_FLOATING_SHOWN = 3
NOT_REHEARSED_OWN_CONNECTION = (
    "not rehearsed: opens its own database connection (read-only during a dry run, and it "
    "cannot see the rehearsal's changes)"
)
_CONNECTION_KEYS = frozenset(
    {"host", "port", "username", "password", "database", "url", "use_env_variable", "replication"}
)

Direction = Literal["up", "down"]


@dataclass(frozen=True)
class BridgeOptions:
    """How to start the bridge.

    ``search_dirs``: where the app's ``node_modules`` are looked for (walking up from each, as
    node does); the shim's pinned copy is the fallback. ``sequelize_options``: JSON-able options
    from the app's config entry (``define``, ``timezone``, ``quoteIdentifiers``...), never
    credentials. ``env``: node's environment (None = inherit). ``node_args``: flags for node;
    the default 1 MiB young generation keeps node near 70 MiB instead of 85 under a long
    migration, so runner and node fit a 128 MiB Job together, for ~15 ms more start-up.
    """

    search_dirs: Sequence[Path | str] = ()
    sequelize_options: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] | None = None
    node: str = "node"
    node_args: Sequence[str] = ("--max-semi-space-size=1",)
    #: lock_timeout (seconds) for connections a migration opens itself through the real pg
    #: (PGOPTIONS, unless already set). Such a connection waiting for a lock held by the
    #: runner's open transaction would otherwise wait forever; None disables.
    own_connection_lock_timeout: float | None = 60.0
    #: Refuse queries a migration issues after up()/down() resolved (and fail it), instead of
    #: running them in its transaction and warning.
    strict_await: bool = False
    #: Seconds to wait, after up()/down() resolved, for queries nobody awaited to finish.
    settle_timeout: float = 120.0


@dataclass
class BridgeOutcome:
    """What one ``up()``/``down()`` did."""

    statements: list[ExecutedStatement]
    sequelize_version: str
    sequelize_path: str
    warnings: list[str] = field(default_factory=list)
    #: Dry run: why the migration could not be rehearsed faithfully (None: it was).
    not_rehearsed: str | None = None


@dataclass(frozen=True)
class ResolvedPackages:
    sequelize_dir: Path
    pg_dir: Path
    from_app: bool


def _find_package(name: str, starts: Iterable[Path], exclude: Path | None) -> Path | None:
    """``<dir>/node_modules/<name>`` for the nearest dir walking up from each start, like node."""
    for start in starts:
        for directory in (start, *start.parents):
            if directory.name == "node_modules":
                continue
            candidate = directory / "node_modules" / name
            if not (candidate / "package.json").is_file():
                continue
            if exclude is not None and candidate.resolve().is_relative_to(exclude):
                continue
            return candidate.resolve()
    return None


def resolve_packages(search_dirs: Sequence[Path | str]) -> ResolvedPackages:
    """The app's own sequelize and pg when it has them, else the shim's pinned copies.

    A second copy of sequelize silently changes defaults, so the app's always wins.
    """
    starts = [Path(d).resolve() for d in search_dirs]
    shim_modules = (SHIM_DIR / "node_modules").resolve()
    seq = _find_package("sequelize", starts, exclude=shim_modules)
    from_app = seq is not None
    if seq is None:
        seq = _find_package("sequelize", [SHIM_DIR], exclude=None)
    if seq is None:
        raise ConfigError(
            "sequelize not found: the app has no node_modules/sequelize (searched upwards from "
            + ", ".join(str(s) for s in starts)
            + ") and migrunner's shim is not installed (run: npm ci --prefix "
            + str(SHIM_DIR)
            + ")"
        )
    pg = _find_package("pg", starts, exclude=shim_modules) if from_app else None
    if pg is None and from_app:
        pg = _find_package("pg", [seq], exclude=shim_modules)
    if pg is None:
        pg = _find_package("pg", [SHIM_DIR], exclude=None)
    if pg is None:
        raise ConfigError(f"pg not found; run: npm ci --prefix {SHIM_DIR}")
    return ResolvedPackages(seq, pg, from_app)


class _NodeGone(Exception):
    """The node process closed the protocol socket (it exited or crashed)."""


class _NodeProcess:
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
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.sock = parent
        self.sock.setblocking(False)
        self._on_output = on_output
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
                raise _NodeGone
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
        self._on_output(name, line)

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
            except (_NodeGone, TimeoutError, OSError):
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


class _Secrets:
    """Values that must never reach the log: passwords from the environment and connection."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.values: set[str] = set()
        for key, value in env.items():
            if not value:
                continue
            if any(word in key.upper() for word in ("PASS", "SECRET", "TOKEN")):
                self.values.add(value)
            elif "://" in value:
                try:
                    password = urlsplit(value).password
                except ValueError:
                    password = None
                if password:
                    self.values.add(unquote(password))
                    self.values.add(password)

    def add(self, value: str | None) -> None:
        if value:
            self.values.add(value)

    def redact(self, text: str) -> str:
        for secret in sorted(self.values, key=len, reverse=True):
            if secret not in text:
                continue
            if len(secret) >= _SHORT_SECRET:
                text = text.replace(secret, "***")
            else:  # a very short one only as a word of its own, or every message is garbled
                text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", "***", text)
        return text


class NodeBridge:
    """Runs JS migrations through one long-lived node process; see the module docstring.

    Node is started lazily by the first :meth:`run` / :meth:`wants_transaction` (or early by
    :meth:`prestart`, to overlap its ~0.2 s start-up with the runner's own work).
    """

    def __init__(self, options: BridgeOptions, log: Log) -> None:
        self.options = options
        self.log = log
        self.sequelize_version = ""
        self.sequelize_path = ""
        env = os.environ if options.env is None else options.env
        self._secrets = _Secrets(env)
        self._node: _NodeProcess | None = None
        self._ready = False
        self._next_id = 0
        self._current: str | None = None
        self._late: list[dict[str, Any]] = []
        self._dry = False
        self._blob: Path | None = None  # the startup snapshot node was started from
        self._no_snapshot = False  # set once a snapshot failed: start plainly from then on

    @property
    def node_pid(self) -> int | None:
        """The node process's pid while it runs (for diagnostics and memory accounting)."""
        return None if self._node is None else self._node.proc.pid

    # -- lifecycle ---------------------------------------------------------------------------

    def prestart(self) -> None:
        """Start node now without waiting for it; the first run then finds it warm."""
        if self._node is None:
            self._spawn()

    def rehearsal(self) -> None:
        """Everything that follows is a dry run: every connection a migration opens itself
        (even while its file is loaded) is read-only. Call before the first migration."""
        if self._dry:
            return
        self._dry = True
        if self._node is not None:
            with contextlib.suppress(_NodeGone):
                self._node.send({"t": "init", "dry": True})

    def close(self) -> None:
        """Stop node. Reports queries that migrations issued after they had finished."""
        node, self._node = self._node, None
        self._ready = False
        if node is None:
            return
        for msg in node.stop():
            if msg.get("t") == "late":
                self._late.append(msg)
        for msg in self._late:
            self.log.error(self._late_message(msg))
        self._late.clear()

    def __enter__(self) -> NodeBridge:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _spawn(self) -> _NodeProcess:
        packages = resolve_packages(self.options.search_dirs)
        env = dict(os.environ if self.options.env is None else self.options.env)
        # A migration's own require('sequelize') must find the copy the bridge uses, also when
        # only the shim has one; NODE_PATH is searched after the app's node_modules.
        node_path = [str(packages.sequelize_dir.parent)]
        if env.get("NODE_PATH"):
            node_path.append(env["NODE_PATH"])
        env["NODE_PATH"] = os.pathsep.join(node_path)
        timeout = self.options.own_connection_lock_timeout
        if timeout and "PGOPTIONS" not in env:
            env["PGOPTIONS"] = f"-c lock_timeout={max(1, int(timeout * 1000))}"
        options = {
            k: v for k, v in self.options.sequelize_options.items() if k not in _CONNECTION_KEYS
        }
        spec = SnapshotSpec(
            self.options.node,
            tuple(self.options.node_args),
            packages.sequelize_dir,
            packages.pg_dir,
        )
        argv, self._blob = node_command(
            spec, BRIDGE_JS, {**env, "MIGRUNNER_SNAPSHOT": "0"} if self._no_snapshot else env
        )
        try:
            self._node = _NodeProcess(
                argv,
                [str(packages.sequelize_dir), str(packages.pg_dir)],
                env,
                self._forward,
            )
        except FileNotFoundError as exc:
            raise ConfigError(
                f"node not found ({self.options.node!r}): JS migrations need Node.js"
            ) from exc
        # Options travel on the socket, not in argv where any local user's ps could read them.
        with contextlib.suppress(_NodeGone):  # reported with node's stderr by _started()
            floating = {
                "strict": self.options.strict_await,
                "settleMs": max(1, int(self.options.settle_timeout * 1000)),
            }
            self._node.send(
                {"t": "init", "sequelizeOptions": options, "floating": floating, "dry": self._dry}
            )
        return self._node

    def _started(self) -> _NodeProcess:
        node = self._node or self._spawn()
        if self._ready:
            return node
        try:
            msg = node.recv(_STARTUP_TIMEOUT)
        except (_NodeGone, TimeoutError) as exc:
            tail = self._tail(node, exc)
            self.close()
            if self._blob is not None and not self._no_snapshot:
                # A blob this node cannot start from (another build, a corrupt file): drop it
                # and start the ordinary way; the run must not depend on a cache.
                self.log.warn(f"node could not start from {self._blob}, discarded: {tail}")
                snapshot.discard(self._blob)
                self._no_snapshot = True
                return self._started()
            raise ConfigError(f"the node bridge failed to start: {tail}") from None
        if msg.get("t") != "ready":
            self.close()
            raise ConfigError(f"the node bridge sent {msg.get('t')!r} before 'ready'")
        self._ready = True
        self.sequelize_version = str(msg.get("version", ""))
        self.sequelize_path = str(msg.get("path", ""))
        via = " (startup snapshot)" if self._blob is not None and not self._no_snapshot else ""
        self.log.info(
            f"using sequelize {self.sequelize_version} from {self.sequelize_path}{via}",
            sequelize_version=self.sequelize_version,
            sequelize_path=self.sequelize_path,
            **({"snapshot": str(self._blob)} if via else {}),
        )
        major = self.sequelize_version.split(".", 1)[0]
        if major != str(SUPPORTED_SEQUELIZE_MAJOR):
            self.log.warn(
                f"sequelize {self.sequelize_version} is not {SUPPORTED_SEQUELIZE_MAJOR}.x; "
                "the bridge is tested with 6.37.8"
            )
        return node

    # -- the two operations ------------------------------------------------------------------

    def wants_transaction(self, path: Path | str) -> bool | None:
        """The migration's ``useTransaction`` export: False = run outside a transaction.

        None when it does not declare one. Loads the module (and so may start node).
        """
        path = Path(path).resolve()
        node = self._started()
        self._next_id += 1
        request_id = self._next_id
        try:
            node.send({"t": "meta", "id": request_id, "path": str(path)})
            while True:
                msg = node.recv()
                if msg.get("t") == "meta" and msg.get("id") == request_id:
                    break
                self._stray(node, msg)
        except _NodeGone as exc:
            tail = self._tail(node, exc)
            self.close()
            raise MigrationFailed(
                f"{_where(path.name, None, path, None)}: the node bridge died: {tail}"
            ) from None
        except BaseException:
            self.close()
            raise
        if msg.get("err"):
            raise MigrationFailed(self._js_failure(path.name, None, msg["err"], path))
        flag = msg.get("useTransaction")
        return None if flag is None else bool(flag)

    def run(
        self,
        path: Path | str,
        direction: Direction,
        conn: psycopg.Connection[Any],
        transactional: bool = True,
        dry_run: bool = False,
        isolation: str | None = None,
        observer: Any = None,
    ) -> BridgeOutcome:
        """Run ``up`` or ``down`` of one JS migration on ``conn`` (autocommit mode).

        transactional: the caller has executed BEGIN and will COMMIT / ROLLBACK; the bridge
        never ends that transaction. dry_run implies transactional, and skips (recording them)
        statements that cannot run inside a transaction. Raises MigrationFailed (with
        ``.sqlstate`` when a statement failed) or DatabaseUnavailable.
        """
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', not {direction!r}")
        path = Path(path).resolve()
        name = path.name
        in_transaction = transactional or dry_run
        self._secrets.add(conn.info.password)
        self._check_session(conn, in_transaction)
        node = self._started()
        if self._late:
            late = self._late.pop(0)
            raise MigrationFailed(self._late_message(late))
        executor = StatementExecutor(
            conn, transactional=transactional, dry_run=dry_run, isolation=isolation
        )
        executor.observer = observer  # up --dry-run --analyze (runner/observe.py)
        self._next_id += 1
        run_id = self._next_id
        self._current = name
        floating: list[str] = []  # statements issued after up()/down() resolved
        try:
            if dry_run:
                # A migration that turns out to use its own connection is rolled back to here.
                conn.execute(f"SAVEPOINT {_REHEARSAL}", prepare=False)
            node.send(
                {
                    "t": "run",
                    "id": run_id,
                    "path": str(path),
                    "dir": direction,
                    "sv": conn.info.parameter_status("server_version") or "",
                    "dbv": _semver(conn.info.server_version),
                    "dry": dry_run,
                }
            )
            while True:
                msg = node.recv()
                kind = msg.get("t")
                if kind == "q":
                    query_id = msg["id"]
                    if msg.get("fl"):
                        floating.append(str(msg["sql"]))
                    reply = executor.execute(
                        int(msg.get("c", 0)),
                        msg["sql"],
                        msg.get("p"),
                        rows=_row_sender(node, query_id),
                    )
                    reply["t"] = "r"
                    reply["id"] = query_id
                    node.send(reply)
                elif kind == "done" and msg.get("id") == run_id:
                    break
                else:
                    self._stray(node, msg)
            node.drain_output()
            if dry_run and msg.get("own"):
                return self._not_rehearsed(conn, executor, msg, name)
            problem = executor.finish()
            if dry_run:
                conn.execute(f"RELEASE SAVEPOINT {_REHEARSAL}", prepare=False)
        except _NodeGone as exc:
            tail = self._tail(node, exc)
            self.close()
            raise MigrationFailed(
                f"{_where(name, direction, path, None)}: node exited: {tail}"
            ) from None
        except BaseException:
            # Lost connection, interrupt, protocol error: node's state is unknown; a later run
            # starts a fresh one.
            self.close()
            raise
        finally:
            self._current = None
        if executor.abandoned is not None:
            # Whatever the migration did with the refusals, this attempt is void.
            raise AtomicModeUnavailable(
                executor.abandoned.reason, isolation=executor.abandoned.isolation
            )
        for warning in executor.warnings:
            self.log.warn(f"{name}: {warning}", migration=name)
        if self._late:
            # Reported while this migration ran, by an earlier one; fail before it is recorded.
            raise MigrationFailed(self._late_message(self._late.pop(0)))
        sticky = executor.non_transactional_error
        if sticky is not None:
            line = (msg.get("err") or {}).get("line")  # the migration's line, when node knows it
            raise self._statement_failure(name, direction, sticky, path, line)
        running = [str(sql) for sql in msg.get("running") or []]
        if not msg.get("ok"):
            err = msg.get("err") or {}
            sqlstate = err.get("code") or None
            text = self._js_failure(name, direction, err, path)
            if err.get("sql") is not None and str(err["sql"]) in {*floating, *running}:
                text += " (not awaited)"
            if err.get("external") and sqlstate == "55P03":
                # Most likely waiting for a lock its own (migrunner's) transaction holds: a
                # retry would wait again. Not retryable; say what to do instead.
                text += (
                    " — on a connection the migration opened itself, which cannot see or wait "
                    "for the runner's open transaction; declare it useTransaction: false"
                )
                sqlstate = None
            raise MigrationFailed(text, sqlstate=sqlstate)
        if self.options.strict_await:
            for key, what in (("running", "still running when"), ("late", "issued after")):
                if msg.get(key):
                    raise MigrationFailed(
                        self._secrets.redact(
                            f"{_where(name, direction, path, None)}: "
                            f"query {what} {direction}() resolved: "
                            f"{first_line(str(msg[key][0]))} — missing await? (--strict-await)"
                        )
                    )
        if problem is not None:
            raise MigrationFailed(
                self._secrets.redact(f"{_where(name, direction, path, None)}: {problem}")
            )
        if running or floating:
            self._warn_floating(name, direction, running + floating, dry_run)
        return BridgeOutcome(
            statements=executor.statements,
            sequelize_version=self.sequelize_version,
            sequelize_path=self.sequelize_path,
            warnings=list(executor.warnings),
        )

    def run_pool(
        self,
        path: Path | str,
        direction: Direction,
        conn: psycopg.Connection[Any],
        connection: Mapping[str, Any],
    ) -> None:
        """Run ``up``/``down`` in pool mode, on real connections made with ``connection``
        (see :mod:`migrations_compat.bridge_pool`); ``conn`` is the runner's idle connection."""
        from migrations_compat.bridge_pool import run_in_pool

        run_in_pool(self, Path(path).resolve(), direction, conn, connection)

    def _warn_floating(
        self, name: str, direction: str, statements: list[str], dry_run: bool
    ) -> None:
        """One warning per migration naming what it left un-awaited (its own statements first;
        Sequelize's connection set-up and catalog reads only when nothing else floated)."""
        own = [sql for sql in statements if analyze(sql)[0].label != LABEL_INTROSPECTION]
        shown = own or statements
        listed = "; ".join(first_line(sql, 120).rstrip("; ") for sql in shown[:_FLOATING_SHOWN])
        if len(shown) > _FLOATING_SHOWN:
            listed += f"; … ({len(shown) - _FLOATING_SHOWN} more)"
        where = "the dry run's transaction" if dry_run else "the migration's transaction"
        self.log.warn(
            self._secrets.redact(
                f"{name} ({direction}): not awaited: {listed}; they ran in {where}"
            ),
            migration=name,
            floating=len(statements),
        )

    def _not_rehearsed(
        self,
        conn: psycopg.Connection[Any],
        executor: StatementExecutor,
        msg: Mapping[str, Any],
        name: str,
    ) -> BridgeOutcome:
        """Dry run of a migration that opened connections of its own: those ran outside the
        rehearsal (read-only), so the rehearsal says nothing reliable about it. A failure is
        not reported as the migration's (its own connection could neither write nor see the
        rehearsal's changes): its statements are rolled back and the dry run goes on."""
        if msg.get("ok"):
            executor.finish()
            conn.execute(f"RELEASE SAVEPOINT {_REHEARSAL}", prepare=False)
            reason = NOT_REHEARSED_OWN_CONNECTION
        else:
            conn.execute(
                f"ROLLBACK TO SAVEPOINT {_REHEARSAL}; RELEASE SAVEPOINT {_REHEARSAL}",
                prepare=False,
            )
            err = msg.get("err") or {}
            failure = self._js_failure(name, None, err)
            reason = (
                f"{NOT_REHEARSED_OWN_CONNECTION}; it failed in the dry run "
                f"({failure.split(': ', 1)[-1]}) and its statements were rolled back"
            )
        return BridgeOutcome(
            statements=executor.statements,
            sequelize_version=self.sequelize_version,
            sequelize_path=self.sequelize_path,
            warnings=list(executor.warnings),
            not_rehearsed=reason,
        )

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _check_session(conn: psycopg.Connection[Any], in_transaction: bool) -> None:
        if conn.closed or conn.broken:
            raise DatabaseUnavailable("the database connection is closed")
        if not conn.autocommit:
            raise MigrunnerError("the bridge needs a connection in autocommit mode")
        status = conn.info.transaction_status
        if in_transaction and status != pq.TransactionStatus.INTRANS:
            raise MigrunnerError("transactional bridge run without an open transaction (BEGIN)")
        if not in_transaction and status != pq.TransactionStatus.IDLE:
            raise MigrunnerError("non-transactional bridge run inside a transaction")

    def _stray(self, node: _NodeProcess, msg: Mapping[str, Any]) -> None:
        """A message that belongs to no current request."""
        if msg.get("t") == "late":
            self._late.append(dict(msg))
        elif msg.get("t") == "q":
            # Cannot happen (node refuses queries outside a run), but never leave it waiting.
            error = {"message": "query outside any migration run", "code": None}
            node.send({"t": "r", "id": msg.get("id"), "e": error})

    def _forward(self, stream: str, line: str) -> None:
        tag = self._current or "node"
        self.log.info(f"[{tag}] {self._secrets.redact(line)}", migration=tag, stream=stream)

    def _tail(self, node: _NodeProcess, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"no answer within {_STARTUP_TIMEOUT:.0f}s"
        node.finish_output(_STOP_TIMEOUT)
        code = node.proc.returncode
        lines = [line for line in node.stderr_tail if line.strip()]
        how = describe_exit(code, lines, memory_limit())
        tail = " | ".join(lines)
        return self._secrets.redact(how + (f": {tail}" if tail else ""))

    def _late_message(self, msg: Mapping[str, Any]) -> str:
        """A query a migration issued after it had settled and its transaction had ended: it
        was refused (never run in a later migration's transaction), so the run stops here."""
        file = Path(str(msg.get("file", "?")))
        direction = msg.get("dir", "up")
        return self._secrets.redact(
            f"{_where(file.name, direction, file, None)}: "
            f"query issued after {direction}() had finished and its "
            f"transaction had ended; it was not executed: {first_line(str(msg.get('sql', '')))} "
            "— await it (or return its promise)"
        )

    def _statement_failure(
        self,
        name: str,
        direction: str,
        err: StatementError,
        path: Path | None = None,
        line: Any = None,
    ) -> MigrationFailed:
        text = f"{_where(name, direction, path, line)}: {err.message}"
        if err.sqlstate:
            text += f" [SQLSTATE {err.sqlstate}]"
        if err.sql:
            text += f" in statement: {_one_line(err.sql)}"
        return MigrationFailed(self._secrets.redact(text), sqlstate=err.sqlstate)

    def _js_failure(
        self, name: str, direction: str | None, err: Mapping[str, Any], path: Path | None = None
    ) -> str:
        """Worded like a SQL migration's failure: file and line where known, the message,
        SQLSTATE and statement (``migration X failed (up) at /path/X.js:12: ...``)."""
        message = str(err.get("message") or "")
        kind = err.get("kind")
        error_name = str(err.get("name") or "Error")
        line = err.get("line")
        if kind == "syntax":
            file = Path(str(err.get("file") or path or name))
            text = f"{_where(name, direction, file, line)}: {error_name}: {message}"
        else:
            generic = error_name in ("Error", "error") or err.get("code") or kind != "exception"
            text = f"{_where(name, direction, path, line if kind == 'exception' else None)}: "
            text += message if generic else f"{error_name}: {message}"
            if err.get("detail"):
                text += f" ({err['detail']})"
            if err.get("code"):
                text += f" [SQLSTATE {err['code']}]"
            if err.get("sql"):
                text += f" in statement: {_one_line(str(err['sql']))}"
        return self._secrets.redact(" ".join(text.split("\n")))


def _where(name: str, direction: str | None, path: Path | None, line: Any) -> str:
    """``migration NAME failed (DIR) at PATH:LINE``, as SQL migrations' errors begin."""
    what = f"failed ({direction})" if direction else "failed to load"
    at = f" at {path}{f':{line}' if line else ''}" if path is not None else ""
    return f"migration {name} {what}{at}"


def _one_line(sql: str, limit: int = 160) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _row_sender(node: _NodeProcess, query_id: Any) -> RowSink:
    """Where the chunks of a large result of query ``query_id`` go: straight to node."""

    def send(chunk: dict[str, Any]) -> None:
        node.send({"t": "rows", "id": query_id, **chunk})

    return send


def _semver(server_version: int) -> str:
    """libpq's integer server version as the semver Sequelize wants (150013 -> 15.13.0)."""
    major, minor = divmod(server_version, 10000)
    if major < 10:  # 9.6.24 is 90624
        major, rest = divmod(server_version, 10000)
        minor, patch = divmod(rest, 100)
        return f"{major}.{minor}.{patch}"
    return f"{major}.{minor}.0"


__all__ = [
    "BridgeOptions",
    "BridgeOutcome",
    "ExecutedStatement",
    "NodeBridge",
    "ResolvedPackages",
    "resolve_packages",
]
