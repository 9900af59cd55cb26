"""Settings: the typed result of command-line options, environment and the app's config.

Resolution is a pure function (:func:`resolve`) of raw options, an environment mapping and
the loaded Sequelize config, so precedence is unit-tested without processes or databases.

Where the database comes from, first match wins:

1. ``--url`` or a Sequelize config (``--config``, ``.sequelizerc``, ``config/config.js|json``),
   read exactly as sequelize-cli reads them (``migrations_compat.config``);
2. ``DATABASE_URL``;
3. ``DB_HOST`` / ``DB_PORT`` / ``DB_NAME`` / ``DB_USER`` / ``DB_PASSWORD`` (the Job's ConfigMap
   and Secret), with libpq's own ``PG*`` variables and defaults filling the gaps.

``MIGRUNNER_DIRECT_URL`` (or ``--direct-url``) overrides all of these for the migration
connection: use it when the app's URL points at PgBouncer in transaction-pooling mode, where a
session advisory lock is not safe.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import __version__
from runner.errors import ConfigError

DEFAULT_MIGRATIONS_PATH = "migrations"
DEFAULT_TABLE = "SequelizeMeta"
DEFAULT_SETTLE_TIMEOUT = 120.0


@dataclass(frozen=True)
class Identity:
    """Who this runner is, as DBAs see it in ``pg_stat_activity`` and the history table."""

    host: str
    pod: str | None = None
    namespace: str | None = None
    version: str = __version__

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Identity:
        return cls(
            host=environ.get("HOSTNAME") or socket.gethostname(),
            pod=environ.get("POD_NAME") or None,
            namespace=environ.get("POD_NAMESPACE") or None,
        )

    @property
    def pod_ref(self) -> str | None:
        if not self.pod:
            return None
        return f"{self.namespace}/{self.pod}" if self.namespace else self.pod

    @property
    def where(self) -> str:
        """``namespace/pod`` (plus ``@host`` when the host name differs, e.g. a node name),
        else the host name."""
        if self.pod_ref:
            return self.pod_ref if self.host in ("", self.pod) else f"{self.pod_ref}@{self.host}"
        return self.host

    def application_name(self) -> str:
        """``migrunner/<version> <ns/pod or host>``, cut to PostgreSQL's 63 bytes."""
        name = f"migrunner/{self.version} {self.where}"
        return name.encode()[:63].decode("utf-8", "ignore")


@dataclass(frozen=True)
class CliOptions:
    """Raw option values as the CLI received them (None = not given)."""

    url: str | None = None
    direct_url: str | None = None
    config: Path | None = None
    env: str | None = None
    migrations_path: Path | None = None
    options_path: Path | None = None
    table: str | None = None
    schema: str | None = None
    lock_timeout: float | None = None
    statement_lock_timeout: float | None = None
    statement_timeout: float | None = None
    migration_timeout: float | None = None
    retries: int | None = None
    wait_timeout: float | None = None
    log_format: str | None = None
    allow_drift: bool = False
    pool_mode: str | None = None
    strict_await: bool = False
    settle_timeout: float | None = None


@dataclass(frozen=True)
class Settings:
    conninfo: Mapping[str, str] = field(repr=False)
    target: str  # "user@host:port/dbname" — never the password
    migrations_path: Path
    table: str = DEFAULT_TABLE
    schema: str | None = None
    timestamps: bool = False
    lock_timeout: float = 300.0
    statement_lock_timeout: float = 5.0
    statement_timeout: float | None = None
    migration_timeout: float | None = None  # seconds one migration's code may run
    retries: int = 5
    wait_timeout: float = 60.0
    allow_drift: bool = False
    #: "auto": a JS migration atomic mode cannot run faithfully re-runs in pool mode (real
    #: connections, not atomic, as sequelize-cli); "never": it fails instead.
    pool_mode: str = "auto"
    non_transactional: frozenset[str] = frozenset()
    sequelize_options: Mapping[str, Any] = field(default_factory=dict)
    search_dirs: tuple[Path, ...] = ()
    identity: Identity = field(default_factory=lambda: Identity(host="localhost"))
    config_source: str = ""
    config_file: Path | None = None  # the Sequelize config file in use, if any
    env_name: str | None = None  # its environment ("Using environment ...")
    heartbeat: float = 10.0  # seconds between "still running" lines (MIGRUNNER_HEARTBEAT)
    credentials: str = ""  # where the user/password came from, for authentication hints
    app: Any = field(default=None, repr=False, compare=False)  # the AppConfig, when one was read
    #: JS migrations: refuse queries issued after up()/down() resolved instead of running them
    #: in the migration's transaction (with a warning).
    strict_await: bool = False
    #: Seconds to wait, after up()/down() resolved, for the queries nobody awaited to finish.
    settle_timeout: float = DEFAULT_SETTLE_TIMEOUT

    @property
    def password(self) -> str | None:
        return self.conninfo.get("password") or None

    @property
    def own_connection_lock_timeout(self) -> float:
        """lock_timeout of connections a JS migration opens itself: waiting on the runner's
        open transaction, they give up as the runner's statements would, instead of hanging."""
        return max(self.statement_lock_timeout, 1.0)


