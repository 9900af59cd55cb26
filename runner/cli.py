"""The command line: the only place where errors become messages and exit codes.

Commands take the same connection/config options after the command name, as sequelize-cli
does, so the Kubernetes Job's ``npx sequelize-cli db:migrate --config ... --env production``
becomes ``migrunner db:migrate --config ... --env production`` unchanged.

Output follows sequelize-cli, whose stdout scripts ``| grep``: the run's progress and result
on stdout, warnings and errors on stderr (``runner.log``). When stdout carries a document
(``--json``, the ``--dry-run`` SQL plan) progress moves to stderr so the document stays clean.

Adding a command: define it in its own module (taking ``@common`` options and calling
:func:`run`), then register it here with one line, ``cli.add_command(its_command)``. Its place
in ``--help`` comes from :data:`MAIN_COMMANDS` (append its name there if it is a main command);
names containing ``:`` (sequelize-cli's) are listed in their own section.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from runner import __version__
from runner.analyze_cli import analyze_options, do_analyze, preflight, wants_analyze
from runner.errors import MigrunnerError
from runner.log import Log
from runner.settings import CliOptions, Settings, redact, resolve, secret_values, wants_config

SUCCESS_LINE = "Migrations completed successfully"
# Commands that first read the state through libpq (runner/quickread.py) and import psycopg
# only when something is pending; every other command needs psycopg anyway.
QUICK_COMMANDS = {"up", "db:migrate", "status", "db:migrate:status"}
UNFINISHED = (
    "started in pool mode, never finished: running now, or interrupted (maybe partly applied)"
)

#: Main commands in --help order; others append theirs (unlisted ones follow, then db:*).
MAIN_COMMANDS = ["up", "down", "status", "verify", "history", "lock", "wait", "fleet", "snapshot"]

EXIT_CODES = """\b
Exit codes:
  0  success (lock status: the lock is free)
  1  a migration failed; it was rolled back and the run stopped
  2  usage, configuration, credentials or migration-source error; nothing ran
  3  status --exit-code: migrations pending; lock status: the lock is held
  4  lock timeout: another runner held the migration lock too long
  5  database unreachable, or the connection was lost mid-run
  6  drift: an applied migration's file is missing or changed
  7  up --analyze --fail-on: a finding of one of those rules
  8  up --preflight: an old transaction still held a lock the plan needs
  9  verify: an up()/down() failed, or a down() did not restore the schema"""

MAIN_EPILOG = (
    """\b
Examples:
  migrunner up --url postgresql://app@db:5432/app --migrations-path migrations
      (the password comes from PGPASSWORD, ~/.pgpass or DB_PASSWORD, never the command line)
  migrunner db:migrate --config src/config/database.js --env production
  migrunner up --dry-run                 print the SQL; change nothing
  migrunner status --exit-code --wait    readiness gate: exit 3 while migrations are pending
  migrunner down --step 2
  migrunner lock status                  who holds the migration lock, who waits

