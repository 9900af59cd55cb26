"""``migrunner verify``: the command (the work is in :mod:`runner.verify`).

The database is a throwaway embedded server (the ``migrunner[embedded]`` extra) unless one is
named on the command line (``--url``, ``--direct-url`` or ``--config``). ``DATABASE_URL`` and
``DB_*`` are deliberately not used here: verify applies and reverts everything, and a
production URL left in a shell's environment must never be its target (a named database must
be empty anyway, or verify refuses).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any

import click

from runner.cli import common, run
from runner.log import Log
from runner.settings import Settings

#: Stands in for the URL while the settings are resolved; replaced by the embedded server's.
_EMBEDDED_PLACEHOLDER = "postgresql://embedded@localhost/postgres"


def do_verify(strict: bool, as_json: bool, embedded: bool) -> Any:
    def action(settings: Settings, log: Log) -> int:
        from runner.verify import VerifyFailed, render, verify

        if embedded:
            from runner.embedded import embedded_server
            from runner.settings import url_to_conninfo

            with embedded_server() as server:
                target = f"a throwaway PostgreSQL {server.version} (migrunner[embedded])"
                log.info(f"verify: started {target}")
                point_environment_at(server.url, server.port)
                conninfo = url_to_conninfo(server.url, "embedded") | {"connect_timeout": "10"}
                report = verify(replace(settings, conninfo=conninfo, target=target), log, strict)
        else:
            report = verify(settings, log, strict)
        if as_json:
            log.out(json.dumps(report.as_json(), ensure_ascii=False))
        else:
            for line in render(report):
                log.out(line)
        if not report.ok:
            if report.problem:
                raise VerifyFailed(f"verify failed: {report.problem}")
            declared = report.declared
            raise VerifyFailed(
                f"verify failed (--strict): {declared.name if declared else '?'} is "
                "irreversible (declared)"
            )
        declared = report.declared
        if declared:
            log.info(
                f"verify passed: every down() restored its schema, down to {declared.name}, "
                f"which is irreversible (declared: {declared.detail}); walk stopped there"
            )
        else:
            log.info("verify passed: every down() restored the schema before its up()")
        return 0

    return action


def point_environment_at(url: str, port: int) -> None:
    """Migrations that open their own connection (``DATABASE_URL``, ``DB_*``, libpq's ``PG*``)
    must reach the throwaway server too, never a database the shell happens to name."""
    for name in [k for k in os.environ if k.startswith(("DB_", "PG"))]:
        del os.environ[name]
    os.environ.update(
        DATABASE_URL=url,
        DB_HOST="127.0.0.1",
        DB_PORT=str(port),
        DB_NAME="postgres",
        DB_USER="postgres",
        PGHOST="127.0.0.1",
        PGPORT=str(port),
        PGUSER="postgres",
        PGDATABASE="postgres",
    )


@click.command("verify")
@common
@click.option(
    "--strict", is_flag=True, help="Fail on migrations declared irreversible, too (no down())."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def verify_cmd(strict: bool, as_json: bool, **kw: Any) -> None:
    """Apply every migration on an empty database, check each down() restores the schema
    before its up(), apply all again. Without --url: a throwaway embedded PostgreSQL.

    Exit 0 when the round trip holds, 9 when it does not."""
    # Only the command line names verify's database: --url and --direct-url also read
    # DATABASE_URL / MIGRUNNER_DIRECT_URL (click's envvar), which point at a real target here.
    ctx = click.get_current_context()
    named = [
        k
        for k in ("url", "direct_url", "config")
        if kw.get(k) and ctx.get_parameter_source(k) is click.core.ParameterSource.COMMANDLINE
    ]
    embedded = not named
    if embedded:
        kw["direct_url"] = None
        kw["url"] = _EMBEDDED_PLACEHOLDER
    run(kw, do_verify(strict, as_json, embedded), document=as_json)