def credentials_origin(source: str, conninfo: Mapping[str, str], environ: Mapping[str, str]) -> str:
    """Where libpq will take the password from, named for a failed-authentication hint."""
    if conninfo.get("password"):
        return {"DB_* environment": "DB_USER/DB_PASSWORD"}.get(source, source)
    if environ.get("PGPASSWORD"):
        return "PGPASSWORD"
    passfile = conninfo.get("passfile") or environ.get("PGPASSFILE") or "~/.pgpass"
    return f"no password in {source}, PGPASSWORD or {passfile}"


def url_to_conninfo(url: str, what: str) -> dict[str, str]:
    """Parse a postgres URL into libpq keywords; errors never echo the URL (passwords)."""
    if not url.startswith(("postgres://", "postgresql://")):
        scheme = url.split(":", 1)[0] if ":" in url else ""
        raise ConfigError(
            f"malformed database URL ({what}): expected postgres:// or postgresql://"
            + (f", got {scheme}://" if scheme and len(scheme) < 20 else "")
        )
    from runner.dburl import split_dbmate_params

    url = node_userinfo(url)
    libpq_url, extra = split_dbmate_params(url)  # dbmate's ?search_path=, ?socket=
    from runner.quickread import parse_conninfo

    try:
        parsed: dict[str, Any] | None = parse_conninfo(libpq_url)  # libpq, without psycopg
        if parsed is None:
            from psycopg.conninfo import conninfo_to_dict

            parsed = conninfo_to_dict(libpq_url)
    except Exception as exc:
        raise ConfigError(f"malformed database URL ({what}): {redact(str(exc), url)}") from None
    out = {k: str(v) for k, v in parsed.items() if v is not None}
    if extra.get("options") and out.get("options"):
        extra["options"] = out["options"] + " " + extra["options"]
    out.update(extra)
    port = out.get("port", "")
    if port and not all(p.isdigit() for p in port.split(",")):
        raise ConfigError(f"malformed database URL ({what}): port must be a number")
    return out


def node_userinfo(url: str) -> str:
    """Read the user and password as node's ``url.parse`` (and so Sequelize and sequelize-cli)
    does, and percent-encode them for libpq: the authority ends at the first ``/``, ``?`` or
    ``#``, and its LAST ``@`` ends the userinfo, so ``postgresql://app:pa@ss@db/x`` is user
    ``app``, password ``pa@ss``, host ``db`` (libpq alone would take the host ``ss@db``)."""
    from urllib.parse import quote, unquote

    scheme, sep, rest = url.partition("://")
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    host_end = min(ends) if ends else len(rest)
    at = rest.rfind("@", 0, host_end)
    if at < 0 or rest.count("@", 0, at) == 0:
        return url  # zero or one '@': libpq reads it the same way
    user, colon, password = rest[:at].partition(":")
    auth = quote(unquote(user), safe="") + (colon + quote(unquote(password), safe=""))
    return f"{scheme}{sep}{auth}@{rest[at + 1 :]}"


def secret_values(secrets: list[str | None]) -> list[str]:
    """The strings to remove from every output: each secret, and for a URL its password
    (plain and percent-encoded)."""
    from urllib.parse import unquote, urlsplit

    values: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        if "://" not in secret:
            values.add(secret)
            continue
        try:
            pw = urlsplit(node_userinfo(secret)).password
        except ValueError:
            pw = None
        if pw:
            values |= {pw, unquote(pw)}
    return sorted(values)


