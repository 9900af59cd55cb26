"""The command line: the only place where errors become messages and exit codes.

Commands take the same connection/config options after the command name, as sequelize-cli
does, so the Kubernetes Job's ``npx sequelize-cli db:migrate --config ... --env production``
becomes ``migrunner db:migrate --config ... --env production`` unchanged.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from runner import __version__
from runner.analyze_cli import analyze_options, do_analyze, preflight, wants_analyze
from runner.errors import MigrunnerError, PendingMigrations
from runner.log import Log
from runner.settings import CliOptions, Settings, redact, resolve, wants_config

SUCCESS_LINE = "Migrations completed successfully"
UNFINISHED = (
    "  (started in pool mode, never finished: running now, or interrupted and maybe partly applied)"
)

COMMON = [
    click.option("--url", help="Database URL (postgres://user:pass@host:port/db)."),
    click.option(
        "--direct-url",
        help="Direct (non-PgBouncer) URL for migrations; env MIGRUNNER_DIRECT_URL.",
    ),
    click.option("--config", type=click.Path(path_type=Path), help="Sequelize config file."),
    click.option("--env", "env_name", help="Config environment (default: NODE_ENV, development)."),
    click.option(
        "--migrations-path",
        type=click.Path(path_type=Path, readable=False),
        help="Migrations folder (env MIGRUNNER_MIGRATIONS_PATH; default ./migrations).",
    ),
    click.option(
        "--options-path", type=click.Path(path_type=Path), help="sequelize-cli options file."
    ),
    click.option("--table", help="SequelizeMeta table name (migrationStorageTableName)."),
    click.option("--schema", help="SequelizeMeta schema (migrationStorageTableSchema)."),
    click.option(
        "--lock-timeout",
        type=float,
        help="Seconds to wait for the migration lock (env MIGRUNNER_LOCK_TIMEOUT; default 300).",
    ),
    click.option(
        "--statement-lock-timeout",
        type=float,
        help="Seconds a statement may wait for a table lock (default 5); then retry.",
    ),
    click.option(
        "--statement-timeout", type=float, help="Seconds a statement may run (default: none)."
    ),
    click.option("--retries", type=int, help="Retries on lock timeout / deadlock (default 5)."),
    click.option(
        "--wait-timeout",
        type=float,
        help="Seconds to wait for the database with --wait (default 60).",
    ),
    click.option("--log-format", type=click.Choice(["text", "json"]), help="Log format."),
    click.option(
        "--allow-drift",
        is_flag=True,
        default=False,
        help="Run even if applied migrations' files are missing or changed.",
    ),
    click.option(
        "--pool-mode",
        type=click.Choice(["auto", "never"]),
        help="JS migrations atomic mode cannot run as sequelize-cli would: re-run on real "
        "connections, not atomically (auto, default), or fail (never). Env MIGRUNNER_POOL_MODE.",
    ),
    click.option(
        "--strict-await",
        is_flag=True,
        default=False,
        help="Fail JS migrations that leave queries un-awaited (env MIGRUNNER_STRICT_AWAIT).",
    ),
    click.option(
        "--settle-timeout",
        type=float,
        help="Seconds to wait for a JS migration's un-awaited queries (default 120).",
    ),
    # sequelize-cli flags accepted for drop-in compatibility; they do not affect migrations.
    click.option("--seeders-path", hidden=True),
    click.option("--models-path", hidden=True),
    click.option("--debug", is_flag=True, hidden=True),
]


def common(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(COMMON):
        fn = opt(fn)
    return fn


def options_from(kw: dict[str, Any]) -> CliOptions:
    return CliOptions(
        url=kw.get("url"),
        direct_url=kw.get("direct_url"),
        config=kw.get("config"),
        env=kw.get("env_name"),
        migrations_path=kw.get("migrations_path"),
        options_path=kw.get("options_path"),
        table=kw.get("table"),
        schema=kw.get("schema"),
        lock_timeout=kw.get("lock_timeout"),
        statement_lock_timeout=kw.get("statement_lock_timeout"),
        statement_timeout=kw.get("statement_timeout"),
        retries=kw.get("retries"),
        wait_timeout=kw.get("wait_timeout"),
        log_format=kw.get("log_format"),
        allow_drift=bool(kw.get("allow_drift")),
        pool_mode=kw.get("pool_mode"),
        strict_await=bool(kw.get("strict_await")),
        settle_timeout=kw.get("settle_timeout"),
    )


def build_settings(opts: CliOptions, environ: dict[str, str]) -> Settings:
    cwd = Path.cwd()
    app = None
    if wants_config(opts, cwd):
        from migrations_compat.config import ConfigRequest, start_loading

        loading = start_loading(
            ConfigRequest(
                cwd=cwd,
                options_path=opts.options_path,
                config_path=opts.config,
                env_name=opts.env,
                url=opts.url,
                migrations_path=opts.migrations_path,
                environ=environ,
            )
        )
        import psycopg  # noqa: F401  -- imported while node evaluates the config (~0.05 s each)

        app = loading.result()
    return resolve(opts, environ, app, cwd)


def run(kw: dict[str, Any], action: Callable[[Settings, Log], int]) -> None:
    """Build settings, run ``action``, turn any MigrunnerError into a message + exit code."""
    environ = dict(os.environ)
    fmt = kw.get("log_format") or environ.get("MIGRUNNER_LOG_FORMAT") or "text"
    log = Log(fmt="json" if fmt == "json" else "text")
    secrets: list[str | None] = [
        kw.get("url"),
        kw.get("direct_url"),
        environ.get("DATABASE_URL"),
        environ.get("DB_PASSWORD"),
        environ.get("PGPASSWORD"),
        environ.get("MIGRUNNER_DIRECT_URL"),
    ]
    try:
        opts = options_from(kw)
        settings = build_settings(opts, environ)
        secrets += [settings.password, settings.conninfo.get("sslpassword")]
        code = action(settings, log)
    except MigrunnerError as err:
        log.error(redact(err.message, *secrets), exit_code=err.exit_code)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        log.error("interrupted")
        sys.exit(130)
    # Every connection and the node child are closed by now: skip the interpreter's teardown
    # (~20 ms of module finalisation on every pod start).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="migrunner")
def cli() -> None:
    """PostgreSQL migration runner and lock service, compatible with sequelize-cli."""


# ---- up ----------------------------------------------------------------------------------


def do_up(
    to: str | None,
    dry_run: bool,
    wait: bool,
    from_: str | None = None,
    name: str | None = None,
) -> Callable[[Settings, Log], int]:
    def action(settings: Settings, log: Log) -> int:
        from runner.migrator import Migrator

        report = Migrator(settings, log).up(
            to=to, dry_run=dry_run, wait=wait, from_=from_, name=name
        )
        if dry_run:
            print_dry_run(report, log)
            return 0
        if not report.plan:
            log.info(report.plan.note)
        log.info(SUCCESS_LINE, applied=report.done)
        return 0

    return action


def print_dry_run(report: Any, log: Log) -> None:
    if not report.plan:
        log.info(report.plan.note or "Nothing to do.")
        return
    for mig, transactional, result in report.dry_run:
        mode = "transactional" if transactional else "non-transactional"
        log.out(f"-- {mig.name} ({report.plan.direction}, {mode})")
        if result.not_rehearsed:
            log.out(f"-- {result.not_rehearsed}")
            log.warn(f"{mig.name}: {result.not_rehearsed}", migration=mig.name)
        for label, sql in result.statements:
            if label != "statement":
                log.out(f"-- [{label}]")
            text = sql.rstrip()
            log.out(text if text.endswith(";") else text + ";")
        log.out("")
    skipped = sum(1 for _m, _t, r in report.dry_run if r.not_rehearsed)
    log.info(
        f"Dry run: {len(report.dry_run)} migration(s) would run; everything was rolled back "
        "(sequences may have advanced)."
        + (f" {skipped} of them NOT rehearsed (see above)." if skipped else "")
    )


@cli.command("up")
@common
@click.option("--to", help="Stop after this migration (file name).")
@click.option("--dry-run", is_flag=True, help="Print the SQL; execute in a rolled-back txn.")
@click.option("--wait", is_flag=True, help="Wait for the database to accept connections.")
@analyze_options
def up_cmd(to: str | None, dry_run: bool, wait: bool, **kw: Any) -> None:
    """Apply pending migrations."""
    run(
        kw,
        do_analyze(to, wait, kw) if wants_analyze(kw) else preflight(kw, do_up(to, dry_run, wait)),
    )


@cli.command("db:migrate")
@common
@click.option("--to", help="Stop after this migration (file name).")
@click.option("--from", "from_", help="Run the pending migrations after this one (excluded).")
@click.option("--name", help="Run only this migration.")
@click.option("--dry-run", is_flag=True, help="Print the SQL; execute in a rolled-back txn.")
@click.option("--wait", is_flag=True, help="Wait for the database to accept connections.")
def db_migrate(
    to: str | None,
    from_: str | None,
    name: str | None,
    dry_run: bool,
    wait: bool,
    **kw: Any,
) -> None:
    """sequelize-cli alias of `up`."""
    run(kw, do_up(to, dry_run, wait, from_=from_, name=name))


# ---- down --------------------------------------------------------------------------------


def do_down(**plan_kw: Any) -> Callable[[Settings, Log], int]:
    def action(settings: Settings, log: Log) -> int:
        from runner.migrator import Migrator

        dry_run = plan_kw.pop("dry_run", False)
        report = Migrator(settings, log).down(dry_run=dry_run, **plan_kw)
        if dry_run:
            print_dry_run(report, log)
        elif not report.plan:
            log.info(report.plan.note)
        else:
            log.info(f"Reverted {len(report.done)} migration(s)", reverted=report.done)
        return 0

    return action


@cli.command("down")
@common
@click.option("--step", type=int, help="Revert this many migrations (default 1).")
@click.option("--to", help="Revert down to and including this migration.")
@click.option("--all", "all_", is_flag=True, help="Revert every applied migration.")
@click.option("--name", help="Revert exactly this migration.")
@click.option("--dry-run", is_flag=True)
@click.option("--wait", is_flag=True)
def down_cmd(
    step: int | None,
    to: str | None,
    all_: bool,
    name: str | None,
    dry_run: bool,
    wait: bool,
    **kw: Any,
) -> None:
    """Revert applied migrations, newest first."""
    run(kw, do_down(step=step, to=to, all=all_, name=name, dry_run=dry_run, wait=wait))


@cli.command("db:migrate:undo")
@common
@click.option("--name", help="Revert exactly this migration.")
def db_undo(name: str | None, **kw: Any) -> None:
    """sequelize-cli alias: revert the newest migration (or --name)."""
    run(kw, do_down(name=name))


@cli.command("db:migrate:undo:all")
@common
@click.option("--to", help="Revert down to and including this migration.")
def db_undo_all(to: str | None, **kw: Any) -> None:
    """sequelize-cli alias: revert all migrations (or down to --to)."""
    run(kw, do_down(to=to) if to else do_down(all=True))


# ---- status ------------------------------------------------------------------------------


def do_status(as_json: bool, exit_code: bool, wait: bool) -> Callable[[Settings, Log], int]:
    def action(settings: Settings, log: Log) -> int:
        import time

        from runner.migrator import Migrator

        migrator = Migrator(settings, log)
        deadline = time.monotonic() + settings.wait_timeout
        report = migrator.status(wait=wait)
        # --wait with --exit-code: a readiness gate, poll until the schema is current.
        while wait and exit_code and report.pending and time.monotonic() < deadline:
            time.sleep(1.0)
            report = migrator.status(wait=True)
        if as_json:
            log.out(
                json.dumps(
                    {
                        "migrations": report.rows(),
                        "pending": [m.name for m in report.pending],
                        "missing": list(report.drift.missing),
                        "changed": list(report.drift.changed),
                        "unfinished": list(report.unfinished),
                        "storage": migrator.meta.ref,
                    },
                    ensure_ascii=False,
                )
            )
        else:
            for row in report.rows():
                flag = {
                    "changed": "  (file changed since applied)",
                    "missing": "  (file missing)",
                    "unfinished": UNFINISHED,
                }
                log.out(f"{row['state']} {row['name']}{flag.get(row.get('flag', ''), '')}")
        if report.drift:
            log.warn(report.drift.describe())
        if exit_code and report.pending:
            raise PendingMigrations(f"{len(report.pending)} migration(s) pending")
        return 0

    return action


@cli.command("status")
@common
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--exit-code", is_flag=True, help="Exit 3 when migrations are pending.")
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for the database (and, with --exit-code, "
    "for pending migrations to be applied by another runner).",
)
def status_cmd(as_json: bool, exit_code: bool, wait: bool, **kw: Any) -> None:
    """Show applied and pending migrations."""
    run(kw, do_status(as_json, exit_code, wait))


@cli.command("db:migrate:status")
@common
def db_status(**kw: Any) -> None:
    """sequelize-cli alias of `status`."""
    run(kw, do_status(False, False, False))


# ---- wait --------------------------------------------------------------------------------


@cli.command("wait")
@common
def wait_cmd(**kw: Any) -> None:
    """Wait until the database accepts connections (up to --wait-timeout)."""

    def action(settings: Settings, log: Log) -> int:
        from runner.db import wait_until_ready

        wait_until_ready(settings, log, settings.wait_timeout).close()
        log.info(f"database at {settings.target} is ready")
        return 0

    run(kw, action)


# ---- history -----------------------------------------------------------------------------


@cli.command("history")
@common
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", type=int, default=50, show_default=True)
def history_cmd(as_json: bool, limit: int, **kw: Any) -> None:
    """Who applied or reverted what, when, from where, with what outcome."""

    def action(settings: Settings, log: Log) -> int:
        from runner.migrator import Migrator, guarded

        migrator = Migrator(settings, log)
        with migrator.connection() as conn:
            if not guarded(lambda: migrator.history.exists(conn)):
                rows: list[Any] = []
            else:
                rows = guarded(lambda: migrator.history.recent(conn, limit))
        if as_json:
            log.out(json.dumps(rows, default=str, ensure_ascii=False))
            return 0
        for r in rows:
            log.out(
                f"{r['finished_at']:%Y-%m-%d %H:%M:%S%z}  {r['direction']:<4} {r['outcome']:<8} "
                f"{r['name']}  {r['duration_ms']:.0f}ms  {r['runner_pod'] or r['runner_host']}"
                f"{'  attempts=' + str(r['attempts']) if r['attempts'] > 1 else ''}"
                f"{'  note: ' + r['note'] if r['note'] else ''}"
                f"{'  error: ' + r['error'] if r['error'] else ''}"
            )
        if not rows:
            log.info("no history yet")
        return 0

    run(kw, action)


# ---- lock --------------------------------------------------------------------------------


@cli.group("lock")
def lock_group() -> None:
    """Inspect or break the migration lock."""


@lock_group.command("status")
@common
@click.option("--json", "as_json", is_flag=True)
def lock_status_cmd(as_json: bool, **kw: Any) -> None:
    """Who holds the migration lock, since when, running what, and who waits.

    Exit 0 when the lock is free, 3 when it is held."""

    def action(settings: Settings, log: Log) -> int:
        from runner.lockinfo import inspect_lock, render_lock

        with_conn = inspect_lock(settings)
        if as_json:
            log.out(json.dumps(with_conn, default=str, ensure_ascii=False))
        else:
            log.out(render_lock(with_conn))
        return 3 if with_conn["held"] else 0

    run(kw, action)


@lock_group.command("release")
@common
@click.option("--force", is_flag=True, help="Really terminate the holder's backend.")
def lock_release_cmd(force: bool, **kw: Any) -> None:
    """End the lock holder's session (pg_terminate_backend); needs --force."""

    def action(settings: Settings, log: Log) -> int:
        from runner.lockinfo import release_lock

        return release_lock(settings, log, force)

    run(kw, action)


from runner.cli_fleet import fleet_group  # noqa: E402  -- needs `common` and `run` above
from runner.cli_sequelize import register as register_sequelize  # noqa: E402

cli.add_command(fleet_group)
register_sequelize(cli, common, run)  # seeders, generators, db:create/db:drop


def main() -> None:
    """Entry point. Usage errors are one ``error:`` line and exit 2, like every other error."""
    try:
        cli.main(prog_name="migrunner", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        fmt = os.environ.get("MIGRUNNER_LOG_FORMAT", "text")
        usage = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else ""
        hint = f" (see '{usage} --help')" if usage else ""
        Log(fmt="json" if fmt == "json" else "text").error(exc.format_message() + hint, exit_code=2)
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(130)


__all__ = ["cli", "main"]

from runner.cli_verify import verify_cmd  # noqa: E402  -- its own module; registered here

cli.add_command(verify_cmd)
