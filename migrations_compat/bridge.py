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
import os
import re
import sys
from collections.abc import Mapping, Sequence
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
from migrations_compat.bridge_launch import (
    SHIM_DIR,
    BridgeLaunch,
    ResolvedPackages,
    bridge_launch,
    resolve_packages,
)
from migrations_compat.bridge_sql import LABEL_INTROSPECTION, analyze, first_line
from migrations_compat.node_exit import describe_exit, memory_limit
from migrations_compat.node_process import BRIDGE_NODE_ARGS, NodeGone, NodeProcess
from migrations_compat.snapshot import SnapshotSpec, node_command
from runner.errors import (
    AtomicModeUnavailable,
    ConfigError,
    DatabaseUnavailable,
    MigrationFailed,
    MigrunnerError,
)
from runner.log import Log

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
#: Why a JS migration runs in pool mode when its module says so.
DECLARES_NO_TRANSACTION = "it declares useTransaction: false"
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
    node_args: Sequence[str] = BRIDGE_NODE_ARGS
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
        self._node: NodeProcess | None = None
        self._ready = False
        self._next_id = 0
        self._current: str | None = None
        self._late: list[dict[str, Any]] = []
        self._dry = False
        #: useTransaction exports node reported (by 'meta', or with a run): no second asking
        self._declared: dict[Path, bool | None] = {}
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
            with contextlib.suppress(NodeGone):
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

    def _spawn(self) -> NodeProcess:
        launch = bridge_launch(self.options.search_dirs, self.options.own_connection_lock_timeout)
        env = launch.env(os.environ if self.options.env is None else self.options.env)
        spec = SnapshotSpec(
            self.options.node,
            tuple(self.options.node_args),
            launch.sequelize_dir,
            launch.pg_dir,
        )
        argv, self._blob = node_command(
            spec, BRIDGE_JS, {**env, "MIGRUNNER_SNAPSHOT": "0"} if self._no_snapshot else env
        )
        # A startup snapshot beats the run's node session: node then starts with sequelize
        # already evaluated (less CPU than the session's require), so the session ends.
        adopted = self._adopt(launch) if self._blob is None else None
        if self._blob is not None:
            _end_session()
        self._node = adopted or self._start_node(argv, launch, env)
        options = {
            k: v for k, v in self.options.sequelize_options.items() if k not in _CONNECTION_KEYS
        }
        # Options travel on the socket, not in argv where any local user's ps could read them.
        with contextlib.suppress(NodeGone):  # reported with node's stderr by _started()
            floating = {
                "strict": self.options.strict_await,
                "settleMs": max(1, int(self.options.settle_timeout * 1000)),
            }
            self._node.send(
                {"t": "init", "sequelizeOptions": options, "floating": floating, "dry": self._dry}
            )
        return self._node

    def _adopt(self, launch: BridgeLaunch) -> NodeProcess | None:
        """The run's node session (it evaluated the config, and may be loading sequelize
        already: :mod:`migrations_compat.node_session`) when it is the node this bridge would
        start, with the same flags and environment."""
        if self.options.env is not None or tuple(self.options.node_args) != BRIDGE_NODE_ARGS:
            return None
        from migrations_compat.node_session import claim_bridge

        node = claim_bridge(self.options.node, launch, os.environ)
        if node is not None:
            node.on_output = self._forward
        return node

    def _start_node(
        self, argv: list[str], launch: BridgeLaunch, env: Mapping[str, str]
    ) -> NodeProcess:
        try:
            return NodeProcess(
                argv,
                [str(launch.sequelize_dir), str(launch.pg_dir)],
                env,
                self._forward,
            )
        except FileNotFoundError as exc:
            raise ConfigError(
                f"node not found ({self.options.node!r}): JS migrations need Node.js"
            ) from exc

    def _started(self) -> NodeProcess:
        node = self._node or self._spawn()
        if self._ready:
            return node
        try:
            msg = node.recv(_STARTUP_TIMEOUT)
        except (NodeGone, TimeoutError) as exc:
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
        if path in self._declared:
            return self._declared[path]
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
        except NodeGone as exc:
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
        self._declared[path] = None if flag is None else bool(flag)
        return self._declared[path]

    def known_transaction(self, path: Path | str) -> bool | None:
        """The ``useTransaction`` export when node already reported it, else None (a
        transactional :meth:`run` then checks it itself: one round trip instead of two)."""
        return self._declared.get(Path(path).resolve())

    def run(
        self,
        path: Path | str,
        direction: Direction,
        conn: psycopg.Connection[Any],
        transactional: bool = True,
        dry_run: bool = False,
        isolation: str | None = None,
        observer: Any = None,
        check_declared: bool = False,
    ) -> BridgeOutcome:
        """Run ``up`` or ``down`` of one JS migration on ``conn`` (autocommit mode).

        transactional: the caller has executed BEGIN and will COMMIT / ROLLBACK; the bridge
        never ends that transaction. dry_run implies transactional, and skips (recording them)
        statements that cannot run inside a transaction. Raises MigrationFailed (with
        ``.sqlstate`` when a statement failed) or DatabaseUnavailable. check_declared: the
        caller did not ask :meth:`wants_transaction` first; unless the flag is known, a
        transactional run checks it and raises AtomicModeUnavailable
        (:data:`DECLARES_NO_TRANSACTION`) without running anything when it is false (one
        round trip instead of two); a module that fails to load is then worded as by
        :meth:`wants_transaction`.
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
        # the run also does what a 'meta' request did (and words a load failure like it)
        checks = check_declared and transactional and not dry_run and path not in self._declared
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
                    # not yet known: node runs nothing if it declares useTransaction: false
                    "chk": checks,
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
            if "uf" in msg:
                self._declared[path] = None if msg["uf"] is None else bool(msg["uf"])
            if msg.get("skip"):  # nothing ran; the migrator re-runs it outside a transaction
                raise AtomicModeUnavailable(DECLARES_NO_TRANSACTION)
            if dry_run and msg.get("own"):
                return self._not_rehearsed(conn, executor, msg, name)
            problem = executor.finish()
            if dry_run:
                conn.execute(f"RELEASE SAVEPOINT {_REHEARSAL}", prepare=False)
        except NodeGone as exc:
            tail = self._tail(node, exc)
            self.close()
            raise MigrationFailed(
                f"{_where(name, direction, path, None)}: node exited: {tail}"
            ) from None
        except AtomicModeUnavailable:
            raise
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
            loading = checks and msg.get("lf")
            text = self._js_failure(name, None if loading else direction, err, path)
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

    def _stray(self, node: NodeProcess, msg: Mapping[str, Any]) -> None:
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

    def _tail(self, node: NodeProcess, exc: BaseException) -> str:
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


def _end_session() -> None:
    """End the run's node session, if one was started (it is not needed)."""
    session = sys.modules.get("migrations_compat.node_session")
    if session is not None:
        session.discard()


def _where(name: str, direction: str | None, path: Path | None, line: Any) -> str:
    """``migration NAME failed (DIR) at PATH:LINE``, as SQL migrations' errors begin."""
    what = f"failed ({direction})" if direction else "failed to load"
    at = f" at {path}{f':{line}' if line else ''}" if path is not None else ""
    return f"migration {name} {what}{at}"


def _one_line(sql: str, limit: int = 160) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _row_sender(node: NodeProcess, query_id: Any) -> RowSink:
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
