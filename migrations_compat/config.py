"""Read an app's ``.sequelizerc`` and Sequelize config exactly as sequelize-cli 6.6.5 does.

So that ``migrunner db:migrate --config src/config/database.js --env production`` connects to the
same database, with the same ``SequelizeMeta`` table, as the sequelize-cli command it replaces.
The rules below are taken from sequelize-cli's source (``core/yargs.js``,
``helpers/config-helper.js``, ``helpers/path-helper.js``, ``helpers/umzug-helper.js``,
``helpers/import-helper.js``) and from sequelize 6 / pg 8, which turn the config into a
connection:

* ``.sequelizerc``: ``--options-path`` (relative to the cwd) else ``<cwd>/.sequelizerc``,
  ``require``-d and JSON round-tripped; its keys (``config``, ``url``, ``migrations-path``,
  ``env``...) are defaults that command-line options override. An explicit ``--options-path``
  that does not exist is an error here (sequelize-cli silently ignores it).
* Config file: ``--config`` else the rc's ``config`` (both relative to the cwd), else
  ``config/config.js`` when readable, else ``config/config.json``. ``.json`` files are parsed
  here without node; anything else is ``import()``-ed by ``shim/load-config.js`` (CommonJS or
  ESM). An exported function is called (``fn(callback)`` when it takes one argument), promises
  are awaited.
* ``--url`` (or the rc's ``url``) replaces the config file entirely; the file is not read.
* Environment: ``--env``, else the rc's ``env``, else ``NODE_ENV`` (as node sees it after the
  rc and config ran, so dotenv works), else ``development``. A config without environment keys
  (a flat ``{dialect, host, ...}`` object) is used as is, like sequelize-cli does; an
  environment map without the requested key is an error (sequelize-cli would go on with
  nonsense).
* ``url`` in the entry, else ``use_env_variable`` (the named variable), is parsed like node's
  legacy ``url.parse`` and overrides ``database``, ``host``, ``port`` (null when the URL has none,
  hence 5432), ``dialect`` and, when the URL has user info, ``username`` / ``password``
  (percent-decoded; the database name is *not* decoded, exactly like sequelize-cli).
* Storage: ``migrationStorage`` must be ``"sequelize"`` (the default); ``json`` / ``none`` are
  refused because migrunner's transactional guarantee lives in the ``SequelizeMeta`` table.
  ``migrationStorageTableName`` / ``migrationStorageTableSchema`` / ``migrationTimestamps``
  follow umzug-helper (falsy values fall back to the defaults).
* ``dialect`` must be ``postgres`` or ``postgresql``.
* Seeders (``db:seed*``): ``--seeders-path`` else the rc's ``seeders-path`` else ``seeders``;
  ``seederStorage`` ``none`` (the default: nothing is recorded, every seeder is pending),
  ``sequelize`` (``seederStorageTableName``, default ``SequelizeData``;
  ``seederStorageTableSchema``; ``seederTimestamps``) or ``json`` (``seederStoragePath``,
  default ``<cwd>/sequelize-data.json``), as umzug-helper reads them.
* ``migrunner: {nonTransactional: ["20240101-add-index.js", ...]}`` in the environment entry is
  a migrunner extension: the named migrations run outside a transaction (``CREATE INDEX
  CONCURRENTLY``...). sequelize-cli ignores the key, so the same file serves both tools.

Connection (sequelize 6 forwards only ``dialectOptions.ssl`` and a few other
``dialectOptions`` to pg; the top-level ``ssl`` option and a URL's ``?ssl=true`` reach nobody):
host defaults to ``localhost`` and port to 5432 (sequelize's defaults, not libpq's Unix socket);
user, password and database are set only when the config has them, so libpq's ``PG*`` variables
fill the gaps as pg's do. ``replication.write`` overrides them, as sequelize's write pool does.

``dialectOptions.ssl`` to libpq (pg 8 hands it to node's ``tls.connect``, whose
``rejectUnauthorized`` defaults to true and which checks the host name):

=====================================================  ==================================
``ssl`` absent                                         nothing: libpq default / PGSSLMODE
``false`` / ``null``                                   ``sslmode=disable``
``"no-verify"``; ``{rejectUnauthorized: false, ...}``  ``sslmode=require`` (no verification)
``true``; ``{require: true}``; any other object        ``sslmode=verify-full``
``{ca: "PEM" | [PEM...] | Buffer}``                    ``sslrootcert=<private file>``
no ``ca``                                              ``sslrootcert`` = the system CA bundle
                                                       (+ ``NODE_EXTRA_CA_CERTS`` when set)
``checkServerIdentity: () => undefined``               ``sslmode=verify-ca``
``cert`` / ``key`` / ``passphrase``                    ``sslcert`` / ``sslkey`` / ``sslpassword``
``minVersion`` / ``maxVersion``                        ``ssl_min/max_protocol_version``
verifying with an IP-address ``host``                  ``host=localhost hostaddr=<ip>``
=====================================================  ==================================

The last row is pg's quirk, measured: for an IP host pg passes no ``servername`` to
``tls.connect``, so node checks the certificate against the name ``localhost``.

PEM text is written to content-addressed 0600 files in a 0700 directory
``$TMPDIR/migrunner-<uid>/``; concurrent runners share them safely and nothing is left to
clean up per run. ``dialectOptions.options``, ``statement_timeout``, ``lock_timeout``,
``idle_in_transaction_session_timeout`` map to libpq ``options`` (``-c name=value``),
``connectionTimeoutMillis`` to ``connect_timeout``, ``client_encoding`` as is.
``application_name`` is left out: migrunner names its own sessions for DBAs.

Evaluating a JS config costs one ``node`` start (~25 ms for rc + config on node 20, measured;
a JSON config without an rc costs no node at all): :func:`start_loading` returns right after
``Popen`` (~0.3 ms), so the CLI overlaps node with its own imports.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from migrations_compat.config_job import absolute as _absolute
from migrations_compat.config_job import default_config_file
from migrations_compat.config_job import job as config_job
from migrations_compat.node_session import NodeSession, claim_config
from migrations_compat.node_session import discard as discard_session
from runner.errors import ConfigError

SHIM = Path(__file__).resolve().parent / "shim" / "load-config.js"
DEFAULT_TABLE = "SequelizeMeta"
DEFAULT_TIMEOUT = 60.0
SECRET_KEYS = frozenset({"password", "sslpassword"})
# keys of a config entry that describe the connection or migration storage, not the Sequelize
# instance a migration sees (and that may hold secrets): kept out of ``sequelize_options``
_NOT_SEQUELIZE_OPTIONS = frozenset(
    {
        "username",
        "password",
        "database",
        "host",
        "port",
        "url",
        "use_env_variable",
        "protocol",
        "ssl",
        "replication",
        "native",
        "dialectModule",
        "dialectModulePath",
        "migrunner",
    }
)
# any of these at the top of a config means it is one flat entry, not a map of environments
_FLAT_KEYS = frozenset(
    {"dialect", "database", "host", "port", "username", "password", "url", "use_env_variable"}
)
_URL_WITH_PASSWORD = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]*@")


@dataclass(frozen=True)
class ConfigRequest:
    """What the CLI was given. Paths are taken relative to ``cwd``; None means not given.

    ``environ`` is the environment node evaluates the files in (and ``NODE_ENV`` /
    ``use_env_variable`` are read from).
    """

    cwd: Path
    options_path: Path | None = None
    config_path: Path | None = None
    env_name: str | None = None
    url: str | None = None
    migrations_path: Path | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    seeders_path: Path | None = None


@dataclass(frozen=True)
class SeederStorage:
    """Where sequelize-cli's seeders are found and how their runs are recorded."""

    path: Path | None = None  # None: <cwd>/seeders
    storage: str = "none"  # "none" | "sequelize" | "json"
    table: str = "SequelizeData"
    schema: str | None = None
    timestamps: bool = False
    json_path: Path | None = None  # None: <cwd>/sequelize-data.json


