"""The run's one node process: started first, it evaluates the config, then maybe bridges.

Why: a JS run used to start node twice — once for the app's config (``shim/load-config.js``),
once for the bridge (after psycopg was imported, connected and the lock taken) — and the
bridge's ``require('sequelize')`` (~0.15 s) ran on the critical path. Now
:func:`start_early`, called by the console script before click or psycopg are imported, starts
``node shim/session.js`` in parallel with Python's own start. That node evaluates the config
and answers on its protocol socket, then waits:

* nothing pending (every pod start): the runner closes the socket (:func:`discard`); node
  exits having never loaded sequelize;
* ``up`` has won the lock and has JS to run: the bridge (:class:`~migrations_compat.bridge.
  NodeBridge`) is started at once, and :func:`claim_bridge` hands it this process, which loads
  sequelize while the runner does its bookkeeping (unless a valid startup snapshot exists,
  :mod:`migrations_compat.snapshot`: the bridge then starts from it and this node ends);
* ``down`` (an operator's command, not started by N replicas at once) knows what it reverts
  before it waits for the lock: :func:`preload_bridge` tells node to load sequelize then.

Waiters must not pay for sequelize (32 runners start at once; N-1 find nothing to do), so
``up`` does not load it before the lock is won, although the libpq read already knows a JS
migration is pending: measured on the forum app, loading it then (when that read saw nobody
else migrating) made a full ``up`` ~0.08 s shorter (0.87× instead of 0.99× sequelize-cli) but
cost each of 32 concurrent runners 0.05 CPU-s more (0.29 → 0.34), because several runners of
a burst see "nobody else" at once (bench/README.md, third round). A run whose libpq read sees
another runner ends its node right away; one that loses the race for the lock ends it before
it waits.

Only what the ordinary path would do is ever reused: config.py claims the session only for the
very files it would evaluate (:func:`claim_config`), and the bridge only with the same node,
flags, environment, packages and ``PGOPTIONS`` (else the session is closed and the old way
runs). Connection settings never reach node's argv or environment: the bridge's options travel
on the socket. Output node prints while evaluating the config is dropped, as before; once it
bridges, the bridge forwards it to the run log. ``MIGRUNNER_EARLY_NODE=0`` turns this off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from migrations_compat.config_job import ConfigJob, config_job
from migrations_compat.node_process import BRIDGE_NODE_ARGS, NodeGone, NodeProcess

if TYPE_CHECKING:
    from pathlib import Path

SESSION_JS = os.path.join(os.path.dirname(os.path.realpath(__file__)), "shim", "session.js")
#: Commands that read the config: the ones that may run JS migrations, and ``status`` (a
#: readiness probe as frequent as the no-op; it never turns the node into a bridge, the run
#: ends it like a no-op's).
EARLY_COMMANDS = frozenset(
    {
        "up",
        "db:migrate",
        "down",
        "db:migrate:undo",
        "db:migrate:undo:all",
        "status",
        "db:migrate:status",
    }
)
#: Options that take a value, as far as finding the config's files needs to know.
_VALUE_OPTIONS = {"--config": "config", "--options-path": "options_path", "--url": "url"}


class NodeSession:
    """One ``node shim/session.js``: the config's answer first, then (maybe) the bridge."""

    def __init__(self, node: str, job: ConfigJob, environ: Mapping[str, str]) -> None:
        self.node = node
        self.job = job
        self.environ = dict(environ)
        self.process = NodeProcess(
            [node, *BRIDGE_NODE_ARGS, SESSION_JS],
            [job.request()],
            self.environ,
            _dropped,
            cwd=job.cwd,
        )
        self.config_ok = False
        self.launch: Any = None  # the BridgeLaunch sequelize was loaded for

    def config_answer(self, timeout: float) -> dict[str, Any] | None:
        """The config's answer (``shim/config-eval.js``), or None when node ended without one.
        Raises TimeoutError."""
        try:
            msg = self.process.recv(timeout)
        except NodeGone:
            self.process.proc.wait()
            return None
        self.config_ok = msg.get("t") == "config" and bool(msg.get("ok"))
        return msg if msg.get("t") == "config" else None

    @property
    def returncode(self) -> int | None:
        return self.process.proc.returncode

    def load_sequelize(self, launch: Any) -> None:
        """Become the bridge: load sequelize and pg as ``launch`` says (``bridge_launch``)."""
        self.launch = launch
        self.process.send(
            {
                "t": "bridge",
                "sequelizeDir": str(launch.sequelize_dir),
                "pgDir": str(launch.pg_dir),
                "nodePath": launch.node_path,
                "pgOptions": launch.pg_options,
            }
        )

    def close(self) -> None:
        """End node: a node that never loaded sequelize has nothing to finish and is killed
        (no exit of its own to wait for, ~5 ms of every pod start); a bridging one is told
        to stop by closing the socket."""
        if self.launch is None and self.process.proc.poll() is None:
            self.process.proc.kill()
        self.process.stop()