\b
Where the database comes from (first match wins): --direct-url / MIGRUNNER_DIRECT_URL;
the Sequelize config (--config, .sequelizerc, config/config.js|json); --url;
DATABASE_URL; DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD (libpq's PG* fill gaps).

"""
    + EXIT_CODES
)


class Commands(click.Group):
    """A group listing main commands first (``MAIN_COMMANDS`` order), then sequelize-cli's
    ``db:*`` names, with descriptions never cut short."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = list(self.commands)
        order = {n: i for i, n in enumerate(MAIN_COMMANDS)}
        main = sorted((n for n in names if ":" not in n), key=lambda n: order.get(n, len(order)))
        return main + sorted(n for n in names if ":" in n)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {"Commands": [], "sequelize-cli names": []}
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            section = "sequelize-cli names" if ":" in name else "Commands"
            sections[section].append((name, cmd.get_short_help_str(limit=10_000)))
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def opt(*decls: str, env: str | None = None, **kw: Any) -> Callable[..., Any]:
    """A click option; ``env`` is read by click itself and shown in --help."""
    if env:
        kw.update(envvar=env, show_envvar=True)
    return click.option(*decls, **kw)


COMMON = [
    opt(
        "--url",
        env="DATABASE_URL",
        metavar="URL",
        help="Database URL, e.g. postgresql://app@db.internal:5432/app. Give the password "
        "through PGPASSWORD or ~/.pgpass rather than in the URL. A Sequelize config file wins "
        "over DATABASE_URL; --url on the command line wins over the config, as in sequelize-cli.",
    ),
    opt(
        "--direct-url",
        env="MIGRUNNER_DIRECT_URL",
        metavar="URL",
        help="Direct (not PgBouncer) URL for migrations; overrides every other database source.",
    ),
    opt("--config", type=click.Path(path_type=Path), help="Sequelize config file."),
    opt(
        "--env",
        "env_name",
        env="NODE_ENV",
        metavar="NAME",
        help="Config environment.  [default: development]",
    ),
    opt(
        "--migrations-path",
        env="MIGRUNNER_MIGRATIONS_PATH",
        type=click.Path(path_type=Path, readable=False),
        help="Migrations folder.  [default: ./migrations, or the .sequelizerc's]",
    ),
    opt("--options-path", type=click.Path(path_type=Path), help="sequelize-cli options file."),
    opt("--table", help="SequelizeMeta table name (migrationStorageTableName)."),
    opt("--schema", help="SequelizeMeta schema (migrationStorageTableSchema)."),
    opt(
        "--lock-timeout",
        env="MIGRUNNER_LOCK_TIMEOUT",
        type=float,
        metavar="SECONDS",
        help="How long to wait for the migration lock, then exit 4.  [default: 300]",
    ),
    opt(
        "--statement-lock-timeout",
        env="MIGRUNNER_STATEMENT_LOCK_TIMEOUT",
        type=float,
        metavar="SECONDS",
        help="How long a statement may wait for a table lock before the migration is rolled "
        "back and retried.  [default: 5]",
    ),
    opt(
        "--statement-timeout",
        env="MIGRUNNER_STATEMENT_TIMEOUT",
        type=float,
        metavar="SECONDS",
        help="How long a statement may run.  [default: no limit]",
    ),
    opt(
        "--migration-timeout",
        env="MIGRUNNER_MIGRATION_TIMEOUT",
        type=float,
        metavar="SECONDS",
        help="How long one migration may run before it is stopped and rolled back.  "
        "[default: no limit]",
    ),
    opt(
        "--retries",
        env="MIGRUNNER_RETRIES",
        type=int,
        help="Retries of a migration on lock timeout or deadlock.  [default: 5]",
    ),
    opt(
        "--wait-timeout",
        env="MIGRUNNER_WAIT_TIMEOUT",
        type=float,
        metavar="SECONDS",
        help="How long --wait (and `wait`) wait for the database.  [default: 60]",
    ),
    opt(
        "--log-format",
        env="MIGRUNNER_LOG_FORMAT",
        type=click.Choice(["text", "json"]),
        help="text, or one JSON object per line.  [default: text]",
    ),
    opt(
        "--allow-drift",
        env="MIGRUNNER_ALLOW_DRIFT",
        is_flag=True,
        default=False,
        help="Run even if applied migrations' files are missing or changed.",
    ),
    opt(
        "--pool-mode",
        env="MIGRUNNER_POOL_MODE",
        type=click.Choice(["auto", "never"]),
        help="JS migrations atomic mode cannot run as sequelize-cli would: re-run them on real "
        "connections, not atomically (auto), or fail them (never).  [default: auto]",
    ),
    opt(
        "--strict-await",
        env="MIGRUNNER_STRICT_AWAIT",
        is_flag=True,
        default=False,
        help="Fail JS migrations that leave queries un-awaited.",
    ),
    opt(
        "--settle-timeout",
        env="MIGRUNNER_SETTLE_TIMEOUT",
        type=float,
        metavar="SECONDS",
        help="How long to wait for a JS migration's un-awaited queries.  [default: 120]",
    ),
    # sequelize-cli flags accepted for drop-in compatibility; they do not affect migrations.
    click.option("--seeders-path", hidden=True),
    click.option("--models-path", hidden=True),
    click.option("--debug", is_flag=True, hidden=True),
]

#: Options whose environment variable the settings resolve themselves, with sequelize-cli's
#: precedence (DATABASE_URL below a config file; NODE_ENV as node sees it after dotenv).
FROM_ENV_ONLY = ("url", "env_name")


def common(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(COMMON):
        fn = option(fn)
    return fn


def options_from(kw: dict[str, Any]) -> CliOptions:
    ctx = click.get_current_context(silent=True)
    kw = dict(kw)
    if ctx is not None:
        for name in FROM_ENV_ONLY:
            if ctx.get_parameter_source(name) == ParameterSource.ENVIRONMENT:
                kw[name] = None
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
        migration_timeout=kw.get("migration_timeout"),
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
        ctx = click.get_current_context(silent=True)
        if ctx is not None and ctx.info_name in QUICK_COMMANDS:
            from runner.quickread import libpq

            libpq()  # loaded while node evaluates the config; psycopg only if anything is pending
            if ctx.info_name in ("up", "db:migrate"):
                import runner.migrator  # noqa: F401  -- likewise (~25 ms)
        else:
            import psycopg  # noqa: F401  -- imported while node evaluates the config (~0.05 s)

        app = loading.result()
    return resolve(opts, environ, app, cwd)


def shown_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def announce_config(settings: Settings, log: Log) -> None:
    """sequelize-cli's first lines, which scripts and people look for."""
    if settings.config_file is not None:
        shown = shown_path(settings.config_file)
        log.info(f'Loaded configuration file "{shown}".', config_file=shown)
        if settings.env_name:
            log.info(f'Using environment "{settings.env_name}".', environment=settings.env_name)


def run(
    kw: dict[str, Any], action: Callable[[Settings, Log], int], *, document: bool = False
) -> None:
    """Build settings, run ``action``, turn any MigrunnerError into a message + exit code.

    ``document``: the command prints a document on stdout (JSON, SQL), so progress goes to
    stderr."""
    environ = dict(os.environ)
    fmt = kw.get("log_format") or environ.get("MIGRUNNER_LOG_FORMAT") or "text"
    log = Log(
        fmt="json" if fmt == "json" else "text",
        info_stream=sys.stderr if document else sys.stdout,
    )
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
        log.secrets = secret_values(secrets)
        announce_config(settings, log)
        code = action(settings, log)
    except MigrunnerError as err:
        end_node_session()
        log.error(redact(err.message, *secrets), exit_code=err.exit_code)
        sys.exit(err.exit_code)
    except KeyboardInterrupt as exc:  # SIGTERM / SIGINT: runner.signals
        from runner.signals import describe

        end_node_session()
        code, line = describe(exc)
        log.error(redact(line, *secrets), exit_code=code)
        sys.exit(code)
    end_node_session()
    # Every connection and the node child are closed by now: skip the interpreter's teardown
    # (~20 ms of module finalisation on every pod start).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def end_node_session() -> None:
    """A no-op run's node (it evaluated the config and never loaded sequelize) exits now, and
    is reaped before the runner exits (migrations_compat/node_session.py)."""
    session = sys.modules.get("migrations_compat.node_session")
    if session is not None:
        session.discard()


@click.group(
    cls=Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=MAIN_EPILOG,
)
@click.version_option(__version__, prog_name="migrunner")
def cli() -> None:
    """PostgreSQL migration runner and lock service, compatible with sequelize-cli.

    Every command takes the connection and config options shown by `migrunner COMMAND --help`,
    each also settable through the environment variable shown there."""


def command(name: str, **kw: Any) -> Callable[..., Any]:
    """A subcommand of ``cli`` whose --help ends with the exit codes."""
    return cli.command(name, epilog=EXIT_CODES, **kw)


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

        started = time.perf_counter()
        report = Migrator(settings, log).up(
            to=to, dry_run=dry_run, wait=wait, from_=from_, name=name
        )
        if dry_run:
            print_dry_run(report, log)
            return 0
        elapsed = time.perf_counter() - started
        if not report.plan:
            log.info(report.plan.note)
        else:
            n = len(report.done)
            log.info(
                f"{n} migration{'s' if n != 1 else ''} applied in {elapsed:.3f}s",
                count=n,
                duration_ms=int(elapsed * 1000),
            )
        log.info(SUCCESS_LINE, applied=report.done, duration_ms=int(elapsed * 1000))
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


UP_OPTIONS = [
    click.option("--to", metavar="NAME", help="Stop after this migration (file name)."),
    click.option(
        "--dry-run",
        is_flag=True,
        help="Print the SQL on stdout; run it in a transaction that is rolled back.",
    ),
    click.option("--wait", is_flag=True, help="Wait (--wait-timeout) for the database first."),
]


def up_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(UP_OPTIONS):
        fn = option(fn)
    return fn


@command("up")
@common
@up_options
@analyze_options
def up_cmd(to: str | None, dry_run: bool, wait: bool, **kw: Any) -> None:
    """Apply pending migrations, each in its own transaction, under the migration lock."""
    run(
        kw,
        do_analyze(to, wait, kw) if wants_analyze(kw) else preflight(kw, do_up(to, dry_run, wait)),
        document=dry_run,
    )


@command("db:migrate")
@common
@up_options
@click.option(
    "--from", "from_", metavar="NAME", help="Run the pending migrations after this one (excluded)."
)
@click.option("--name", metavar="NAME", help="Run only this migration.")
def db_migrate(
    to: str | None,
    from_: str | None,
    name: str | None,
    dry_run: bool,
    wait: bool,
    **kw: Any,
) -> None:
    """Apply pending migrations (sequelize-cli's name for `up`)."""
    run(kw, do_up(to, dry_run, wait, from_=from_, name=name), document=dry_run)


# ---- down --------------------------------------------------------------------------------


def do_down(**plan_kw: Any) -> Callable[[Settings, Log], int]:
    def action(settings: Settings, log: Log) -> int:
        from runner.migrator import Migrator

        started = time.perf_counter()
        dry_run = plan_kw.pop("dry_run", False)
        report = Migrator(settings, log).down(dry_run=dry_run, **plan_kw)
        if dry_run:
            print_dry_run(report, log)
        elif not report.plan:
            log.info(report.plan.note)
        else:
            elapsed = time.perf_counter() - started
            n = len(report.done)
            log.info(
                f"Reverted {n} migration{'s' if n != 1 else ''} in {elapsed:.3f}s",
                reverted=report.done,
                duration_ms=int(elapsed * 1000),
            )
        return 0

    return action


@command("down")
@common
@click.option("--step", type=int, metavar="N", help="Revert this many migrations.  [default: 1]")
@click.option("--to", metavar="NAME", help="Revert down to and including this migration.")
@click.option("--all", "all_", is_flag=True, help="Revert every applied migration.")
@click.option("--name", metavar="NAME", help="Revert exactly this migration.")
@click.option("--dry-run", is_flag=True, help="Print the SQL on stdout; run it and roll it back.")
@click.option("--wait", is_flag=True, help="Wait (--wait-timeout) for the database first.")
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
    run(
        kw,
        do_down(step=step, to=to, all=all_, name=name, dry_run=dry_run, wait=wait),
        document=dry_run,
    )


@command("db:migrate:undo")
@common
@click.option("--name", metavar="NAME", help="Revert exactly this migration.")
def db_undo(name: str | None, **kw: Any) -> None:
    """Revert the newest migration, or --name (sequelize-cli's name)."""
    run(kw, do_down(name=name))


@command("db:migrate:undo:all")
@common
@click.option("--to", metavar="NAME", help="Revert down to and including this migration.")
def db_undo_all(to: str | None, **kw: Any) -> None:
    """Revert every migration, or down to --to (sequelize-cli's name)."""
    run(kw, do_down(to=to) if to else do_down(all=True))


# ---- status ------------------------------------------------------------------------------


def status_lines(report: Any) -> list[str]:
    """``up``/``down`` first as sequelize-cli prints them (``grep '^down '`` still works), the
    columns aligned, then one summary line."""
    rows = report.rows()
    width = max((len(r["name"]) for r in rows), default=0)
    notes = {
        "changed": "file changed since applied",
        "missing": "file missing",
        "unfinished": UNFINISHED,
    }
    lines = []
    for row in rows:
        note = notes.get(row.get("flag", ""), "")
        line = f"{row['state']:<4} {row['name']:<{width}}  {row['kind']:<3}"
        lines.append((line + ("  " + note if note else "")).rstrip())
    lines.append(status_summary(report, rows))
    return lines


def status_summary(report: Any, rows: list[dict[str, str]] | None = None) -> str:
    applied = sum(1 for r in (report.rows() if rows is None else rows) if r["state"] == "up")
    text = f"{applied} applied, {len(report.pending)} pending"
    if report.drift:
        text += (
            f"; drift: {len(report.drift.missing)} file(s) missing, "
            f"{len(report.drift.changed)} changed since applied"
        )
    return text


def sequelize_status_lines(report: Any) -> list[str]:
    """``db:migrate:status`` prints exactly sequelize-cli's ``up NAME`` / ``down NAME`` lines,
    which scripts parse (``^(up|down) (\\S+)$``); drift is flagged after the name."""
    flags = {"changed": "  (file changed since applied)", "missing": "  (file missing)"}
    return [f"{r['state']} {r['name']}{flags.get(r.get('flag', ''), '')}" for r in report.rows()]


def do_status(
    as_json: bool, exit_code: bool, wait: bool, sequelize_format: bool = False
) -> Callable[[Settings, Log], int]:
    def action(settings: Settings, log: Log) -> int:
        from runner.migrator import Migrator, wrong_place, wrong_place_message

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
                        "storage": migrator.meta.name,
                        "summary": status_summary(report),
                    },
                    ensure_ascii=False,
                )
            )
        else:
            lines = sequelize_status_lines(report) if sequelize_format else status_lines(report)
            if lines:
                log.out("\n".join(lines))  # one write: 10,000 flushed lines cost ≈ 20 ms
        if report.drift:
            if wrong_place(report.drift, report.state):
                log.warn(wrong_place_message(settings.target, report.source, report.state))
            else:
                log.warn(report.drift.describe())
        # Pending is the expected state of a readiness gate, not an error: no "error:" line.
        return 3 if exit_code and report.pending else 0

    return action