@dataclass(frozen=True, repr=False)
class AppConfig:
    """The connection and storage settings an app's Sequelize config selects.

    ``conninfo`` holds libpq keywords (only those the config sets). It is empty when the app has
    a ``.sequelizerc`` but no config file at all: the caller then falls back to
    ``DATABASE_URL`` / ``DB_*``. ``source`` names the file and environment for messages.
    """

    conninfo: dict[str, str]
    source: str
    storage_table: str = DEFAULT_TABLE
    storage_schema: str | None = None
    timestamps: bool = False
    migrations_path: Path | None = None
    sequelize_options: dict[str, Any] = field(default_factory=dict)
    non_transactional: frozenset[str] = frozenset()
    config_path: Path | None = None
    env_name: str | None = None
    seeders: SeederStorage = field(default_factory=lambda: SeederStorage())

    def __repr__(self) -> str:
        shown = {k: ("*****" if k in SECRET_KEYS else v) for k, v in self.conninfo.items()}
        return (
            f"AppConfig(source={self.source!r}, conninfo={shown!r}, "
            f"storage_table={self.storage_table!r}, storage_schema={self.storage_schema!r}, "
            f"timestamps={self.timestamps!r}, migrations_path={self.migrations_path!r}, "
            f"non_transactional={sorted(self.non_transactional)!r}, "
            f"config_path={self.config_path!r}, env_name={self.env_name!r})"
        )

    __str__ = __repr__