def redact(text: str, *secrets: str | None) -> str:
    """Remove every secret (and the password part of any URL among them) from ``text``."""
    from urllib.parse import unquote, urlsplit

    out = text
    for secret in secrets:
        if not secret:
            continue
        candidates = {secret}
        if "://" in secret:
            try:
                pw = urlsplit(node_userinfo(secret)).password
            except ValueError:
                pw = None
            if pw:
                plain = unquote(pw)
                # also every piece a wrong parse could have printed (the text after an '@')
                candidates |= {pw, plain, *(p for p in plain.split("@")[1:] if len(p) >= 4)}
        for c in sorted(candidates, key=len, reverse=True):
            if c:
                out = out.replace(c, "***")
    return out


def env_conninfo(environ: Mapping[str, str]) -> dict[str, str]:
    pairs = {
        "host": "DB_HOST",
        "port": "DB_PORT",
        "dbname": "DB_NAME",
        "user": "DB_USER",
        "password": "DB_PASSWORD",
    }
    return {k: environ[v] for k, v in pairs.items() if environ.get(v)}


def describe(conninfo: Mapping[str, str], environ: Mapping[str, str]) -> str:
    host = conninfo.get("hostaddr") or conninfo.get("host") or environ.get("PGHOST") or "localhost"
    port = conninfo.get("port") or environ.get("PGPORT") or "5432"
    user = conninfo.get("user") or environ.get("PGUSER") or ""
    db = conninfo.get("dbname") or environ.get("PGDATABASE") or user
    return f"{user + '@' if user else ''}{host}:{port}/{db}"


def number(
    value: float | int | None, environ: Mapping[str, str], var: str, default: float
) -> float:
    """A duration from an option or its variable: finite and not negative (``nan`` would
    compare false with every deadline and wait forever)."""
    flag = "--" + var.removeprefix("MIGRUNNER_").lower().replace("_", "-")
    if value is not None:
        seconds = float(value)
        source = f"{flag} {value}"
    else:
        raw = environ.get(var)
        if raw is None or raw == "":
            return default
        try:
            seconds = float(raw)
        except ValueError:
            raise ConfigError(f"{var}={raw!r}: expected a number of seconds") from None
        source = f"{var}={raw!r} ({flag})"
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{source}: expected a finite, non-negative number of seconds")
    return seconds