@command("status")
@common
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--exit-code", is_flag=True, help="Exit 3 when migrations are pending.")
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for the database (and, with --exit-code, for pending migrations to be "
    "applied by another runner), up to --wait-timeout.",
)
def status_cmd(as_json: bool, exit_code: bool, wait: bool, **kw: Any) -> None:
    """Show applied and pending migrations and drift; with --exit-code a readiness gate."""
    run(kw, do_status(as_json, exit_code, wait), document=as_json)


@command("db:migrate:status")
@common
def db_status(**kw: Any) -> None:
    """Show applied and pending migrations, in sequelize-cli's exact format."""
    run(kw, do_status(False, False, False, sequelize_format=True))


# ---- wait --------------------------------------------------------------------------------


@command("wait")
@common
def wait_cmd(**kw: Any) -> None:
    """Wait until the database accepts connections (up to --wait-timeout), then exit 0."""

    def action(settings: Settings, log: Log) -> int:
        from runner.db import wait_until_ready

        wait_until_ready(settings, log, settings.wait_timeout).close()
        log.info(f"database at {settings.target} is ready")
        return 0

    run(kw, action)


# ---- history -----------------------------------------------------------------------------


HISTORY_COLUMNS = ("finished", "dir", "outcome", "migration", "duration", "tries", "runner")