@dataclass(frozen=True)
class Loaded:
    """What was read from disk (by node or by Python), before any sequelize-cli rule applies."""

    rc: Mapping[str, Any] | None = None
    rc_path: Path | None = None
    config_path: Path | None = None
    config_exists: bool = False
    config: Any = None
    node_env: str | None = None
    env_vars: Mapping[str, str] | None = None  # use_env_variable values as node saw them
    from_node: bool = False  # NODE_ENV and variables come from node (after dotenv & co. ran)


# --------------------------------------------------------------------------------------------
# Loading (I/O at the edge)


class ConfigLoad:
    """A config being loaded; :meth:`result` waits for node (if any) and applies the rules."""

    def __init__(
        self,
        req: ConfigRequest,
        *,
        proc: subprocess.Popen[bytes] | None = None,
        session: NodeSession | None = None,
        loaded: Loaded | None = None,
        error: ConfigError | None = None,
        what: str = "",
    ) -> None:
        self._req = req
        self._proc = proc
        self._session = session
        self._loaded = loaded
        self._error = error
        self._what = what
        self._done = False
        self._result: AppConfig | None = None

    def result(self, timeout: float = DEFAULT_TIMEOUT) -> AppConfig | None:
        if not self._done:
            try:
                self._result = self._finish(timeout)
            except ConfigError as err:
                self._error = err
            self._done = True
        if self._error is not None:
            raise self._error
        return self._result

    def _finish(self, timeout: float) -> AppConfig | None:
        if self._error is not None:
            raise self._error
        if self._proc is not None:
            self._loaded = _read_node(self._proc, self._req, self._what, timeout)
        elif self._session is not None:
            self._loaded = _read_session(self._session, self._req, self._what, timeout)
        if self._loaded is None:
            return None
        return resolve(self._loaded, self._req)


def start_loading(req: ConfigRequest) -> ConfigLoad:
    """Start reading the app's config; returns right after starting node when one is needed."""
    try:
        return _start(req)
    except ConfigError as err:
        return ConfigLoad(req, error=err)


def load_app_config(req: ConfigRequest, timeout: float = DEFAULT_TIMEOUT) -> AppConfig | None:
    """The blocking form of :func:`start_loading`. None when the app has no config at all."""
    return start_loading(req).result(timeout)


def _start(req: ConfigRequest) -> ConfigLoad:
    cwd = req.cwd
    rc_path = absolute(req.options_path, cwd) if req.options_path else cwd / ".sequelizerc"
    if req.options_path is not None and not rc_path.exists():
        raise ConfigError(f"--options-path {rel(rc_path, cwd)}: no such file")
    if rc_path.exists():
        # the rc is JavaScript and decides which config file to read: one node does both
        given = absolute(req.config_path, cwd) if req.config_path else None
        return _spawn(req, rc_path, given, rel(rc_path, cwd))
    if req.url:
        return ConfigLoad(req, loaded=Loaded())
    if req.config_path is not None:
        config_path = absolute(req.config_path, cwd)
    else:
        config_path = default_config_path(cwd)
        if not readable(config_path):
            return ConfigLoad(req, loaded=None)
    if not readable(config_path):
        raise ConfigError(f"config file {rel(config_path, cwd)} not found")
    if config_path.name.endswith(".json"):
        return ConfigLoad(req, loaded=_read_json(config_path, cwd))
    return _spawn(req, None, config_path, rel(config_path, cwd))


