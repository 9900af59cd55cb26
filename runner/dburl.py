"""Database URL query parameters that dbmate accepts and libpq does not.

dbmate hands its URL to Go's lib/pq, which sends every query parameter it does not know itself
to the server as a run-time setting (``?search_path=a,b``, ``?statement_timeout=5000``), and
dbmate adds ``?socket=/dir`` as an alias of ``host``. libpq refuses unknown URI parameters
("invalid URI query parameter"), so a ``DATABASE_URL`` written for dbmate would be refused.
Here, before libpq parses the URL:

* ``socket`` becomes ``host`` (a Unix socket directory), as in dbmate;
* lib/pq's client-side switches (``binary_parameters``, ``disable_prepared_binary_result``)
  are dropped: they have no meaning for libpq;
* every other parameter libpq does not know becomes ``-c name=value`` in libpq's ``options``,
  i.e. a setting of every session migrunner opens, exactly what lib/pq does.

``search_path`` is the one dbmate documents: it is the migrations' search path, and dbmate
keeps its ``schema_migrations`` in the FIRST schema of it, creating that schema if missing.
migrunner does the same with its own tables: unless ``--schema`` or
``migrationStorageTableSchema`` says otherwise, ``SequelizeMeta`` and ``migrunner_history``
go to the first schema of the URL's ``search_path`` (created if missing), and the lock key is
derived from it. An unquoted name is folded to lower case, as PostgreSQL reads a search path.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

#: lib/pq-only client switches: accepted for dbmate URLs, meaningless to libpq
LIBPQ_IGNORED = frozenset({"binary_parameters", "disable_prepared_binary_result"})


def libpq_keywords() -> frozenset[str]:
    from psycopg import pq

    return frozenset(d.keyword.decode() for d in pq.Conninfo.get_defaults())


def options_escape(value: str) -> str:
    """libpq's ``options`` splits on spaces; a backslash escapes a space or a backslash."""
    return re.sub(r"([\\ ])", r"\\\1", value)


def split_dbmate_params(url: str) -> tuple[str, dict[str, str]]:
    """The URL with only libpq's parameters left, and the libpq keywords the others become.

    The returned keywords (``host`` from ``socket``, ``options`` with ``-c`` settings) are to be
    merged into what libpq makes of the URL; ``options`` is to be appended to the URL's own.
    """
    if "?" not in url:
        return url, {}
    parts = urlsplit(url)
    if not parts.query:
        return url, {}
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    known = libpq_keywords()
    kept: list[tuple[str, str]] = []
    extra: dict[str, str] = {}
    settings: list[str] = []
    for key, value in pairs:
        if key in known:
            kept.append((key, value))
        elif key == "socket":
            extra["host"] = value
        elif key in LIBPQ_IGNORED:
            continue
        else:
            settings.append(f"-c {key}={options_escape(value)}")
    if not extra and not settings:
        return url, {}
    if settings:
        extra["options"] = " ".join(settings)
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in kept)
    return urlunsplit(parts._replace(query=query)), extra


def search_path_schema(url: str | None) -> str | None:
    """The first schema of a URL's ``?search_path=`` (where dbmate keeps its table), or None."""
    if not url or "search_path" not in url:
        return None
    try:
        query = urlsplit(url).query
    except ValueError:
        return None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "search_path":
            continue
        first = value.split(",")[0].strip()
        if first in ("$user", '"$user"'):
            return None  # the session user's schema: let PostgreSQL resolve it
        if len(first) >= 2 and first.startswith('"') and first.endswith('"'):
            return first[1:-1].replace('""', '"') or None
        return first.lower() or None
    return None
