"""``migrunner fleet up|status``: the command line of :mod:`runner.fleet`.

Registered on the main group by :mod:`runner.cli`; errors become messages only through
``runner.cli.run``, like every other command.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import click

from runner.errors import ConfigError
from runner.log import Log
from runner.settings import Settings


def _targets_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--targets",
            "targets_file",
            metavar="FILE",
            help="One connection URL per line ('#' comments); '-' reads stdin.",
        ),
        click.option(
            "--targets-sql",
            metavar="SQL",
            help="SELECT run on --url returning URLs or database names on that server.",
        ),
        click.option(
            "--schemas-sql",
            metavar="SQL",
            help="SELECT run on --url returning schema names: one tenant per schema.",
        ),
        click.option(
            "--parallel",
            type=click.IntRange(1, 64),
            default=1,
            show_default=True,
            help="Targets at once (one node process per worker, reused across targets).",
        ),
        click.option(
            "--shard",
            metavar="I/N",
            help="Take the I-th of N stable slices (default: JOB_COMPLETION_INDEX/--shards).",
        ),
        click.option(
            "--shards",
            type=click.IntRange(1),
            envvar="MIGRUNNER_FLEET_SHARDS",
            help="Number of slices when the index comes from JOB_COMPLETION_INDEX.",
        ),
        click.option("--json", "as_json", is_flag=True, help="One JSON report on stdout."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    from runner.cli import common

    return common(fn)


@click.group("fleet")
def fleet_group() -> None:
    """Migrate many tenant databases or schemas: `fleet up`, `fleet status`."""


@fleet_group.command("up")
@_common
@_targets_options
@click.option(
    "--canary",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Migrate the first K targets of the whole list first; stop if any fails.",
)
@click.option("--fail-fast", is_flag=True, help="Stop starting targets after the first failure.")
def fleet_up(canary: int, fail_fast: bool, **kw: Any) -> None:
    """Apply pending migrations on every target of this shard."""
    from runner.cli import run

    prepared = _prepare(kw)
    run(
        kw,
        _action(prepared, "up", canary=canary, fail_fast=fail_fast),
        document=bool(prepared["as_json"]),
    )


@fleet_group.command("status")
@_common
@_targets_options
@click.option("--exit-code", is_flag=True, help="Exit 3 when any target has pending migrations.")
def fleet_status(exit_code: bool, **kw: Any) -> None:
    """Pending migrations per target (a readiness view across the fleet)."""
    from runner.cli import run

    prepared = _prepare(kw)
    run(kw, _action(prepared, "status", exit_code=exit_code), document=bool(prepared["as_json"]))


def _prepare(kw: dict[str, Any]) -> dict[str, Any]:
    """Pull the fleet's own options out of ``kw`` (what stays are the common options)."""
    prepared = {
        k: kw.pop(k)
        for k in ("targets_file", "targets_sql", "schemas_sql", "parallel", "shard", "shards")
    }
    prepared["as_json"] = kw.pop("as_json")
    lines: list[str] | None = None
    if prepared["targets_file"] is not None:
        from runner.fleet import read_target_text

        lines = read_target_text(prepared["targets_file"])
        environ = os.environ
        configured = (
            kw.get("url")
            or kw.get("config")
            or environ.get("DATABASE_URL")
            or environ.get("DB_HOST")
            or environ.get("DB_NAME")
        )
        if not configured:
            # The targets are the connections: the first stands in as the base settings'.
            first = next(
                (ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), None
            )
            if first:
                kw["url"] = first
    prepared["lines"] = lines
    return prepared


def _action(prepared: dict[str, Any], verb: str, **extra: Any) -> Callable[[Settings, Log], int]:
    def action(settings: Settings, log: Log) -> int:
        from runner.fleet import (
            Fleet,
            FleetOptions,
            fleet_exit_code,
            parse_target_lines,
            query_values,
            summary_lines,
            targets_from_values,
        )

        sources = [k for k in ("lines", "targets_sql", "schemas_sql") if prepared[k] is not None]
        if len(sources) != 1:
            raise ConfigError("fleet: give exactly one of --targets, --targets-sql, --schemas-sql")
        if prepared["lines"] is not None:
            targets = parse_target_lines(prepared["lines"], f"--targets {prepared['targets_file']}")
        else:
            schemas = prepared["schemas_sql"] is not None
            sql = prepared["schemas_sql"] if schemas else prepared["targets_sql"]
            what = "--schemas-sql" if schemas else "--targets-sql"
            values = query_values(settings, sql, what)
            targets = targets_from_values(values, dict(settings.conninfo), schemas, what)
        if not targets:
            raise ConfigError("fleet: the target list is empty")

        canary = int(extra.get("canary", 0))
        chosen = _shard(targets[canary:], prepared, log)
        selected = targets[:canary] + chosen
        log.info(
            f"fleet {verb}: {len(selected)} of {len(targets)} target(s)"
            + (f" (shard {prepared['shard_text']})" if prepared.get("shard_text") else "")
            + (f", {canary} canary first" if canary else "")
            + f", {prepared['parallel']} at a time"
        )
        options = FleetOptions(
            parallel=prepared["parallel"], canary=canary, fail_fast=bool(extra.get("fail_fast"))
        )
        fleet = Fleet(settings, log, selected, options, secrets=[settings.password])
        results = fleet.run(fleet.migrate if verb == "up" else fleet.pending)
        code = fleet_exit_code(results)
        if verb == "status" and not code and extra.get("exit_code"):
            code = 3 if any(r.pending for r in results) else 0
        if prepared["as_json"]:
            doc = {
                "command": f"fleet {verb}",
                "targets": [r.as_json() for r in results],
                "summary": {
                    "total": len(results),
                    "done": sum(r.outcome == "done" for r in results),
                    "failed": sum(r.outcome == "failed" for r in results),
                    "skipped": sum(r.outcome == "skipped" for r in results),
                },
                "exit_code": code,
            }
            log.out(json.dumps(doc, ensure_ascii=False))
        elif verb == "status":
            width = max(len(r.target.label) for r in results)
            for r in results:
                state = f"{r.pending} pending" if r.outcome == "done" else f"{r.outcome}: {r.error}"
                log.out(f"{r.target.label:<{width}}  {state}")
        for line in summary_lines(results, verb):
            (log.error if "FAILED" in line else log.info)(line)
        return code

    return action


def _shard(targets: list[Any], prepared: dict[str, Any], log: Log) -> list[Any]:
    from runner.fleet import Shard

    text = prepared["shard"]
    if text is None:
        index = os.environ.get("JOB_COMPLETION_INDEX")
        if index is not None and prepared["shards"]:
            text = f"{index}/{prepared['shards']}"
        elif index is not None:
            log.warn(
                "JOB_COMPLETION_INDEX is set but --shards is not: this worker takes every target"
            )
    if text is None:
        return targets
    shard = Shard.parse(text)
    prepared["shard_text"] = f"{shard.index}/{shard.total}"
    return [t for t in targets if shard.holds(t)]


__all__ = ["fleet_group"]