def default_config_path(cwd: Path) -> Path:
    """sequelize-cli's default: ``config/config.js`` when readable, else ``config/config.json``."""
    return Path(default_config_file(cwd))


def readable(path: Path) -> bool:
    return os.access(path, os.R_OK)


def absolute(path: Path, cwd: Path) -> Path:
    return Path(_absolute(path, cwd))


def rel(path: Path, cwd: Path) -> str:
    """``path`` as sequelize-cli prints it (relative to the cwd when inside it)."""
    try:
        r = os.path.relpath(path, cwd)
    except ValueError:
        return str(path)
    return str(path) if r.startswith("..") else r


def _read_json(path: Path, cwd: Path) -> Loaded:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"cannot read config {rel(path, cwd)}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"cannot load config {rel(path, cwd)}:{exc.lineno}: invalid JSON: {exc.msg}"
        ) from None
    return Loaded(config_path=path, config_exists=True, config=data)


def node_binary(environ: Mapping[str, str]) -> str | None:
    from migrations_compat.node_runtime import find_node  # PATH, else the [node] extra's

    return find_node(environ)


def _spawn(
    req: ConfigRequest, rc_path: Path | None, config_path: Path | None, what: str
) -> ConfigLoad:
    node = node_binary(req.environ)
    if node is None:
        raise ConfigError(f"node is needed to evaluate {what} (JavaScript) but is not on PATH")
    job = config_job(req.cwd, rc_path, config_path, req.url)
    # the run's node, started before Python's imports, when it evaluates these very files
    session = claim_config(node, job)
    if session is not None:
        return ConfigLoad(req, session=session, what=what)
    try:
        proc = subprocess.Popen(
            [node, str(SHIM), job.request()],
            cwd=req.cwd,
            env=dict(req.environ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except OSError as exc:
        raise ConfigError(f"cannot start node to evaluate {what}: {exc.strerror}") from None
    return ConfigLoad(req, proc=proc, what=what)


def _read_node(
    proc: subprocess.Popen[bytes], req: ConfigRequest, what: str, timeout: float
) -> Loaded:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ConfigError(
            f"evaluating {what} with node did not finish within {timeout:g}s"
        ) from None
    lines = [ln for ln in out.decode("utf-8", "replace").splitlines() if ln.strip()]
    try:
        doc = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        doc = None
    return _loaded_from(doc, req, what, proc.returncode)


def _read_session(session: NodeSession, req: ConfigRequest, what: str, timeout: float) -> Loaded:
    try:
        doc = session.config_answer(timeout)
    except TimeoutError:
        discard_session()
        raise ConfigError(
            f"evaluating {what} with node did not finish within {timeout:g}s"
        ) from None
    return _loaded_from(doc, req, what, session.returncode)


def _loaded_from(doc: Any, req: ConfigRequest, what: str, returncode: int | None) -> Loaded:
    """node's answer (``shim/config-eval.js``) as :class:`Loaded`; errors as one line."""
    if not isinstance(doc, dict):
        raise ConfigError(f"evaluating {what} with node failed (exit code {returncode})")
    if not doc.get("ok"):
        raise ConfigError(node_error_message(doc.get("error") or {}, req.cwd))
    config_path = doc.get("configPath")
    env_vars = doc.get("envVars")
    return Loaded(
        rc=doc.get("rc") if isinstance(doc.get("rc"), dict) else None,
        rc_path=absolute(req.options_path, req.cwd)
        if req.options_path
        else req.cwd / ".sequelizerc",
        config_path=Path(config_path) if config_path else None,
        config_exists=bool(doc.get("configExists")),
        config=doc.get("config"),
        node_env=doc.get("nodeEnv"),
        env_vars=env_vars if isinstance(env_vars, dict) else {},
        from_node=True,
    )


def node_error_message(err: Mapping[str, Any], cwd: Path) -> str:
    """One line naming the file (and line) that failed; URLs in the message lose passwords."""
    file = err.get("file")
    line = err.get("line")
    where = rel(Path(file), cwd) if file else "?"
    if line:
        where += f":{line}"
    kind = "cannot load .sequelizerc" if err.get("phase") == "rc" else "cannot load config"
    name = str(err.get("name") or "Error")
    message = redact_urls(str(err.get("message") or ""))
    return f"{kind} {where}: {name}: {message}"


def redact_urls(text: str) -> str:
    return _URL_WITH_PASSWORD.sub(r"\1*****@", text)


# --------------------------------------------------------------------------------------------
# sequelize-cli's rules (pure)


def resolve(loaded: Loaded, req: ConfigRequest) -> AppConfig | None:
    """Apply sequelize-cli's rules to what was loaded; raise ConfigError on anything unusable."""
    cwd = req.cwd
    rc = dict(loaded.rc or {})
    migrations_path = _migrations_path(req, rc)
    url = req.url or _str_or_none(rc.get("url"))
    env_name = req.env_name or _str_or_none(rc.get("env"))
    node_env = loaded.node_env if loaded.from_node else req.environ.get("NODE_ENV")
    env_name = env_name or node_env or "development"
    env_vars = (loaded.env_vars or {}) if loaded.from_node else req.environ

    if url:
        what = "--url" if req.url else ".sequelizerc url"
        raw: Any = parse_db_url(url, what)
        source = what
        config_path = None
    elif loaded.config_exists and loaded.config_path is not None:
        config_path = loaded.config_path
        source = rel(config_path, cwd)
        raw = loaded.config
        if not isinstance(raw, dict):
            raise ConfigError(
                f"config {source} must export an object, a function or a promise for an object"
            )
    elif loaded.config_path is not None and (req.config_path or rc.get("config")):
        raise ConfigError(f"config file {rel(loaded.config_path, cwd)} not found")
    elif loaded.rc_path is not None:
        # a .sequelizerc without a config file: sequelize-cli would stop; migrunner keeps the
        # rc's paths and lets the caller take the database from DATABASE_URL / DB_*
        return AppConfig(
            conninfo={},
            source=f"{rel(loaded.rc_path, cwd)} (no config file)",
            migrations_path=migrations_path,
            env_name=env_name,
            seeders=seeder_storage({}, req, rc, source=""),
        )
    else:
        return None

    entry, used_env = select_environment(raw, env_name, source)
    if used_env:
        source = f"{source} [{env_name}]"
    entry = apply_url(entry, env_vars, source)
    check_dialect(entry, source)
    storage = entry.get("migrationStorage") or "sequelize"
    if storage != "sequelize":
        raise ConfigError(
            f"migrationStorage {storage!r} in {source} is not supported: migrunner records "
            "migrations in the SequelizeMeta table (migrationStorage: 'sequelize', the default)"
        )
    table = entry.get("migrationStorageTableName") or DEFAULT_TABLE
    schema = entry.get("migrationStorageTableSchema") or None
    if not isinstance(table, str) or (schema is not None and not isinstance(schema, str)):
        raise ConfigError(f"migrationStorageTableName/Schema in {source} must be strings")
    return AppConfig(
        conninfo=conninfo_from(entry, req.environ, source),
        source=source,
        storage_table=table,
        storage_schema=schema,
        timestamps=bool(entry.get("migrationTimestamps")),
        migrations_path=migrations_path,
        sequelize_options=sequelize_options(entry),
        non_transactional=non_transactional(entry, source),
        config_path=config_path,
        env_name=env_name,
        seeders=seeder_storage(entry, req, rc, source),
    )


def seeder_storage(
    entry: Mapping[str, Any], req: ConfigRequest, rc: Mapping[str, Any], source: str
) -> SeederStorage:
    """umzug-helper's seeder options (falsy values fall back to the defaults)."""
    path = req.seeders_path or rc.get("seeders-path") or rc.get("seedersPath")
    storage = entry.get("seederStorage") or "none"
    if storage not in ("none", "sequelize", "json"):
        raise ConfigError(
            f"seederStorage {storage!r} in {source} is not supported (none, sequelize or json)"
        )
    table = entry.get("seederStorageTableName") or "SequelizeData"
    schema = entry.get("seederStorageTableSchema") or None
    if not isinstance(table, str) or (schema is not None and not isinstance(schema, str)):
        raise ConfigError(f"seederStorageTableName/Schema in {source} must be strings")
    json_path = entry.get("seederStoragePath")
    return SeederStorage(
        path=absolute(Path(str(path)), req.cwd) if path else None,
        storage=storage,
        table=table,
        schema=schema,
        timestamps=bool(entry.get("seederTimestamps")),
        json_path=absolute(Path(str(json_path)), req.cwd) if json_path else None,
    )


def load_rc_paths(
    cwd: Path, options_path: Path | None, environ: Mapping[str, str]
) -> tuple[Path | None, Path | None]:
    """``(migrations-path, seeders-path)`` from the ``.sequelizerc`` alone, for commands that
    need no database (``migration:generate``, ``seed:generate``); the config is not read."""
    req = ConfigRequest(cwd=cwd, options_path=options_path, url="postgres://", environ=environ)
    loading = start_loading(req)
    loaded = loading._loaded
    if loading._error is not None:
        raise loading._error
    if loading._proc is not None:
        loaded = _read_node(loading._proc, req, loading._what, DEFAULT_TIMEOUT)
    elif loading._session is not None:
        loaded = _read_session(loading._session, req, loading._what, DEFAULT_TIMEOUT)
    rc = dict(loaded.rc or {}) if loaded else {}
    mig = rc.get("migrations-path") or rc.get("migrationsPath")
    seed = rc.get("seeders-path") or rc.get("seedersPath")
    return (
        absolute(Path(str(mig)), cwd) if mig else None,
        absolute(Path(str(seed)), cwd) if seed else None,
    )


def _str_or_none(value: Any) -> str | None:
    return str(value) if value not in (None, "", False) else None


def _migrations_path(req: ConfigRequest, rc: Mapping[str, Any]) -> Path | None:
    """The CLI flag, else the rc's ``migrations-path`` (yargs also accepts ``migrationsPath``)."""
    if req.migrations_path is not None:
        return absolute(req.migrations_path, req.cwd)
    value = rc.get("migrations-path") or rc.get("migrationsPath")
    return absolute(Path(str(value)), req.cwd) if value else None


def select_environment(
    raw: Mapping[str, Any], env: str, source: str
) -> tuple[dict[str, Any], bool]:
    """The entry for ``env``; a flat config (connection keys at the top) is used as is.

    sequelize-cli uses the whole object whenever the environment key is missing; that is only
    meaningful for a flat config, so a map of environments without ``env`` is an error here.
    """
    entry = raw.get(env)
    if entry:
        if not isinstance(entry, dict):
            raise ConfigError(f"environment {env!r} in {source} is not an object")
        return dict(entry), True
    if not raw:
        raise ConfigError(f"config {source} is empty")
    if _FLAT_KEYS.isdisjoint(raw):
        if env in raw:
            raise ConfigError(f"environment {env!r} in {source} is empty")
        envs = [k for k, v in raw.items() if isinstance(v, dict)]
        has = ", ".join(envs) if envs else "none"
        raise ConfigError(f"environment {env!r} not found in {source} (has: {has})")
    return dict(raw), False


def apply_url(entry: Mapping[str, Any], env_vars: Mapping[str, str], source: str) -> dict[str, Any]:
    """``url`` else ``use_env_variable`` overrides the entry's connection fields (lodash merge)."""
    out = dict(entry)
    if entry.get("url"):
        out.update(parse_db_url(str(entry["url"]), f"url in {source}"))
    elif entry.get("use_env_variable"):
        name = str(entry["use_env_variable"])
        value = env_vars.get(name)
        if not value:
            state = "is empty" if value == "" else "is not set"
            raise ConfigError(f"environment variable {name} (use_env_variable in {source}) {state}")
        out.update(parse_db_url(value, f"${name} (use_env_variable in {source})"))
    return out


def parse_db_url(url: str, what: str) -> dict[str, Any]:
    """sequelize-cli's ``parseDbUrl`` (node's legacy ``url.parse``); errors never echo the URL.

    The user info is percent-decoded as a whole and then split at the first ``:``; the path is
    not decoded; a missing port gives ``port: None`` (so 5432, not the config's port).
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ConfigError(f"malformed database url in {what}") from None
    if not parts.scheme or not url.strip()[len(parts.scheme) :].startswith("://"):
        raise ConfigError(f"malformed database url in {what}: expected postgres://...")
    result: dict[str, Any] = {
        "database": parts.path[1:] if parts.path.startswith("/") else parts.path,
        "host": parts.hostname or "",
        "port": str(port) if port is not None else None,
        "protocol": parts.scheme,
        "ssl": "ssl=true" in parts.query,
        "dialect": parts.scheme,
    }
    netloc = parts.netloc
    if "@" in netloc:
        auth = netloc.rpartition("@")[0]
        try:
            decoded = decode_uri_component(auth)
        except ValueError:
            raise ConfigError(f"malformed database url in {what}: bad %-escape") from None
        user, sep, password = decoded.partition(":")
        result["username"] = user
        if sep:
            result["password"] = password
    return result


def decode_uri_component(text: str) -> str:
    """JavaScript's ``decodeURIComponent``: strict about malformed ``%`` escapes."""
    if re.search(r"%(?![0-9A-Fa-f]{2})", text):
        raise ValueError("malformed escape")
    return unquote(text, errors="strict")


def check_dialect(entry: Mapping[str, Any], source: str) -> None:
    dialect = entry.get("dialect")
    if not dialect:
        raise ConfigError(f"no dialect in {source}: set dialect: 'postgres'")
    if dialect not in ("postgres", "postgresql"):
        raise ConfigError(
            f"dialect {dialect!r} in {source} is not supported: migrunner runs PostgreSQL only"
        )


def conninfo_from(
    entry: Mapping[str, Any], environ: Mapping[str, str], source: str
) -> dict[str, str]:
    """libpq keywords for the connection sequelize 6 + pg 8 would open for ``entry``."""
    fields = dict(entry)
    replication = entry.get("replication")
    write = replication.get("write") if isinstance(replication, dict) else None
    if isinstance(write, dict):
        fields.update({k: v for k, v in write.items() if v is not None})
    out: dict[str, str] = {
        "host": str(fields.get("host") or "localhost"),
        "port": str(fields.get("port") or 5432),
    }
    if fields.get("database"):
        out["dbname"] = str(fields["database"])
    if fields.get("username"):
        out["user"] = str(fields["username"])
    if fields.get("password"):
        out["password"] = str(fields["password"])
    dialect_options = entry.get("dialectOptions")
    if isinstance(dialect_options, dict):
        out.update(dialect_conninfo(dialect_options, source))
        if "ssl" in dialect_options:
            out.update(materialize(ssl_params(dialect_options["ssl"], source), environ))
    if out.get("sslmode") == "verify-full" and _is_ip(out["host"]):
        # pg gives node's TLS no server name for an IP host, so node checks the certificate
        # against "localhost"; libpq does the same when told to dial the IP as "localhost"
        out["hostaddr"] = out["host"]
        out["host"] = "localhost"
        out["sslsni"] = "0"
    return out


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def dialect_conninfo(options: Mapping[str, Any], source: str) -> dict[str, str]:
    """The non-TLS ``dialectOptions`` sequelize passes to pg, as libpq keywords."""
    out: dict[str, str] = {}
    startup: list[str] = []
    if options.get("options"):
        startup.append(str(options["options"]))
    for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout"):
        value = options.get(name)
        if value not in (None, False, ""):
            startup.append(f"-c {name}={_options_escape(str(value))}")
    if startup:
        out["options"] = " ".join(startup)
    millis = options.get("connectionTimeoutMillis")
    if isinstance(millis, int | float) and millis > 0:
        out["connect_timeout"] = str(max(2, math.ceil(millis / 1000)))
    if options.get("client_encoding"):
        out["client_encoding"] = str(options["client_encoding"])
    return out


def _options_escape(value: str) -> str:
    return re.sub(r"([\\ ])", r"\\\1", value)


@dataclass(frozen=True)
class Pem:
    """PEM text to be written to a private file whose path libpq gets."""

    kind: str  # "ca", "cert", "key"
    text: str


@dataclass(frozen=True)
class DefaultRoots:
    """node's default trust: the system CA bundle, plus ``NODE_EXTRA_CA_CERTS``."""


def ssl_params(ssl: Any, source: str) -> dict[str, str | Pem | DefaultRoots]:
    """``dialectOptions.ssl`` (pg 8 / node tls semantics) as libpq keywords (see module doc)."""
    if ssl is None or ssl is False or ssl == 0 or ssl == "":
        return {"sslmode": "disable"}
    if ssl == "no-verify":
        return {"sslmode": "require"}
    if not isinstance(ssl, dict):
        return {"sslmode": "verify-full", "sslrootcert": DefaultRoots()}
    if ssl.get("pfx"):
        raise ConfigError(f"dialectOptions.ssl.pfx in {source} is not supported: use cert and key")
    out: dict[str, str | Pem | DefaultRoots] = {}
    if ssl.get("rejectUnauthorized") is False:
        out["sslmode"] = "require"
    else:
        out["sslmode"] = "verify-ca" if ssl.get("checkServerIdentity") else "verify-full"
        ca = _pem_text(ssl.get("ca"))
        out["sslrootcert"] = Pem("ca", ca) if ca else DefaultRoots()
    cert = _pem_text(ssl.get("cert"))
    if cert:
        out["sslcert"] = Pem("cert", cert)
    key = _pem_text(ssl.get("key"))
    if key:
        out["sslkey"] = Pem("key", key)
    if ssl.get("passphrase"):
        out["sslpassword"] = str(ssl["passphrase"])
    for node_key, libpq_key in (
        ("minVersion", "ssl_min_protocol_version"),
        ("maxVersion", "ssl_max_protocol_version"),
    ):
        if isinstance(ssl.get(node_key), str):
            out[libpq_key] = ssl[node_key]
    return out


def _pem_text(value: Any) -> str:
    """node accepts a string, a Buffer (the shim sends its text) or an array of them."""
    if isinstance(value, list):
        return "\n".join(_pem_text(v) for v in value if v).strip()
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, dict) and "pem" in value:  # {pem, passphrase} form of `key`
        return str(value["pem"]).strip()
    return ""


def materialize(
    params: Mapping[str, str | Pem | DefaultRoots], environ: Mapping[str, str]
) -> dict[str, str]:
    """Write PEM text to private files and resolve the default roots: libpq wants paths."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, Pem):
            out[key] = str(private_file(value.kind, value.text + "\n"))
        elif isinstance(value, DefaultRoots):
            out[key] = default_roots(environ)
        else:
            out[key] = value
    return out


def default_roots(environ: Mapping[str, str]) -> str:
    """A CA file equivalent to node's default trust (system bundle + NODE_EXTRA_CA_CERTS)."""
    import ssl as _ssl

    paths = _ssl.get_default_verify_paths()
    candidates = [
        environ.get("SSL_CERT_FILE"),
        paths.cafile,
        paths.openssl_cafile,
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ]
    system = next((c for c in candidates if c and os.path.isfile(c)), None)
    extra = environ.get("NODE_EXTRA_CA_CERTS")
    if extra and os.path.isfile(extra):
        parts = [Path(p).read_text(errors="replace") for p in (system, extra) if p]
        return str(private_file("ca", "\n".join(parts)))
    return system or "system"


def private_file(kind: str, text: str) -> Path:
    """A 0600 file holding ``text`` in the per-user 0700 directory, named by its content hash."""
    import hashlib
    import tempfile

    base = Path(tempfile.gettempdir()) / f"migrunner-{os.getuid()}"
    try:
        base.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(base)
    except OSError as exc:
        raise ConfigError(f"cannot create {base} for TLS files: {exc.strerror}") from None
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ConfigError(f"{base} is not a private directory of this user; refusing to use it")
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    target = base / f"{kind}-{digest}.pem"
    if target.exists():
        return target
    fd, tmp = tempfile.mkstemp(dir=base, prefix=f".{kind}-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"cannot write TLS file in {base}: {exc.strerror}") from None
    return target


def sequelize_options(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The entry's Sequelize constructor options, without credentials or connection fields."""
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key in _NOT_SEQUELIZE_OPTIONS or key.startswith(("migration", "seeder")):
            continue
        if key == "dialectOptions" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in ("ssl", "stream")}
        out[key] = value
    if out.get("dialect") == "postgresql":
        out["dialect"] = "postgres"
    return out


def non_transactional(entry: Mapping[str, Any], source: str) -> frozenset[str]:
    """``migrunner.nonTransactional``: migration file names to run outside a transaction."""
    ext = entry.get("migrunner")
    if ext is None:
        return frozenset()
    names = ext.get("nonTransactional", []) if isinstance(ext, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(
            f"migrunner.nonTransactional in {source} must be a list of migration file names"
        )
    return frozenset(names)
