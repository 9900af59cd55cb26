"""Fleets: the same migrations on many tenant databases or schemas, from one command.

A fleet run is a list of *targets* (one connection each, or one schema of one database each),
cut to this worker's *shard*, run by ``--parallel`` worker threads. Each target is migrated
exactly as a single ``up`` would migrate it — its own advisory lock, its own SequelizeMeta and
history — so two fleet processes over the same targets apply each migration once per tenant,
and re-running a fleet is its resume: done targets are no-ops.

Decisions (README, "Fleets"):

* **Shards are stable**: a target belongs to shard ``sha256(key) mod N`` where ``key`` is its
  host, port, database and schema (never its credentials). Adding or reordering tenants never
  moves the others between shards, so an Indexed Job re-run after a tenant was added covers
  each target once.
* **Canaries come first in every shard**: the first K targets of the whole list are migrated
  before anything else by every shard worker (the per-target lock makes the others wait and
  then find nothing to do). If any canary fails, no worker touches the rest of the fleet.
* **One node process per worker thread**, reused across targets: a JS fleet pays node's and
  sequelize's start-up once per worker, not once per tenant as a shell loop does.
* **Schema per tenant**: the target's sessions get ``search_path = <schema>, public`` as a
  connection option (so it survives the per-migration session reset) and SequelizeMeta and
  the history live in that schema.
* **Exit code**: 0 when every target succeeded. Otherwise, when every failure is retryable
  (lock timeout 4, database unreachable 5) the highest of those, so a Job's retry policy can
  retry it; when all failures share one code, that code; else 1.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from runner.dburl import search_path_schema
from runner.errors import ConfigError, MigrunnerError
from runner.log import Log
from runner.settings import Settings, describe, redact, url_to_conninfo

if TYPE_CHECKING:
    from runner.executors import Executors
    from runner.source import Source

RETRYABLE_EXIT_CODES = (4, 5)


@dataclass(frozen=True)
class Target:
    """One tenant: a connection, and the schema when tenants are schemas of one database."""

    label: str  # what reports show: database (and schema) — never a password
    conninfo: dict[str, str] = field(repr=False, compare=False)
    key: str = ""  # stable identity for sharding: host:port/db[/schema]
    schema: str | None = None

    @property
    def password(self) -> str | None:
        return self.conninfo.get("password") or None


@dataclass(frozen=True)
class Shard:
    index: int
    total: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``I/N`` with 0 <= I < N (``JOB_COMPLETION_INDEX`` counts from 0)."""
        try:
            i, n = (int(p) for p in text.split("/", 1))
        except ValueError:
            raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
        if n < 1 or not 0 <= i < n:
            raise ConfigError(f"--shard {text!r}: need 0 <= I < N")
        return cls(i, n)

    def holds(self, target: Target) -> bool:
        return shard_of(target.key, self.total) == self.index


def shard_of(key: str, total: int) -> int:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % total


def target_key(conninfo: dict[str, str], schema: str | None) -> str:
    host = conninfo.get("host") or conninfo.get("hostaddr") or "localhost"
    port = conninfo.get("port") or "5432"
    db = conninfo.get("dbname") or conninfo.get("user") or ""
    return f"{host}:{port}/{db}" + (f"/{schema}" if schema else "")


def make_target(conninfo: dict[str, str], schema: str | None = None) -> Target:
    db = conninfo.get("dbname") or conninfo.get("user") or "?"
    label = f"{db}/{schema}" if schema else db
    return Target(label, dict(conninfo), target_key(conninfo, schema), schema)


# ---- reading the target list (pure where it can be) ----------------------------------------


def parse_target_lines(lines: Iterable[str], where: str) -> list[Target]:
    """One connection URL per line; blank lines and ``#`` comments ignored."""
    targets: list[Target] = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            conninfo = url_to_conninfo(line, f"{where} line {number}")
        except ConfigError as exc:
            raise ConfigError(redact(exc.message, line)) from None
        # dbmate-style ?search_path=a,b: a tenant schema, bookkeeping in `a` (runner/dburl.py)
        targets.append(make_target(conninfo, search_path_schema(line)))
    return dedupe(targets, where)


def dedupe(targets: Sequence[Target], where: str) -> list[Target]:
    seen: dict[str, Target] = {}
    for t in targets:
        if t.key in seen:
            raise ConfigError(f"{where}: target {t.label} ({t.key}) is listed twice")
        seen[t.key] = t
    return list(seen.values())


