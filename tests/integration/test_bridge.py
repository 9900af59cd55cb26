"""The node bridge against real node and a real PostgreSQL, driven as the migrator drives it.

Each test opens the runner's own autocommit connection, does BEGIN (transactional mode),
calls ``bridge.run`` and then COMMITs or rolls back, and asserts on what the database says.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from migrations_compat.bridge import (
    BridgeOptions,
    NodeBridge,
    resolve_packages,
)
from migrations_compat.bridge_sql import (
    LABEL_INTROSPECTION,
    LABEL_NON_TRANSACTIONAL,
    LABEL_STATEMENT,
    LABEL_TRANSACTION_CONTROL,
)
from runner.errors import (
    AtomicModeUnavailable,
    ConfigError,
    DatabaseUnavailable,
    MigrationFailed,
)
from runner.log import Log
from tests.conftest import FIXTURES, ROOT, popen_cli
from tests.support.state import exists

BRIDGE = FIXTURES / "bridge"
SHIM_MODULES = ROOT / "migrations_compat" / "shim" / "node_modules"


class Captured:
    """A Log writing into memory, to assert on what reached the run log."""

    def __init__(self, fmt: str = "text") -> None:
        self.stream = io.StringIO()
        self.log = Log(fmt=fmt, stream=self.stream, out_stream=io.StringIO())

    @property
    def text(self) -> str:
        return self.stream.getvalue()


@pytest.fixture
def captured() -> Captured:
    return Captured()


@pytest.fixture
def runner_conn(db_url: str) -> Iterator[psycopg.Connection]:
    """The runner's own connection: autocommit, BEGIN/COMMIT issued explicitly."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def bridge(db_url: str, captured: Captured) -> Iterator[NodeBridge]:
    env = {**os.environ, "DATABASE_URL": db_url}
    with NodeBridge(BridgeOptions(search_dirs=(BRIDGE,), env=env), captured.log) as b:
        yield b


def run_in_transaction(
    bridge: NodeBridge,
    conn: psycopg.Connection,
    name: str,
    *,
    commit: bool = True,
    direction: str = "up",
    dry_run: bool = False,
):
    conn.execute("BEGIN")
    try:
        out = bridge.run(BRIDGE / name, direction, conn, dry_run=dry_run)  # type: ignore[arg-type]
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT" if commit else "ROLLBACK")
    return out


def setting(conn: psycopg.Connection, name: str) -> str:
    return conn.execute("SELECT current_setting(%s)", [name]).fetchone()[0]


# -- values, statements, output -----------------------------------------------------------------


