"""One node per run (migrations_compat/node_session.py): the node that evaluates the app's JS
config is the one that runs its JS migrations; a no-op run never loads sequelize; a config that
fails says so exactly as the stand-alone config node does.

The app's own config and migrations report what happened in that node (its pid, its argv, each
``require`` of sequelize) to a trace file, so every assertion is about the real processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import run_cli

PASSWORD = "s3cret-pw-in-the-url"

CONFIG = """\
const fs = require('fs');
const Module = require('module');
const trace = (line) => fs.appendFileSync(process.env.TRACE_FILE, line + '\\n');
trace('config ' + process.pid + ' ' + JSON.stringify(process.argv));
const load = Module._load;
Module._load = function traced(request, ...rest) {
  if (/[\\\\/]sequelize$|^sequelize$/.test(request)) trace('load ' + process.pid + ' ' + request);
  return load.call(this, request, ...rest);
};
module.exports = { production: { dialect: 'postgres', use_env_variable: 'APP_DB_URL' } };
"""

MIGRATION = """\
const fs = require('fs');
const trace = (line) => fs.appendFileSync(process.env.TRACE_FILE, line + '\\n');
module.exports = {
  async up(queryInterface, Sequelize) {
    trace('up ' + process.pid);
    await queryInterface.createTable('things', { id: { type: Sequelize.INTEGER } });
  },
  async down(queryInterface) {
    trace('down ' + process.pid);
    await queryInterface.dropTable('things');
  },
};
"""


def app(tmp_path: Path, config: str = CONFIG) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "db.js").write_text(config)
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "20240101000000-create-things.js").write_text(MIGRATION)
    return tmp_path


def migrunner(cwd: Path, db_url: str, *args: str, early: bool = True):  # type: ignore[no-untyped-def]
    url = db_url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")
    env = {"APP_DB_URL": url, "TRACE_FILE": str(cwd / "trace.txt"), "NODE_ENV": "production"}
    if not early:
        env["MIGRUNNER_EARLY_NODE"] = "0"
    return run_cli(
        *args, "--config", "src/db.js", "--migrations-path", "migrations", cwd=cwd, env=env
    )


def trace(cwd: Path) -> list[list[str]]:
    path = cwd / "trace.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return [line.split(" ", 2) for line in lines]


def pids(events: list[list[str]], kind: str) -> set[str]:
    return {e[1] for e in events if e[0] == kind}


def gone(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("command", [("db:migrate",), ("up",)])
def test_the_config_node_runs_the_migrations(
    tmp_path: Path, db_url: str, command: tuple[str, ...]
) -> None:
    cwd = app(tmp_path)
    done = migrunner(cwd, db_url, *command)
    assert done.returncode == 0, done.stderr
    events = trace(cwd)
    config_pids, up_pids = pids(events, "config"), pids(events, "up")
    assert len(config_pids) == 1 and up_pids == config_pids, events
    assert pids(events, "load") == config_pids  # sequelize loaded once, in that very node
    argv = next(e[2] for e in events if e[0] == "config")
    assert PASSWORD not in argv and "APP_DB_URL" not in argv  # settings travel on the socket
    assert gone(next(iter(config_pids)))

    down = migrunner(cwd, db_url, "db:migrate:undo")
    assert down.returncode == 0, down.stderr
    events = trace(cwd)
    assert pids(events, "down") == pids(events, "config") != set()


def test_a_noop_run_never_loads_sequelize(tmp_path: Path, db_url: str) -> None:
    cwd = app(tmp_path)
    assert migrunner(cwd, db_url, "db:migrate").returncode == 0
    trace(cwd)
    again = migrunner(cwd, db_url, "db:migrate")
    assert again.returncode == 0, again.stderr
    assert "No migrations were executed" in again.stdout
    events = trace(cwd)
    assert [e[0] for e in events] == ["config"], events  # evaluated, then ended: no require
    assert gone(events[0][1])  # and reaped by the runner before it exited


@pytest.mark.parametrize("command", ["status", "db:migrate:status"])
def test_status_reads_the_config_in_the_node_started_first(
    tmp_path: Path, db_url: str, command: str
) -> None:
    cwd = app(tmp_path)
    done = migrunner(cwd, db_url, command)
    assert done.returncode == 0, done.stderr
    assert "20240101000000-create-things.js" in done.stdout
    events = trace(cwd)
    assert [e[0] for e in events] == ["config"], events  # never a bridge: no require
    assert "session.js" in events[0][2]  # the node started before Python's imports
    assert gone(events[0][1])  # ended and reaped before the runner exited


def test_the_old_way_still_works(tmp_path: Path, db_url: str) -> None:
    """MIGRUNNER_EARLY_NODE=0: a config node of its own, then a bridge node (two pids)."""
    cwd = app(tmp_path)
    done = migrunner(cwd, db_url, "db:migrate", early=False)
    assert done.returncode == 0, done.stderr
    events = trace(cwd)
    assert pids(events, "config") and pids(events, "up")
    assert pids(events, "config").isdisjoint(pids(events, "up"))


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            "const x = 1;\nthrow new Error('no DB_HOST here');\n",
            "cannot load config src/db.js:2: Error: no DB_HOST here",
        ),
        (
            "module.exports = new Promise(() => {});\n",
            "cannot load config src/db.js: Exit: node exited (code 0) before the file was "
            "evaluated",
        ),
        ("module.exports = {", "cannot load config src/db.js:1: SyntaxError"),
    ],
)
def test_a_failing_config_reads_the_same_either_way(
    tmp_path: Path, db_url: str, config: str, expected: str
) -> None:
    cwd = app(tmp_path, config)
    early = migrunner(cwd, db_url, "db:migrate")
    old = migrunner(cwd, db_url, "db:migrate", early=False)
    assert early.returncode == old.returncode == 2
    assert expected in early.stderr
    assert early.stderr == old.stderr
    assert "Traceback" not in early.stderr


# -- the early guess agrees with the config loader -----------------------------------------------

FLAT = "module.exports = { dialect: 'postgres', host: 'db.internal', database: 'app' };\n"
RC_JS = "module.exports = { config: 'conf/db.js' };\n"


@pytest.mark.parametrize(
    ("files", "argv", "options_path", "config_path"),
    [
        ({"src/db.js": FLAT}, ["up", "--config", "src/db.js"], None, "src/db.js"),
        (
            {"src/db.js": FLAT},
            ["db:migrate", "--config=src/db.js", "--env", "x"],
            None,
            "src/db.js",
        ),
        ({"config/config.js": FLAT}, ["down"], None, None),
        ({".sequelizerc": RC_JS, "conf/db.js": FLAT}, ["db:migrate:undo:all"], None, None),
        ({"rc.js": RC_JS, "conf/db.js": FLAT}, ["up", "--options-path", "rc.js"], "rc.js", None),
    ],
)
def test_the_config_loader_uses_the_node_started_first(
    tmp_path: Path,
    files: dict[str, str],
    argv: list[str],
    options_path: str | None,
    config_path: str | None,
) -> None:
    """What the console script guessed from argv is what config.py would evaluate: its answer
    is taken from that very node (a wrong guess would only cost a second node)."""
    from migrations_compat import node_session
    from migrations_compat.config import ConfigRequest, start_loading

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    environ = {"PATH": os.environ["PATH"]}
    node_session.start_early(argv, environ, str(tmp_path))
    session = node_session.current()
    assert session is not None
    try:
        loading = start_loading(
            ConfigRequest(
                cwd=tmp_path,
                options_path=Path(options_path) if options_path else None,
                config_path=Path(config_path) if config_path else None,
                environ=environ,
            )
        )
        assert loading._session is session
        cfg = loading.result()
        assert cfg is not None and cfg.conninfo["host"] == "db.internal"
    finally:
        node_session.discard()
    assert session.process.proc.returncode is not None  # ended and reaped


@pytest.mark.parametrize(
    ("files", "argv"),
    [
        ({"config/config.json": '{"development": {"dialect": "postgres"}}'}, ["up"]),
        ({"src/db.js": FLAT}, ["history", "--config", "src/db.js"]),
        ({"src/db.js": FLAT}, ["up", "--config", "src/db.js", "--help"]),
        ({}, ["up", "--url", "postgresql://app@db/app"]),
    ],
)
def test_no_node_is_started_where_none_would_be(
    tmp_path: Path, files: dict[str, str], argv: list[str]
) -> None:
    from migrations_compat import node_session

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    node_session.start_early(argv, {"PATH": os.environ["PATH"]}, str(tmp_path))
    assert node_session.current() is None