def read_target_text(path: str) -> list[str]:
    """The lines of ``--targets FILE`` (``-``: standard input)."""
    if path == "-":
        return sys.stdin.read().splitlines()
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--targets {path}: cannot read: {exc.__class__.__name__}") from None


def targets_from_values(
    values: Sequence[str], base: dict[str, str], schemas: bool, where: str
) -> list[Target]:
    """Rows of ``--targets-sql`` (URLs or database names) or ``--schemas-sql`` (schemas)."""
    targets = []
    for value in values:
        if schemas:
            conninfo = with_search_path(base, value)
            targets.append(make_target(conninfo, value))
        elif value.startswith(("postgres://", "postgresql://")):
            targets.append(make_target(url_to_conninfo(value, where), search_path_schema(value)))
        else:
            targets.append(make_target({**base, "dbname": value}))
    return dedupe(targets, where)


def with_search_path(conninfo: dict[str, str], schema: str) -> dict[str, str]:
    """Connection options putting ``schema`` first on the search path of every session."""
    quoted = '"' + schema.replace('"', '""') + '"'
    # libpq's options: backslash escapes spaces and backslashes inside one -c value.
    value = quoted.replace("\\", "\\\\").replace(" ", "\\ ")
    option = f"-c search_path={value},public"
    existing = conninfo.get("options", "")
    return {**conninfo, "options": f"{existing} {option}".strip()}


def query_values(settings: Settings, sql: str, what: str) -> list[str]:
    """Run the user's SELECT on the base connection; first column of each row."""
    import psycopg

    from runner.db import connect

    conn = connect(settings, "fleet")
    try:
        rows = conn.execute(sql.encode()).fetchall()
    except psycopg.Error as exc:
        state = f" [SQLSTATE {exc.sqlstate}]" if exc.sqlstate else ""
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{what}: {first}{state}") from None
    finally:
        conn.close()
    return [str(r[0]) for r in rows if r and r[0] is not None]


# ---- running -------------------------------------------------------------------------------

Outcome = Literal["done", "failed", "skipped"]


@dataclass
class TargetResult:
    target: Target
    outcome: Outcome
    applied: list[str] = field(default_factory=list)
    pending: int | None = None
    error: str | None = None
    exit_code: int = 0
    duration_ms: int = 0
    canary: bool = False

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target.label,
            "outcome": self.outcome,
            "canary": self.canary,
            "duration_ms": self.duration_ms,
        }
        if self.target.schema:
            out["schema"] = self.target.schema
        if self.pending is not None:
            out["pending"] = self.pending
        else:
            out["applied"] = self.applied
        if self.error:
            out["error"] = self.error
            out["exit_code"] = self.exit_code
        return out


@dataclass(frozen=True)
class FleetOptions:
    parallel: int = 1
    canary: int = 0
    fail_fast: bool = False


def fleet_exit_code(results: Sequence[TargetResult]) -> int:
    codes = {r.exit_code for r in results if r.outcome == "failed"}
    if not codes:
        return 0
    if codes <= set(RETRYABLE_EXIT_CODES):
        return max(codes)
    if len(codes) == 1:
        return codes.pop()
    return 1


class TargetLog(Log):
    """The run log with every line tagged by its target (text prefix, JSON field)."""

    def __init__(self, base: Log, label: str, secrets: Sequence[str | None]) -> None:
        super().__init__(
            fmt=base.fmt,
            stream=base.stream,
            out_stream=base.out_stream,
            quiet=base.quiet,
            info_stream=base.info_stream,
        )
        self.label = label
        self.secrets = [s for s in secrets if s]
        self._lock = _WRITE_LOCK

    def _emit(self, level: str, msg: str, fields: dict[str, Any]) -> None:
        msg = redact(msg, *self.secrets)
        with self._lock:
            if self.fmt == "json":
                super()._emit(level, msg, {"target": self.label, **fields})
            else:
                super()._emit(level, f"[{self.label}] {msg}", fields)


_WRITE_LOCK = threading.Lock()