def history_lines(rows: Sequence[Any]) -> list[str]:
    """A header and aligned columns; the note or error, free text, last."""
    table = [
        (
            f"{r['finished_at']:%Y-%m-%d %H:%M:%S%z}",
            str(r["direction"]),
            str(r["outcome"]),
            str(r["name"]),
            f"{r['duration_ms']:.0f}ms",
            str(r["attempts"]),
            str(r["runner_pod"] or r["runner_host"] or ""),
            "; ".join(x for x in (r["note"], f"error: {r['error']}" if r["error"] else None) if x),
        )
        for r in rows
    ]
    header = (*HISTORY_COLUMNS, "note")
    widths = [max(len(c[i]) for c in [header, *table]) for i in range(len(HISTORY_COLUMNS))]
    right = {4, 5}  # numbers align right
    out = []
    for cells in [header, *table]:
        parts = [
            cells[i].rjust(w) if i in right else cells[i].ljust(w) for i, w in enumerate(widths)
        ]
        out.append(("  ".join(parts) + "  " + cells[-1]).rstrip())
    return out


@command("history")
@common
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Newest rows to show.",
)
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
            whole_ms = [{**r, "duration_ms": round(r["duration_ms"])} for r in rows]
            log.out(json.dumps(whole_ms, default=str, ensure_ascii=False))
            return 0
        if not rows:
            log.info("no history yet")
            return 0
        for line in history_lines(rows):
            log.out(line)
        return 0

    run(kw, action, document=as_json)