def _dropped(stream: str, line: str) -> None:
    """What the app's config prints is not the run's output (it was not before either)."""


_session: NodeSession | None = None


def start_early(argv: Sequence[str], environ: Mapping[str, str], cwd: str) -> None:
    """Start the run's node when the command line says it will need one (see module doc)."""
    global _session
    if _session is not None or environ.get("MIGRUNNER_EARLY_NODE") == "0":
        return
    opts = _scan(argv)
    if opts is None:
        return
    job = config_job(cwd, opts.get("options_path"), opts.get("config"), opts.get("url"))
    if job is None:
        return
    from migrations_compat.node_runtime import find_node

    node = find_node(environ)
    if node is None:
        return  # the ordinary path says so
    try:
        _session = NodeSession(node, job, environ)
    except OSError:
        return  # likewise


def _scan(argv: Sequence[str]) -> dict[str, str] | None:
    """The command's config-related options, read as click will (last one wins); None when
    the command is not one of :data:`EARLY_COMMANDS`. A wrong guess costs a node, not a
    wrong answer: :func:`claim_config` compares with what click parsed."""
    if not argv or argv[0] not in EARLY_COMMANDS:
        return None
    out: dict[str, str] = {}
    rest = list(argv[1:])
    while rest:
        arg = rest.pop(0)
        if arg in ("-h", "--help"):
            return None
        name, eq, value = arg.partition("=")
        if name in _VALUE_OPTIONS:
            if not eq:
                if not rest:
                    return None
                value = rest.pop(0)
            out[_VALUE_OPTIONS[name]] = value
    return out


def claim_config(node: str, job: ConfigJob) -> NodeSession | None:
    """The early session when it evaluates exactly ``job`` with ``node``; else None (and an
    early session guessed wrong is closed)."""
    if _session is None:
        return None
    if _session.job == job and _session.node == node:
        return _session
    discard()
    return None


def preload_bridge(search_dirs: Sequence[Path | str], own_lock_timeout: float | None) -> None:
    """A JS migration is pending and nobody else is migrating: load sequelize now, while
    psycopg is imported and the lock is taken. Does nothing without a session fit to bridge."""
    session = _session
    if session is None or not session.config_ok or session.launch is not None:
        return
    from migrations_compat import snapshot
    from migrations_compat.bridge_launch import bridge_launch
    from migrations_compat.node_process import BRIDGE_NODE_ARGS
    from migrations_compat.node_runtime import select_node
    from runner.errors import ConfigError

    choice = select_node(session.environ)
    if choice is None or os.path.realpath(choice.path) != os.path.realpath(session.node):
        return
    try:
        launch = bridge_launch(search_dirs, own_lock_timeout)
    except ConfigError:
        return  # the bridge reports it when it starts
    env = launch.env(session.environ)
    spec = snapshot.SnapshotSpec(choice.path, BRIDGE_NODE_ARGS, launch.sequelize_dir, launch.pg_dir)
    if snapshot.mode(env) == "build" or (
        snapshot.mode(env) == "use" and snapshot.find(spec, snapshot.cache_root(env))
    ):
        return  # the bridge will start from a startup snapshot: loading it here is waste
    try:
        session.load_sequelize(launch)
    except NodeGone:
        discard()


def claim_bridge(node: str, launch: Any, environ: Mapping[str, str]) -> NodeProcess | None:
    """The session's process for a bridge started with ``node`` and ``launch`` in ``environ``
    (with the default node flags), told to load sequelize if it was not yet; None when there is
    no session fit for it (it is then closed: the bridge starts a node of its own)."""
    global _session
    session, _session = _session, None
    if session is None:
        return None
    fits = (
        session.config_ok
        and os.path.realpath(node) == os.path.realpath(session.node)
        and session.launch in (None, launch)
        and dict(environ) == session.environ
    )
    if not fits:
        session.close()
        return None
    try:
        if session.launch is None:
            session.load_sequelize(launch)
    except NodeGone:
        session.close()
        return None
    session.process.stderr_tail.clear()
    return session.process


def discard() -> None:
    """End the session's node (a no-op run, a waiter, a session nobody can use)."""
    global _session
    session, _session = _session, None
    if session is not None:
        session.close()


def current() -> NodeSession | None:
    return _session