def resolve(
    opts: CliOptions,
    environ: Mapping[str, str],
    app: Any = None,
    cwd: Path | None = None,
) -> Settings:
    """Combine options, environment and the loaded app config (``AppConfig`` or None)."""
    cwd = cwd or Path.cwd()
    direct = opts.direct_url or environ.get("MIGRUNNER_DIRECT_URL")
    if direct:
        conninfo = url_to_conninfo(direct, "--direct-url / MIGRUNNER_DIRECT_URL")
        source = "MIGRUNNER_DIRECT_URL"
    elif app is not None and getattr(app, "conninfo", None):
        conninfo = dict(app.conninfo)
        source = str(getattr(app, "source", "config"))
    elif opts.url:
        conninfo = url_to_conninfo(opts.url, "--url")
        source = "--url"
    elif environ.get("DATABASE_URL"):
        conninfo = url_to_conninfo(environ["DATABASE_URL"], "DATABASE_URL")
        source = "DATABASE_URL"
    else:
        conninfo = env_conninfo(environ)
        source = "DB_* environment"
        if not conninfo and not environ.get("PGDATABASE") and not environ.get("PGHOST"):
            raise ConfigError(
                "no database configured: give --url, DATABASE_URL, a Sequelize config "
                "(--config) or DB_HOST/DB_NAME/DB_USER/DB_PASSWORD"
            )
    conninfo.setdefault("connect_timeout", "10")

    if opts.migrations_path is not None:
        migrations_path = opts.migrations_path
    elif environ.get("MIGRUNNER_MIGRATIONS_PATH"):
        migrations_path = Path(environ["MIGRUNNER_MIGRATIONS_PATH"])
    elif app is not None and getattr(app, "migrations_path", None):
        migrations_path = Path(app.migrations_path)
    else:
        migrations_path = Path(DEFAULT_MIGRATIONS_PATH)
    if not migrations_path.is_absolute():
        migrations_path = cwd / migrations_path

    table = opts.table or (getattr(app, "storage_table", None) if app else None) or DEFAULT_TABLE
    schema = opts.schema or (getattr(app, "storage_schema", None) if app else None) or None
    if schema is None and source in ("MIGRUNNER_DIRECT_URL", "--url", "DATABASE_URL"):
        from runner.dburl import search_path_schema  # dbmate: tables in the path's 1st schema

        schema = search_path_schema(direct or opts.url or environ.get("DATABASE_URL"))
    check_identifier(table, "table")
    if schema is not None:
        check_identifier(schema, "schema")

    log_fmt = opts.log_format or environ.get("MIGRUNNER_LOG_FORMAT") or "text"
    if log_fmt not in ("text", "json"):
        raise ConfigError(f"--log-format {log_fmt!r}: expected text or json")

    config_path = getattr(app, "config_path", None) if app else None
    search_dirs = tuple(
        p for p in (migrations_path, Path(config_path).parent if config_path else None, cwd) if p
    )
    statement_timeout = number(opts.statement_timeout, environ, "MIGRUNNER_STATEMENT_TIMEOUT", 0)
    migration_timeout = number(opts.migration_timeout, environ, "MIGRUNNER_MIGRATION_TIMEOUT", 0)
    settle_timeout = number(
        opts.settle_timeout, environ, "MIGRUNNER_SETTLE_TIMEOUT", DEFAULT_SETTLE_TIMEOUT
    )
    if not settle_timeout > 0:
        raise ConfigError(
            f"--settle-timeout / MIGRUNNER_SETTLE_TIMEOUT {settle_timeout}: expected seconds > 0"
        )
    retries = (
        opts.retries
        if opts.retries is not None
        else int(number(None, environ, "MIGRUNNER_RETRIES", 5))
    )
    pool_mode = opts.pool_mode or environ.get("MIGRUNNER_POOL_MODE") or "auto"
    if pool_mode not in ("auto", "never"):
        raise ConfigError(f"--pool-mode {pool_mode!r}: expected auto or never")
    return Settings(
        pool_mode=pool_mode,
        conninfo=conninfo,
        target=describe(conninfo, environ),
        migrations_path=migrations_path,
        table=table,
        schema=schema,
        timestamps=bool(getattr(app, "timestamps", False)) if app else False,
        lock_timeout=number(opts.lock_timeout, environ, "MIGRUNNER_LOCK_TIMEOUT", 300),
        statement_lock_timeout=number(
            opts.statement_lock_timeout, environ, "MIGRUNNER_STATEMENT_LOCK_TIMEOUT", 5
        ),
        statement_timeout=statement_timeout or None,
        migration_timeout=migration_timeout or None,
        retries=max(0, retries),
        wait_timeout=number(opts.wait_timeout, environ, "MIGRUNNER_WAIT_TIMEOUT", 60),
        allow_drift=opts.allow_drift or environ.get("MIGRUNNER_ALLOW_DRIFT", "") in ("1", "true"),
        non_transactional=frozenset(getattr(app, "non_transactional", ()) or ())
        if app
        else frozenset(),
        sequelize_options=dict(getattr(app, "sequelize_options", {}) or {}) if app else {},
        search_dirs=search_dirs,
        identity=Identity.from_env(environ),
        config_source=source,
        config_file=Path(config_path) if config_path else None,
        env_name=getattr(app, "env_name", None) if app else None,
        heartbeat=max(0.1, number(None, environ, "MIGRUNNER_HEARTBEAT", 10)),
        credentials=credentials_origin(source, conninfo, environ),
        app=app,
        strict_await=opts.strict_await
        or environ.get("MIGRUNNER_STRICT_AWAIT", "") in ("1", "true"),
        settle_timeout=settle_timeout,
    )


def check_identifier(name: str, what: str) -> None:
    """Identifiers are always quoted in SQL; still refuse ones no sane setup uses."""
    if not name or len(name.encode()) > 63 or "\x00" in name:
        raise ConfigError(f"storage {what} name {name!r} is empty, too long or contains NUL")


def wants_config(opts: CliOptions, cwd: Path) -> bool:
    """Whether a Sequelize config source exists, so the loader (and node) is worth starting."""
    return bool(
        opts.config
        or opts.options_path
        or (cwd / ".sequelizerc").exists()
        or (cwd / "config" / "config.js").exists()
        or (cwd / "config" / "config.json").exists()
    )