# ---- lock --------------------------------------------------------------------------------


@cli.group("lock", cls=Commands)
def lock_group() -> None:
    """Show who holds the migration lock and who waits, or break it."""


@lock_group.command("status", epilog=EXIT_CODES)
@common
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
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

    run(kw, action, document=as_json)


@lock_group.command("release", epilog=EXIT_CODES)
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


# ---- entry point -------------------------------------------------------------------------


def wants_json(argv: Sequence[str], environ: dict[str, str]) -> bool:
    """Whether a usage error should be JSON: the flag as given (even if the rest failed to
    parse), else MIGRUNNER_LOG_FORMAT."""
    for i, word in enumerate(argv):
        if word == "--log-format" and i + 1 < len(argv):
            return argv[i + 1] == "json"
        if word.startswith("--log-format="):
            return word.split("=", 1)[1] == "json"
    return environ.get("MIGRUNNER_LOG_FORMAT") == "json"


def without_hidden(exc: click.ClickException) -> click.ClickException:
    """click's "Did you mean" may name a hidden (compatibility-only) option: drop those."""
    if not isinstance(exc, click.NoSuchOption) or not exc.possibilities or exc.ctx is None:
        return exc
    hidden = {
        name
        for p in exc.ctx.command.params
        if isinstance(p, click.Option) and p.hidden
        for name in (*p.opts, *p.secondary_opts)
    }
    kept = [p for p in exc.possibilities if p not in hidden]
    return click.NoSuchOption(exc.option_name, possibilities=kept, ctx=exc.ctx)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point. Bare ``migrunner`` prints the help and exits 0; usage errors are one
    ``error:`` line (JSON with ``--log-format json``) and exit 2, like every other error."""
    from runner import signals

    signals.install()
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        with click.Context(cli, info_name="migrunner", **cli.context_settings) as ctx:
            click.echo(cli.get_help(ctx))
        sys.exit(0)
    try:
        cli.main(args=args, prog_name="migrunner", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc = without_hidden(exc)
        json_log = wants_json(args, dict(os.environ))
        usage = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else ""
        hint = f" (see '{usage} --help')" if usage else ""
        Log(fmt="json" if json_log else "text").error(exc.format_message() + hint, exit_code=2)
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(130)


__all__ = ["cli", "main"]

from runner.cli_verify import verify_cmd  # noqa: E402  -- its own module; registered here

cli.add_command(verify_cmd)

from runner.cli_snapshot import snapshot_cmd  # noqa: E402  -- its own module; registered here

cli.add_command(snapshot_cmd)
