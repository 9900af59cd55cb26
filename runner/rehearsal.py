"""``up --dry-run --analyze``: rehearse the pending migrations and observe every statement.

1. On the target, in ONE transaction that is always rolled back (as ``--dry-run``), with the
   statement lock timeout: each statement is observed (runner/observe.py) while a watch on a
   second connection notes who blocks a lock wait.
2. Where the target cannot host the rehearsal — a statement that cannot run in a transaction
   (25001), an enum value added by one pending migration and used by a later one (55P04: one
   transaction cannot do what separate commits can), a declared non-transactional SQL
   migration, a lock that was not granted within the timeout, or ``--on-copy`` — the rest (all
   with ``--on-copy``) is rehearsed on a schema-only copy (runner/rehearsal_copy.py) exactly as
   the real run would run it: each migration committed on its own, non-transactional ones
   statement by statement, the 25001/55P04 fallback included. The report says so.
3. :func:`runner.analyze.analyze` judges the observations.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from runner.analyze import (
    ROW_COUNT_CAP,
    Facts,
    Finding,
    Report,
    Session,
    Thresholds,
    analyze,
    blocked_findings,
)
from runner.db import connect
from runner.errors import AtomicModeUnavailable, MigrationFailed
from runner.observe import BlockerWatch, Observer, count_rows
from runner.rehearsal_copy import scratch_copy

if TYPE_CHECKING:
    import psycopg

    from runner.executors import Executors, RunResult
    from runner.migrator import Migrator, RunReport
    from runner.plan import Plan
    from runner.settings import Settings
    from runner.source import Migration

NEEDS_COPY = {
    "25001": "cannot run inside a transaction block",
    "55P04": "uses an enum value added in the same (rehearsal) transaction",
}


@dataclass(frozen=True)
class AnalyzeOptions:
    thresholds: Thresholds = field(default_factory=Thresholds)
    on_copy: bool = False
    copy_allowed: bool = True  # False (preflight): stop where the target cannot rehearse


def rehearse(
    migrator: Migrator,
    conn: psycopg.Connection,
    plan: Plan,
    executors: Executors,
    run_report: RunReport,
    opts: AnalyzeOptions,
) -> Report:
    from runner.migrator import rollback

    settings = migrator.settings
    observer = Observer()
    blockers: list[Session] = []
    existing: set[str] = set()
    copy_from: int | None = 0 if opts.on_copy else None
    blocked_in: str | None = None
    reason = "--on-copy"
    if not opts.on_copy:
        ms = int(settings.statement_lock_timeout * 1000)
        try:
            conn.execute(f"BEGIN; SET LOCAL lock_timeout = '{ms}ms'".encode())
            with_ts = migrator.ensure_tables(conn)
            existing = observer.baseline(conn)
            executors.observe(observer)
            with BlockerWatch(settings, conn.info.backend_pid) as watch:
                for i, mig in enumerate(plan.steps):
                    why = rehearse_one(migrator, conn, mig, executors, observer, run_report)
                    if why is not None:
                        if why == "55P03":
                            found = watch.take()
                            blockers = [replace(s, migration=mig.name) for s in found]
                            blocked_in = mig.name
                            why = "a lock was not granted within the statement lock timeout"
                        copy_from, reason = i, f"{mig.name}: {why}"
                        break
                    migrator.meta.log(conn, mig.name, with_ts)
                    observer.end()
                    observer.resync(conn)
        finally:
            executors.observe(None)
            rollback(conn)
    copy_info: dict[str, object] | None = None
    if copy_from is not None and opts.copy_allowed:
        copy_info = rehearse_on_copy(
            migrator, plan, copy_from, executors, observer, existing, run_report
        )
        copy_info["reason"] = reason
    touched = {x.relation for m in observer.migrations for s in m.statements for x in s.locks}
    touched |= {r for m in observer.migrations for s in m.statements for r in s.rewrites}
    created = frozenset(touched - existing)
    rows = target_rows(migrator, touched & existing, opts)
    facts = Facts(rows=rows, created=created)
    findings = analyze(observer.migrations, facts, opts.thresholds)
    early = blocked_findings(blockers)
    if blocked_in is not None and not early:  # the wait ended before the watch saw it
        early = [
            Finding(
                "lock-blocked",
                blocked_in,
                None,
                "a lock was not granted within the statement lock timeout; the sessions in the "
                "way were gone before they could be named; fix: run again, or when they are done",
            )
        ]
    findings = early + findings
    return Report(observer.migrations, findings, blockers, copy_info, settings.target, created)


def rehearse_one(
    migrator: Migrator,
    conn: psycopg.Connection,
    mig: Migration,
    executors: Executors,
    observer: Observer,
    run_report: RunReport,
) -> str | None:
    """Rehearse one migration in the open transaction; why it must go to a copy, if it must."""
    executor = executors.for_(mig)
    declared = executor.declared_transactional(mig, "up")
    if declared is False and mig.kind == "sql":
        return "declared non-transactional (-- migrate:up transaction:false)"
    observer.begin(mig.name, True, "target")
    try:
        result = executor.run(mig, "up", conn, transactional=True, dry_run=True)
    except AtomicModeUnavailable as why:
        observer.discard()
        return f"it runs in pool mode ({why.message})"
    except MigrationFailed as err:
        if err.sqlstate == "55P03" or err.sqlstate in NEEDS_COPY:
            observer.discard()
            return err.sqlstate if err.sqlstate == "55P03" else NEEDS_COPY[err.sqlstate or ""]
        raise
    if any(label.startswith("non-transactional") for label, _ in result.statements):
        observer.discard()
        return "a statement cannot run in the rehearsal transaction"
    run_report.dry_run.append((mig, declared is not False, result))
    return None


def rehearse_on_copy(
    migrator: Migrator,
    plan: Plan,
    start: int,
    executors: Executors,
    observer: Observer,
    existing: set[str],
    run_report: RunReport,
) -> dict[str, object]:
    """Run the whole plan on a fresh copy as the real run would; observe from ``start`` on."""
    from runner.migrator import NEEDS_AUTOCOMMIT, rollback

    settings = migrator.settings
    with scratch_copy(settings) as (copy, info):
        conn = connect(copy, "analyze copy")
        try:
            with_ts = migrator.meta.ensure(conn)
            if not existing:
                existing |= observer.baseline(conn)
            for i, mig in enumerate(plan.steps):
                watching = i >= start
                if i == start:
                    observer.baseline(conn)  # rewrites are judged from here on
                executor = executors.for_(mig)
                declared = executor.declared_transactional(mig, "up")
                transactional = declared is not False
                executors.observe(observer if watching else None)
                if watching:
                    observer.begin(mig.name, transactional, "copy", fresh=True)
                try:
                    result = apply_on_copy(migrator, conn, mig, executors, transactional, with_ts)
                except AtomicModeUnavailable:
                    rollback(conn)  # pool mode, as the real run (on the copy: safe to run)
                    if watching:
                        observer.discard()
                        observer.begin(mig.name, False, "copy", note="pool mode", fresh=True)
                    result = apply_on_copy(
                        migrator, conn, mig, executors, False, with_ts, pool=copy
                    )
                    transactional = False
                except MigrationFailed as err:
                    rollback(conn)
                    fallback = transactional and declared is None
                    if not (fallback and err.sqlstate in NEEDS_AUTOCOMMIT):
                        raise
                    # what the real run does: re-run it outside a transaction
                    note = (
                        f"re-run outside a transaction after SQLSTATE {err.sqlstate} "
                        f"({NEEDS_AUTOCOMMIT[err.sqlstate or '']}), as the real run would"
                    )
                    if watching:
                        observer.discard()
                        observer.begin(mig.name, False, "copy", note=note, fresh=True)
                        assert observer.current is not None
                        observer.current.sqlstates.append(err.sqlstate or "")
                    result = apply_on_copy(migrator, conn, mig, executors, False, with_ts)
                    transactional = False
                observer.end()
                if watching:
                    run_report.dry_run.append((mig, transactional, result))
        finally:
            executors.observe(None)
            conn.close()
    return dict(info)


def apply_on_copy(
    migrator: Migrator,
    conn: psycopg.Connection,
    mig: Migration,
    executors: Executors,
    transactional: bool,
    with_ts: bool,
    pool: Settings | None = None,
) -> RunResult:
    """``pool``: the copy's settings, to run a JS migration the real run runs in pool mode
    because atomic mode cannot represent it, in pool mode too (its statements unobserved);
    other non-transactional JS runs on this one observed connection, as good a rehearsal."""
    executor = executors.for_(mig)
    if pool is not None:
        from runner.executors import RunResult as Result

        name = f"migrunner analyze copy: {mig.name}".encode()[:63].decode("utf-8", "ignore")
        executors.js.run_pool(mig, "up", conn, pool.conninfo, name)
        conn.execute(b"BEGIN")
        migrator.meta.log(conn, mig.name, with_ts)
        conn.execute(b"COMMIT")
        return Result([("pool mode on the copy (statements not observed)", "-- " + mig.name)])
    if transactional:
        ms = int(migrator.settings.statement_lock_timeout * 1000)
        conn.execute(f"BEGIN; SET LOCAL lock_timeout = '{ms}ms'".encode())
    result = executor.run(mig, "up", conn, transactional=transactional, dry_run=False)
    if not transactional:
        conn.execute(b"BEGIN")
    migrator.meta.log(conn, mig.name, with_ts)
    conn.execute(b"COMMIT")
    return result


def target_rows(migrator: Migrator, relations: set[str], opts: AnalyzeOptions) -> dict[str, int]:
    """Rows of the pre-existing tables the plan touched, read on the target after the
    rehearsal rolled back: counted up to ``min_rows`` under a short lock timeout (statistics
    when a lock is not granted), statistics only with ``--on-copy``."""
    import psycopg

    from runner.migrator import rollback

    if not relations:
        return {}
    cap = max(opts.thresholds.min_rows, ROW_COUNT_CAP)
    with connect(migrator.settings, "analyze rows") as conn:
        if not opts.on_copy:
            try:
                conn.execute(b"BEGIN; SET LOCAL lock_timeout = '200ms'")
                return count_rows(conn, relations, cap, estimate_only=False)
            except psycopg.Error:
                pass
            finally:
                rollback(conn)
        return count_rows(conn, relations, cap, estimate_only=True)
