"""The ``--analyze`` options of ``up`` and what they print (registered in runner/cli.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from runner.errors import ConfigError, MigrunnerError

if TYPE_CHECKING:
    from runner.log import Log
    from runner.settings import Settings

#: Exit code of ``up --dry-run --analyze --fail-on RULES`` when such a finding is present.
FINDINGS_EXIT = 7

OPTIONS = [
    click.option(
        "--analyze",
        is_flag=True,
        help="Dry run that reports each statement's locks, rewrites, rows, duration, and findings.",
    ),
    click.option("--json", "analyze_json", is_flag=True, help="With --analyze: one JSON document."),
    click.option(
        "--fail-on",
        metavar="RULE[,RULE...]",
        help=f"With --analyze: exit {FINDINGS_EXIT} on a finding of these rules (or 'all').",
    ),
    click.option(
        "--on-copy",
        is_flag=True,
        help="With --analyze: rehearse only on a schema-only copy, taking no lock on the target.",
    ),
    click.option(
        "--min-rows",
        type=click.IntRange(min=0),
        default=1,
        show_default=True,
        help="With --analyze: scans and rewrites of tables with fewer rows are not findings.",
    ),
    click.option(
        "--max-lock-ms",
        type=click.FloatRange(min=0),
        default=0.0,
        show_default=True,
        help="With --analyze: access-exclusive-held fires from this hold time (ms) on.",
    ),
    click.option(
        "--preflight",
        type=click.FloatRange(min=0),
        metavar="SECONDS",
        help="Before the real run: wait (up to --wait-timeout) while a transaction older than "
        "SECONDS holds a lock the plan needs; then refuse (exit 8).",
    ),
]


def analyze_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(OPTIONS):
        fn = opt(fn)
    return fn


def preflight(kw: dict[str, Any], action: Callable[[Settings, Log], int]) -> Any:
    """``action``, preceded by the ``--preflight`` check when asked for."""
    if kw.get("preflight") is None:
        return action  # not importing runner.preflight/analyze: every pod start comes here
    from runner.preflight import with_preflight

    return with_preflight(kw.get("preflight"), action)


def wants_analyze(kw: dict[str, Any]) -> bool:
    """True for --analyze, and for its options alone (so that they are refused, not ignored)."""
    return bool(
        kw.get("analyze") or kw.get("analyze_json") or kw.get("fail_on") or kw.get("on_copy")
    )


def do_analyze(to: str | None, wait: bool, kw: dict[str, Any]) -> Callable[[Settings, Log], int]:
    def action(settings: Settings, log: Log) -> int:
        from runner.analyze import Report, Thresholds, parse_rules, render_text, to_json
        from runner.migrator import Migrator
        from runner.rehearsal import AnalyzeOptions

        if not kw.get("analyze"):
            raise ConfigError("--json, --fail-on and --on-copy of `up` need --analyze")
        try:
            fail_on = parse_rules(kw.get("fail_on"))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        migrator = Migrator(settings, log)
        migrator.analysis = AnalyzeOptions(
            thresholds=Thresholds(
                min_rows=int(kw.get("min_rows") or 0),
                lock_held_ms=float(kw.get("max_lock_ms") or 0.0),
            ),
            on_copy=bool(kw.get("on_copy")),
        )
        run = migrator.up(to=to, dry_run=True, wait=wait)
        report = run.analysis or Report([], [], [], None, settings.target)
        if kw.get("analyze_json"):
            log.out(json.dumps(to_json(report), ensure_ascii=False, default=str))
        else:
            if not run.plan:
                log.info(run.plan.note or "Nothing to do.")
            else:
                log.out(render_text(report))
        if run.plan:
            log.info(
                f"Analyzed {len(report.migrations)} migration(s); everything was rolled back "
                "(sequences may have advanced)."
            )
        failing = [f for f in report.findings if f.rule in fail_on]
        if failing:
            rules = ", ".join(sorted({f.rule for f in failing}))
            raise MigrunnerError(
                f"{len(failing)} finding(s) of --fail-on rules: {rules}", exit_code=FINDINGS_EXIT
            )
        return 0

    return action