class Fleet:
    """Runs one operation over the targets of this shard; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        log: Log,
        targets: Sequence[Target],
        options: FleetOptions,
        secrets: Sequence[str | None] = (),
    ) -> None:
        self.settings = settings
        self.log = log
        self.targets = list(targets)
        self.options = options
        self.secrets = [*secrets, *(t.password for t in targets)]
        self._idle: list[Executors] = []
        self._all_executors: list[Executors] = []
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._source: Source | None = None

    # -- per target ------------------------------------------------------------------------

    def settings_for(self, target: Target) -> Settings:
        conninfo = dict(target.conninfo)
        conninfo.setdefault("connect_timeout", self.settings.conninfo.get("connect_timeout", "10"))
        return replace(
            self.settings,
            conninfo=conninfo,
            target=describe(conninfo, {}),
            schema=target.schema or self.settings.schema,
        )

    def source(self) -> Source:
        """The migrations folder, read and checked once for the whole fleet."""
        if self._source is None:
            from runner.migrator import Migrator, raise_empty

            self._source = Migrator(self.settings, self.log).source()
            if not self._source.migrations:
                raise_empty(self._source)
        return self._source

    @contextmanager
    def executors(self) -> Iterator[Executors]:
        """An idle worker's executors: at most ``parallel`` node processes for the whole
        fleet, each reused for target after target (canaries included)."""
        from runner.executors import Executors

        with self._guard:
            found = self._idle.pop() if self._idle else Executors(self.settings, self.log)
            if found not in self._all_executors:
                self._all_executors.append(found)
        try:
            yield found
        finally:
            with self._guard:
                self._idle.append(found)

    def migrate(self, target: Target) -> TargetResult:
        from runner.migrator import Migrator

        log = TargetLog(self.log, target.label, self.secrets)
        migrator = Migrator(self.settings_for(target), log, source=self.source())
        with self.executors() as executors:
            report = migrator.up(executors=executors)
        return TargetResult(target, "done", applied=list(report.done))

    def pending(self, target: Target) -> TargetResult:
        from runner.migrator import Migrator

        log = TargetLog(self.log, target.label, self.secrets)
        migrator = Migrator(self.settings_for(target), log, source=self.source())
        report = migrator.status()
        return TargetResult(target, "done", pending=len(report.pending))

    # -- the fleet -------------------------------------------------------------------------

    def run(self, op: Callable[[Target], TargetResult]) -> list[TargetResult]:
        self.source()  # a broken folder fails the fleet once, before any target
        canaries = self.targets[: self.options.canary]
        rest = self.targets[self.options.canary :]
        try:
            results = self._batch(op, canaries, canary=True)
            if any(r.outcome == "failed" for r in results):
                self.log.error(f"a canary failed: the other {len(rest)} target(s) were not touched")
                self._stop.set()
            results += self._batch(op, rest, canary=False)
        finally:
            for executors in self._all_executors:
                executors.close()
        return results

    def _batch(
        self, op: Callable[[Target], TargetResult], targets: Sequence[Target], canary: bool
    ) -> list[TargetResult]:
        if not targets:
            return []
        workers = max(1, min(self.options.parallel, len(targets)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fleet") as pool:
            futures: list[Future[TargetResult]] = [
                pool.submit(self._one, op, t, canary) for t in targets
            ]
            return [f.result() for f in futures]

    def _one(
        self, op: Callable[[Target], TargetResult], target: Target, canary: bool
    ) -> TargetResult:
        if self._stop.is_set():
            return TargetResult(target, "skipped", canary=canary)
        t0 = time.perf_counter()
        try:
            result = op(target)
        except MigrunnerError as err:
            message = redact(err.message, *self.secrets)
            result = TargetResult(
                target, "failed", error=message, exit_code=err.exit_code, canary=canary
            )
            if self.options.fail_fast:
                self._stop.set()
        except Exception as exc:  # never let one tenant's surprise end the others
            text = redact((str(exc).strip().splitlines() or [type(exc).__name__])[0], *self.secrets)
            result = TargetResult(target, "failed", error=text, exit_code=1, canary=canary)
            if self.options.fail_fast:
                self._stop.set()
        result.canary = canary
        result.duration_ms = int((time.perf_counter() - t0) * 1000)
        return result


def summary_lines(results: Sequence[TargetResult], verb: str) -> list[str]:
    done = [r for r in results if r.outcome == "done"]
    failed = [r for r in results if r.outcome == "failed"]
    skipped = [r for r in results if r.outcome == "skipped"]
    lines = [
        f"fleet {verb}: {len(results)} target(s): {len(done)} done, {len(failed)} failed, "
        f"{len(skipped)} skipped"
    ]
    for r in failed:
        lines.append(f"  FAILED {r.target.label} (exit {r.exit_code}): {r.error}")
    return lines


__all__ = [
    "Fleet",
    "FleetOptions",
    "Shard",
    "Target",
    "TargetResult",
    "fleet_exit_code",
    "parse_target_lines",
    "read_target_text",
    "shard_of",
    "summary_lines",
    "targets_from_values",
    "with_search_path",
]