def test_values_come_back_exactly_as_the_real_pg_driver_returns_them(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    # The migration compares every type through the bridge with the same query through a
    # Sequelize instance on the real pg driver, and bind parameters through a model round trip.
    db.execute("CREATE TYPE mood AS ENUM ('happy', 'sad')")
    run_in_transaction(bridge, runner_conn, "types.js")
    row = db.execute("SELECT blob, big, words FROM typed").fetchone()
    assert row == (b"\x00\x01\x02\xfe\xff", 9007199254740993, ["x", "y z", 'q"uote', "back\\slash"])


def test_each_run_loads_the_migration_afresh(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    # A retry after a lock timeout must not see module state left by the failed attempt.
    assert bridge.wants_transaction(BRIDGE / "module-state.js") is None
    run_in_transaction(bridge, runner_conn, "module-state.js")
    run_in_transaction(bridge, runner_conn, "module-state.js")
    assert db.execute("SELECT runs FROM module_state").fetchall() == [(1,), (1,)]


def test_statements_are_recorded_with_labels(
    bridge: NodeBridge, runner_conn: psycopg.Connection
) -> None:
    out = run_in_transaction(bridge, runner_conn, "own-transaction.js")
    labels = [(s.label, s.sql.split()[0].upper()) for s in out.statements]
    assert (LABEL_INTROSPECTION, "SET") in labels  # Sequelize's connection set-up
    assert (LABEL_STATEMENT, "CREATE") in labels
    control = [s for s in out.statements if s.label == LABEL_TRANSACTION_CONTROL]
    assert [s.sql.rstrip(";") for s in control] == [
        "START TRANSACTION",
        "COMMIT",
        "BEGIN",
        "COMMIT",
    ]
    assert control[0].executed_as is not None and control[0].executed_as.startswith("SAVEPOINT")
    assert control[1].executed_as is not None and control[1].executed_as.startswith("RELEASE")
    assert out.sequelize_version == "6.37.8"
    assert Path(out.sequelize_path) == SHIM_MODULES / "sequelize"


def test_console_output_reaches_the_log_tagged_and_apart_from_the_protocol(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection, captured: Captured
) -> None:
    run_in_transaction(bridge, runner_conn, "console.js")
    assert exists(db, "console_ok")
    lines = captured.text.splitlines()
    assert "[console.js] hello from the migration" in lines
    assert '[console.js] {"t":"done","id":1,"ok":true}' in lines
    assert "[console.js] a warning on stderr" in lines
    assert lines.index("[console.js] hello from the migration") < lines.index(
        "[console.js] after the statement"
    )
    assert "using sequelize 6.37.8 from " in captured.text


def test_json_log_lines_carry_the_migration(db_url: str, runner_conn: psycopg.Connection) -> None:
    captured = Captured(fmt="json")
    with NodeBridge(BridgeOptions(search_dirs=(BRIDGE,)), captured.log) as bridge:
        run_in_transaction(bridge, runner_conn, "console.js", commit=False)
    records = [json.loads(line) for line in captured.text.splitlines()]
    hello = next(r for r in records if r["msg"].endswith("hello from the migration"))
    assert hello["migration"] == "console.js" and hello["stream"] == "stdout"


def test_app_config_options_reach_sequelize_but_credentials_do_not(
    db_url: str, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    config = {
        "timezone": "+05:30",
        "define": {"underscored": True},
        "password": "from-config",
        "host": "db.example",
        "pool": {"max": 1},
    }
    options = BridgeOptions(search_dirs=(BRIDGE,), sequelize_options=config)
    with NodeBridge(options, Log(stream=io.StringIO())) as bridge:
        run_in_transaction(bridge, runner_conn, "options.js")
        pid = bridge.node_pid
        assert pid is not None
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert "from-config" not in argv and "underscored" not in argv
    assert db.execute("SELECT * FROM seen_options").fetchone() == (
        "+05:30",
        "<+05:30>-05:30",
        True,
        True,
    )


def test_node_that_cannot_start_is_a_config_error() -> None:
    bad_flag = BridgeOptions(search_dirs=(BRIDGE,), node_args=("--no-such-flag",))
    with (
        NodeBridge(bad_flag, Log(stream=io.StringIO())) as bridge,
        pytest.raises(
            ConfigError,
            match=r"the node bridge failed to start: exit code 9: .*bad option: --no-such-flag",
        ),
    ):
        bridge.wants_transaction(BRIDGE / "console.js")
    no_node = BridgeOptions(search_dirs=(BRIDGE,), node="/nonexistent/node")
    with (
        NodeBridge(no_node, Log(stream=io.StringIO())) as bridge,
        pytest.raises(ConfigError, match=r"node not found"),
    ):
        bridge.wants_transaction(BRIDGE / "console.js")


# -- errors -------------------------------------------------------------------------------------


def test_failing_statement_names_file_direction_sqlstate_and_statement(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    with pytest.raises(MigrationFailed) as info:
        run_in_transaction(bridge, runner_conn, "sql-error.js")
    err = info.value
    assert err.sqlstate == "42P01"
    # Worded like a SQL migration's failure: file (and line when node's stack has it),
    # message, SQLSTATE, statement.
    assert re.match(
        rf"migration sql-error\.js failed \(up\) at {re.escape(str(BRIDGE / 'sql-error.js'))}"
        r':6: relation "public\.no_such_table" does not',
        err.message,
    ), err.message
    assert "[SQLSTATE 42P01] in statement: ALTER TABLE" in err.message
    assert "\n" not in err.message
    assert not exists(db, "before_error")
    # node survived and serves the next migration
    pid = bridge.node_pid
    run_in_transaction(bridge, runner_conn, "caught-error.js")
    assert bridge.node_pid == pid
    assert exists(db, "after_catch")


def test_syntax_error_names_file_and_line(
    bridge: NodeBridge, runner_conn: psycopg.Connection
) -> None:
    with pytest.raises(MigrationFailed) as info:
        run_in_transaction(bridge, runner_conn, "syntax-error.js")
    assert info.value.sqlstate is None
    assert info.value.message == (
        f"migration syntax-error.js failed (up) at {BRIDGE / 'syntax-error.js'}:6: "
        "SyntaxError: Unexpected token ';'"
    )


def test_javascript_error_names_error_and_line(
    bridge: NodeBridge, runner_conn: psycopg.Connection
) -> None:
    with pytest.raises(MigrationFailed) as info:
        run_in_transaction(bridge, runner_conn, "js-error.js")
    assert info.value.message == (
        f"migration js-error.js failed (up) at {BRIDGE / 'js-error.js'}:6: "
        "TypeError: Cannot read properties of undefined (reading 'one')"
    )


def test_missing_down_uses_sequelize_cli_wording(
    bridge: NodeBridge, runner_conn: psycopg.Connection
) -> None:
    with pytest.raises(MigrationFailed) as info:
        run_in_transaction(bridge, runner_conn, "console.js", direction="down")
    assert info.value.message == (
        f"migration console.js failed (down) at {BRIDGE / 'console.js'}: "
        "Could not find migration method: down"
    )


def test_caught_error_leaves_the_runner_transaction_usable(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    runner_conn.execute("BEGIN")
    bridge.run(BRIDGE / "caught-error.js", "up", runner_conn)
    # what the migrator does next, in the same transaction
    runner_conn.execute("CREATE TABLE recorded_after (name text)")
    runner_conn.execute("COMMIT")
    assert exists(db, "after_catch") and exists(db, "recorded_after")


def test_large_results_stream_in_chunks_and_failures_discard_them(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    out = run_in_transaction(bridge, runner_conn, "streamed.js")
    assert db.execute("SELECT n FROM streamed_ok").fetchall() == [(1000,)]
    assert [s.sqlstate for s in out.statements if s.sqlstate] == ["22012"]


def test_statement_cut_by_a_nul_byte_is_refused_and_the_migration_goes_on(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection, captured: Captured
) -> None:
    out = run_in_transaction(bridge, runner_conn, "nul-byte.js")
    assert exists(db, "after_nul")
    assert [s.sqlstate for s in out.statements if s.sqlstate] == ["42601"]
    assert '[nul-byte.js] refused: unterminated quoted string at or near "\'a"' in captured.text


def test_migration_commits_are_savepoints_of_the_runner_transaction(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    run_in_transaction(bridge, runner_conn, "own-transaction.js", commit=False)
    assert not exists(db, "committed_inside")
    assert not exists(db, "raw_committed")
    run_in_transaction(bridge, runner_conn, "own-transaction.js")
    assert exists(db, "committed_inside") and exists(db, "raw_committed")


def test_session_settings_stay_inside_the_migration(
    bridge: NodeBridge, runner_conn: psycopg.Connection, captured: Captured
) -> None:
    names = ["statement_timeout", "search_path", "application_name", "work_mem", "TimeZone"]
    runner_conn.execute("SET lock_timeout = '3s'")
    before = {n: setting(runner_conn, n) for n in [*names, "lock_timeout"]}
    runner_conn.execute("BEGIN")
    runner_conn.execute("SET LOCAL lock_timeout = '4s'")
    # its last transaction asks for SERIALIZABLE, which the runner's READ COMMITTED transaction
    # cannot honour after the migration's earlier statements: the attempt is abandoned (the
    # migrator re-runs it in pool mode), never silently downgraded
    with pytest.raises(AtomicModeUnavailable, match="isolation level serializable"):
        bridge.run(BRIDGE / "settings.js", "up", runner_conn)
    # restored for the migrator's own statements that follow in the same transaction
    assert {n: setting(runner_conn, n) for n in names} == {n: before[n] for n in names}
    assert setting(runner_conn, "lock_timeout") == "4s"
    runner_conn.execute("COMMIT")
    assert {n: setting(runner_conn, n) for n in [*names, "lock_timeout"]} == before
    assert "transaction options ignored" not in captured.text


def test_unfinished_transaction_of_the_migration_fails_it(
    bridge: NodeBridge, runner_conn: psycopg.Connection
) -> None:
    with pytest.raises(MigrationFailed, match=r"never committed or rolled back"):
        run_in_transaction(bridge, runner_conn, "unfinished-transaction.js")


# -- statements that cannot run in a transaction --------------------------------------------------


def test_concurrent_index_fails_with_25001_then_runs_outside_a_transaction(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    with pytest.raises(MigrationFailed) as info:
        run_in_transaction(bridge, runner_conn, "concurrently.js")
    assert info.value.sqlstate == "25001"
    assert not exists(db, "ci_target")
    bridge.run(BRIDGE / "concurrently.js", "up", runner_conn, transactional=False)
    assert exists(db, "ci_target_name")
    assert db.execute("SELECT name FROM ci_target").fetchall() == [("after the index",)]


def test_caught_25001_still_fails_so_the_migrator_reruns_it(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    with pytest.raises(MigrationFailed) as info:
        run_in_transaction(bridge, runner_conn, "concurrently-caught.js")
    assert info.value.sqlstate == "25001"
    bridge.run(BRIDGE / "concurrently-caught.js", "up", runner_conn, transactional=False)
    assert exists(db, "cc_target_name")


def test_dry_run_records_non_transactional_statements_and_goes_on(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    out = run_in_transaction(bridge, runner_conn, "concurrently.js", dry_run=True, commit=False)
    skipped = [s for s in out.statements if s.label == LABEL_NON_TRANSACTIONAL]
    assert len(skipped) == 1 and "CONCURRENTLY" in skipped[0].sql
    assert skipped[0].sqlstate == "25001"
    assert out.statements[-1].sql.startswith("INSERT INTO ci_target")
    assert not exists(db, "ci_target")


def test_use_transaction_flag(bridge: NodeBridge) -> None:
    assert bridge.wants_transaction(BRIDGE / "no-transaction.js") is False
    assert bridge.wants_transaction(BRIDGE / "default-export-no-transaction.js") is False
    assert bridge.wants_transaction(BRIDGE / "console.js") is None
    with pytest.raises(
        MigrationFailed,
        match=r"^migration syntax-error.js failed to load at .*syntax-error.js:6: SyntaxError",
    ):
        bridge.wants_transaction(BRIDGE / "syntax-error.js")


def test_non_transactional_run_restores_session_settings(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    before = {n: setting(runner_conn, n) for n in ("statement_timeout", "TimeZone")}
    out = bridge.run(BRIDGE / "no-transaction.js", "up", runner_conn, transactional=False)
    assert exists(db, "nt_target_name")
    assert {n: setting(runner_conn, n) for n in before} == before
    assert all(s.label != LABEL_TRANSACTION_CONTROL for s in out.statements)


def test_non_transactional_run_that_leaves_a_transaction_open_is_rolled_back(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    with pytest.raises(MigrationFailed, match=r"left a transaction open; it was rolled back"):
        bridge.run(BRIDGE / "raw-begin-left-open.js", "up", runner_conn, transactional=False)
    assert runner_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert not exists(db, "left_open")


# -- queries outside the migration's lifetime -------------------------------------------------


def test_missing_await_runs_in_the_migration_transaction_with_one_warning(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection, captured: Captured
) -> None:
    run_in_transaction(bridge, runner_conn, "missing-await.js", commit=False)
    assert not exists(db, "never_awaited")  # it ran inside the transaction rolled back here
    run_in_transaction(bridge, runner_conn, "missing-await.js")
    assert exists(db, "never_awaited")
    warnings = [line for line in captured.text.splitlines() if "not awaited" in line]
    assert len(warnings) == 2  # one per run
    assert warnings[0].endswith(
        'missing-await.js (up): not awaited: CREATE TABLE IF NOT EXISTS "never_awaited" '
        '("id" INTEGER , PRIMARY KEY ("id")); they ran in the migration\'s transaction'
    )


def test_strict_await_refuses_the_missing_await(
    db_url: str, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    options = BridgeOptions(search_dirs=(BRIDGE,), strict_await=True)
    with NodeBridge(options, Log(stream=io.StringIO())) as strict:
        with pytest.raises(MigrationFailed) as info:
            run_in_transaction(strict, runner_conn, "missing-await.js")
        assert info.value.message.startswith(
            f"migration missing-await.js failed (up) at {BRIDGE / 'missing-await.js'}: "
            'query issued after up() resolved: CREATE TABLE IF NOT EXISTS "never_awaited"'
        )
        assert info.value.message.endswith("— missing await? (--strict-await)")
        # the bridge stays usable for the next migration
        run_in_transaction(strict, runner_conn, "module-state.js")
    assert not exists(db, "never_awaited")
    assert exists(db, "module_state")


def test_query_still_running_when_up_resolves_is_waited_for(
    db_url: str, runner_conn: psycopg.Connection, db: psycopg.Connection, tmp_path: Path
) -> None:
    """up() resolves while its query waits on a lock the test holds: the runner does not
    commit until that query has finished (strict mode: it fails the migration instead)."""
    db.execute("CREATE TABLE gate (id int)")
    for strict in (False, True):
        resolved = tmp_path / f"resolved-{strict}"
        env = {**os.environ, "MIGRUNNER_TEST_RESOLVED_FILE": str(resolved)}
        captured = Captured()
        with (
            psycopg.connect(db_url, autocommit=True) as holder,
            psycopg.connect(db_url, autocommit=True) as watcher,
        ):
            holder.execute("BEGIN")
            holder.execute("LOCK TABLE gate IN ACCESS EXCLUSIVE MODE")

            def release_once_blocked_and_resolved(resolved: Path = resolved) -> None:
                # The query waits on our lock (the database says so) and up() has resolved.
                blocked = (
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%INSERT INTO gate%')"
                )
                while not (resolved.exists() and watcher.execute(blocked).fetchone()[0]):
                    time.sleep(0.01)
                holder.execute("ROLLBACK")

            releaser = threading.Thread(target=release_once_blocked_and_resolved)
            releaser.start()
            options = BridgeOptions(search_dirs=(BRIDGE,), env=env, strict_await=strict)
            try:
                with NodeBridge(options, captured.log) as bridge:
                    if strict:
                        with pytest.raises(MigrationFailed) as info:
                            run_in_transaction(bridge, runner_conn, "still-running.js")
                    else:
                        run_in_transaction(bridge, runner_conn, "still-running.js")
            finally:
                releaser.join()
        if strict:
            assert info.value.message == (
                f"migration still-running.js failed (up) at {BRIDGE / 'still-running.js'}: "
                "query still running when up() resolved: "
                "INSERT INTO gate VALUES (1) — missing await? (--strict-await)"
            )
        else:
            assert (
                "still-running.js (up): not awaited: INSERT INTO gate VALUES (1)" in captured.text
            )
    assert db.execute("SELECT count(*) FROM gate").fetchone() == (1,)  # strict: rolled back


def test_query_through_a_finished_migration_is_refused_and_stops_the_run(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection, captured: Captured
) -> None:
    """A query that a committed migration fires later never runs in another's transaction."""
    db.execute("CREATE TABLE late_target (id int); INSERT INTO late_target VALUES (1)")
    run_in_transaction(bridge, runner_conn, "late-arm.js")
    with pytest.raises(MigrationFailed) as info:
        run_in_transaction(bridge, runner_conn, "late-fire.js")
    assert info.value.message == (
        f"migration late-arm.js failed (up) at {BRIDGE / 'late-arm.js'}: "
        "query issued after up() had finished and its transaction had ended; "
        "it was not executed: DELETE FROM late_target — await it (or return its promise)"
    )
    assert (
        "[late-fire.js] late query refused: query issued after late-arm.js's up() had finished"
        in captured.text
    )
    assert db.execute("SELECT count(*) FROM late_target").fetchone()[0] == 1
    assert not exists(db, "late_fired")  # the innocent migration rolled back too


def test_unhandled_rejection_fails_the_migration(
    bridge: NodeBridge, runner_conn: psycopg.Connection
) -> None:
    with pytest.raises(MigrationFailed) as info:
        run_in_transaction(bridge, runner_conn, "unhandled.js")
    assert info.value.sqlstate == "42P01"
    assert 'relation "not_there_either" does not exist' in info.value.message


def test_own_connection_waiting_for_the_runner_transaction_fails_instead_of_hanging(
    db_url: str, runner_conn: psycopg.Connection, db: psycopg.Connection, captured: Captured
) -> None:
    db.execute("CREATE TABLE waits_target (id int); INSERT INTO waits_target VALUES (1)")
    env = {k: v for k, v in os.environ.items() if k != "PGOPTIONS"} | {"DATABASE_URL": db_url}
    options = BridgeOptions(search_dirs=(BRIDGE,), env=env, own_connection_lock_timeout=0.3)
    with (
        NodeBridge(options, captured.log) as bridge,
        pytest.raises(MigrationFailed) as info,
    ):
        run_in_transaction(bridge, runner_conn, "own-connection-waits.js")
    assert info.value.sqlstate is None
    assert info.value.message.startswith(
        f"migration own-connection-waits.js failed (up) at {BRIDGE / 'own-connection-waits.js'}"
        ":13: canceling statement due to lock timeout [SQLSTATE 55P03] "
        "in statement: UPDATE waits_target SET id = id + 1 — on a connection the migration opened itself"
    )
    assert db.execute("SELECT id FROM waits_target").fetchall() == [(1,)]


def test_cli_retries_a_js_migration_after_a_lock_timeout(
    db_url: str, db: psycopg.Connection
) -> None:
    db.execute("CREATE TABLE contended (id int)")
    folder = BRIDGE / "lock-retry"
    with psycopg.connect(db_url, autocommit=True) as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE contended IN ACCESS SHARE MODE")
        proc = popen_cli(
            "up",
            "--url",
            db_url,
            "--migrations-path",
            str(folder),
            "--statement-lock-timeout",
            "0.2",
        )
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # the runner says it rolled back and will retry: release
            seen.append(line)
            if "retry 1/" in line:
                holder.execute("ROLLBACK")
                break
        out, err = proc.communicate(timeout=60)
    log = "".join(seen) + err
    assert proc.returncode == 0, log + out
    assert "SQLSTATE 55P03" in log
    # The migration's console.log is run output: stdout, as under sequelize-cli.
    assert out.count("[20240101000000-alter-contended.js] altering contended") == 2
    assert "added" in {
        r[0]
        for r in db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'contended'"
        )
    }


# -- process and connection failures ----------------------------------------------------------


def test_lost_connection_raises_database_unavailable_and_node_restarts(
    bridge: NodeBridge, db_url: str, db: psycopg.Connection
) -> None:
    with psycopg.connect(db_url, autocommit=True) as doomed:
        doomed.execute("BEGIN")
        with pytest.raises(DatabaseUnavailable):
            bridge.run(BRIDGE / "terminate.js", "up", doomed)
    assert bridge.node_pid is None
    with psycopg.connect(db_url, autocommit=True) as fresh:
        run_in_transaction(bridge, fresh, "caught-error.js")
    assert exists(db, "after_catch")


def test_node_exiting_fails_the_migration_with_its_stderr(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    with pytest.raises(MigrationFailed) as info:
        run_in_transaction(bridge, runner_conn, "exits.js")
    assert info.value.message == (
        f"migration exits.js failed (up) at {BRIDGE / 'exits.js'}: "
        "node exited: exit code 3: about to call process.exit(3)"
    )
    run_in_transaction(bridge, runner_conn, "caught-error.js")
    assert exists(db, "after_catch")


def test_node_killed_by_sigkill_is_named_as_probably_out_of_memory(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    with pytest.raises(MigrationFailed) as info:
        run_in_transaction(bridge, runner_conn, "killed.js")
    message = info.value.message
    assert message.startswith(
        f"migration killed.js failed (up) at {BRIDGE / 'killed.js'}: "
        "node exited: killed by SIGKILL (exit code -9): out of memory?"
    )
    assert "\n" not in message
    runner_conn.rollback()
    assert not exists(db, "killed_before")  # the migration's transaction was rolled back


def test_passwords_never_reach_the_log_or_errors(
    db_url: str, runner_conn: psycopg.Connection, captured: Captured
) -> None:
    env = {**os.environ, "DB_PASSWORD": "s3cr3t-Pa55"}
    with (
        NodeBridge(BridgeOptions(search_dirs=(BRIDGE,), env=env), captured.log) as bridge,
        pytest.raises(MigrationFailed) as info,
    ):
        run_in_transaction(bridge, runner_conn, "secret.js")
    assert info.value.message == (
        f"migration secret.js failed (up) at {BRIDGE / 'secret.js'}:6: cannot log in with ***"
    )
    assert "[secret.js] the password is ***" in captured.text
    assert "s3cr3t" not in captured.text


# -- resolution of sequelize ------------------------------------------------------------------


def test_without_app_node_modules_the_shim_copy_is_used_by_bridge_and_migration(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    out = run_in_transaction(bridge, runner_conn, "same-sequelize.js")
    assert Path(out.sequelize_path) == SHIM_MODULES / "sequelize"
    (path,) = db.execute("SELECT path FROM same_sequelize").fetchone()
    assert Path(path).is_relative_to(SHIM_MODULES / "sequelize")


def test_app_node_modules_win_over_the_shim(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "node_modules" / "sequelize").mkdir(parents=True)
    (app / "node_modules" / "sequelize" / "package.json").write_text('{"version": "6.0.0"}')
    (app / "src" / "migrations").mkdir(parents=True)
    packages = resolve_packages([app / "src" / "migrations"])
    assert packages.from_app
    assert packages.sequelize_dir == (app / "node_modules" / "sequelize").resolve()
    # no pg in the app: the shim's
    assert packages.pg_dir == (SHIM_MODULES / "pg").resolve()
    assert not resolve_packages([tmp_path]).from_app


def test_esm_migration_is_loaded_with_import(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    runner_conn.execute("BEGIN")
    bridge.run(BRIDGE / "esm" / "20240101-esm.js", "up", runner_conn)
    runner_conn.execute("COMMIT")
    assert exists(db, "from_esm")


# -- cost -----------------------------------------------------------------------------------------


def test_large_statements_and_results(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    run_in_transaction(bridge, runner_conn, "big.js")
    assert db.execute("SELECT length(v) FROM big").fetchone() == (3 * 1024 * 1024,)


def test_many_queries_in_one_migration(
    bridge: NodeBridge, runner_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    """500 awaited queries in one migration all go through (their cost is measured by
    ``bench/bridge_cost.py``, never asserted here)."""
    out = run_in_transaction(bridge, runner_conn, "many-queries.js")
    assert sum(1 for st in out.statements if st.sql == "SELECT 1") == 500
    (per_query_ms,) = db.execute("SELECT ms FROM round_trip").fetchone()
    assert per_query_ms > 0
