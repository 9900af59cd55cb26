"""``migrunner verify``: does every ``down()`` undo its ``up()``? A CI gate for a migrations folder.

On an empty database (a throwaway embedded server unless ``--url`` names one):

1. apply every migration, one at a time, fingerprinting the schema before each ``up()``;
2. walk back down one migration at a time, newest first; after each ``down()`` the fingerprint
   (:mod:`runner.fingerprint`) must equal the one taken before that migration's ``up()``;
3. apply everything again (``up()`` must work after its own ``down()``), and the schema must
   equal the one after step 1.

The walk stops at the first ``down()`` that fails or leaves a difference (the report names
it and what differs). A migration that declares itself irreversible — no ``down()`` (JS), no
``-- migrate:down`` section or an empty one (SQL), or a ``down()`` that throws a plain
``Error`` of its own (``throw new Error('irreversible')``, not a SQL error nor a TypeError) —
stops the walk as ``undo:all`` would, and is reported "irreversible (declared)"; that fails
only with ``strict``. Everything runs through the migrator's own path (one transaction per
migration, under the lock, with its history rows), so what verify proves is what ``up`` and
``down`` do. Row data is not compared, only the schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from runner.errors import ConfigError, MigrationFailed, MigrunnerError
from runner.fingerprint import Fingerprint, differences, excluded_tables, fingerprint

if TYPE_CHECKING:
    from runner.log import Log
    from runner.settings import Settings
    from runner.source import Migration

#: Exit code when the round trip does not hold (README's table).
VERIFY_FAILED = 9
MAX_DIFFERENCES = 20


class VerifyFailed(MigrunnerError):
    """The round trip did not hold: an up/down failed or a down() left a difference."""

    exit_code = VERIFY_FAILED


@dataclass
class Step:
    """One migration's result. ``down``: ok | irreversible (declared) | failed | not restored |
    not run."""

    name: str
    up: str = "not run"  # ok | failed | not run
    down: str = "not run"
    reapply: str = "not run"  # ok | failed | not run
    detail: str = ""
    differences: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    target: str
    strict: bool
    steps: list[Step] = field(default_factory=list)
    reapply_differences: list[str] = field(default_factory=list)
    problem: str | None = None  # the first thing that broke the round trip, one line

    @property
    def declared(self) -> Step | None:
        return next((s for s in self.steps if s.down == "irreversible (declared)"), None)

    @property
    def ok(self) -> bool:
        return self.problem is None and not (self.strict and self.declared)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "target": self.target,
            "strict": self.strict,
            "problem": self.problem
            or (
                f"{self.declared.name}: irreversible (declared)"
                if self.strict and self.declared
                else None
            ),
            "migrations": [asdict(s) for s in self.steps],
            "reapply_differences": self.reapply_differences,
        }


def declared_irreversible(mig: Migration, err: MigrationFailed) -> str | None:
    """Why a failed down() counts as a declared refusal rather than a bug (module doc)."""
    text = err.message
    if "Could not find migration method: down" in text:
        return "no down()"
    if "has no '-- migrate:down' section" in text:
        return "no '-- migrate:down' section"
    # The bridge reports a plain Error thrown by the migration's own code as
    # "migration NAME failed (down) at PATH:LINE: MESSAGE"; other classes keep their name
    # ("TypeError: ..."), SQL errors carry a SQLSTATE, and bridge/node failures name no line.
    thrown = re.fullmatch(
        rf"migration {re.escape(mig.name)} failed \(down\) at \S*{re.escape(mig.name)}:\d+: "
        r"(?!\w*Error: )(.*)",
        text,
        re.DOTALL,
    )
    if err.sqlstate is None and mig.kind != "sql" and thrown:
        return "down() throws: " + thrown.group(1)
    return None


def empty_down_section(mig: Migration) -> bool:
    """dbmate's convention for an irreversible SQL migration: a down section with nothing."""
    if mig.kind != "sql":
        return False
    from runner.sqlfile import parse_sql_migration

    parsed = parse_sql_migration(mig.path)
    return parsed.down is not None and not parsed.down.statements


def check_empty(fp: Fingerprint, target: str) -> None:
    found = [
        f"{category} {name}"
        for category, objects in fp.items()
        for name in objects
        if not (category == "schemas" and name == "public")
    ]
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise ConfigError(
            f"verify needs an empty database (it applies and reverts every migration), but "
            f"{target} has {shown}; give it a scratch database, or no --url for a throwaway one"
        )


@contextmanager
def _session(settings: Settings, log: Log) -> Iterator[tuple[Any, ...]]:
    from runner.db import connect
    from runner.executors import Executors
    from runner.lock import MigrationLock
    from runner.migrator import Migrator

    migrator = Migrator(settings, replace(log, quiet=True))
    with (
        migrator.connection() as conn,
        connect(settings, "verify") as fp_conn,
        Executors(settings, replace(log, quiet=True)) as executors,
        MigrationLock(settings, replace(log, quiet=True)) as lock,
    ):
        lock.acquire(conn)  # held by the session that runs the migrations
        yield migrator, conn, fp_conn, executors, lock


def verify(settings: Settings, log: Log, strict: bool = False) -> VerifyReport:
    """Run the round trip; never raises for a migration's failure (it is in the report)."""
    from runner.history import HISTORY_TABLE
    from runner.migrator import guarded, raise_empty
    from runner.plan import Plan, plan_up
    from runner.verified import VERIFIED_TABLE

    report = VerifyReport(settings.target, strict)
    with _session(settings, log) as (migrator, conn, fp_conn, executors, lock):
        src = migrator.source()
        if not src.migrations:
            raise_empty(src)
        migrations = list(src.migrations)
        report.steps = [Step(m.name) for m in migrations]
        steps = {s.name: s for s in report.steps}

        check_empty(guarded(lambda: fingerprint(fp_conn)), settings.target)
        guarded(lambda: migrator.ensure_tables(conn))
        skip = excluded_tables(
            fp_conn,
            [
                (settings.schema, settings.table),
                (settings.schema, HISTORY_TABLE),
                (settings.schema, VERIFIED_TABLE),
            ],
        )

        def snapshot() -> Fingerprint:
            return guarded(lambda: fingerprint(fp_conn, skip))

        def run(mig: Migration, direction: str) -> MigrationFailed | None:
            try:
                migrator.execute(conn, Plan(direction, (mig,)), False, lock, executors)  # type: ignore[arg-type]
            except MigrationFailed as err:
                return err
            return None

        # 1. everything up, one at a time
        before: dict[str, Fingerprint] = {}
        for mig in migrations:
            before[mig.name] = snapshot()
            err = run(mig, "up")
            step = steps[mig.name]
            if err is not None:
                step.up, step.detail = "failed", err.message
                report.problem = f"{mig.name}: up() failed: {err.message}"
                return report
            step.up = "ok"
        after_up = snapshot()
        log.info(f"verify: applied {len(migrations)} migration(s); walking down")

        # 2. down one at a time, newest first
        for mig in reversed(migrations):
            step = steps[mig.name]
            if empty_down_section(mig):
                step.down, step.detail = "irreversible (declared)", "empty '-- migrate:down'"
                break
            err = run(mig, "down")
            if err is not None:
                why = declared_irreversible(mig, err)
                if why:
                    step.down, step.detail = "irreversible (declared)", why
                    break
                step.down, step.detail = "failed", err.message
                report.problem = f"{mig.name}: down() failed: {err.message}"
                return report
            diff = differences(before[mig.name], snapshot(), ("before up", "after down"))
            if diff:
                step.down, step.differences = "not restored", diff[:MAX_DIFFERENCES]
                more = f" (+{len(diff) - 1} more)" if len(diff) > 1 else ""
                report.problem = f"{mig.name}: down() did not restore the schema: {diff[0]}{more}"
                return report
            step.down = "ok"

        # 3. everything up again
        applied = guarded(lambda: migrator.read_state(conn)).applied
        for mig in plan_up(migrations, applied).steps:
            step = steps[mig.name]
            err = run(mig, "up")
            if err is not None:
                step.reapply, step.detail = "failed", err.message
                report.problem = f"{mig.name}: up() failed after its down(): {err.message}"
                return report
            step.reapply = "ok"
        diff = differences(after_up, snapshot(), ("first up", "second up"))
        if diff:
            report.reapply_differences = diff[:MAX_DIFFERENCES]
            report.problem = f"re-applying after the walk gave another schema: {diff[0]}"
    return report


def render(report: VerifyReport) -> list[str]:
    """The text report: one line per migration, then the verdict."""
    lines = [f"verify on {report.target}:"]
    width = max((len(s.name) for s in report.steps), default=0)
    for s in report.steps:
        if s.up != "ok":
            state = f"up {s.up}"
        elif s.down == "not run":
            state = "up ok, down not reached" + (
                f", up again {s.reapply}" if s.reapply != "not run" else ""
            )
        else:
            state = f"up ok, down {s.down}"
            if s.reapply != "not run":
                state += f", up again {s.reapply}"
        detail = f"  ({s.detail})" if s.detail else ""
        lines.append(f"  {s.name:<{width}}  {state}{detail}")
        lines.extend(f"      {d}" for d in s.differences)
    lines.extend(f"      {d}" for d in report.reapply_differences)
    return lines


__all__ = ["VERIFY_FAILED", "Step", "VerifyFailed", "VerifyReport", "render", "verify"]
