"""The no-op fast path: answer "is anything pending?" through libpq itself, without psycopg.

Why: every pod start is a no-op run, and importing psycopg is the largest part of it
(≈ 75 ms and 0.55 G instructions measured with callgrind: more than everything else a no-op
run does, node's config evaluation aside). Its C library, libpq, loads in ≈ 1 ms through
``ctypes``. So a run first reads SequelizeMeta (and the history's checksums) with a plain
libpq connection; only when something is pending — or anything at all is unusual — does it
import psycopg and take the ordinary path, which reads the state again under the lock.

It is the very libpq psycopg uses (the copy ``psycopg[binary]`` bundles, else the system's
``libpq.so.5``), given the same keywords, so host/port lists, TLS modes, passwords, service
files and ``PG*`` variables behave identically (``connect_timeout`` is capped at 2 s here:
an unreachable host then costs 2 s more before the ordinary path reports it, not a second
full timeout). It handles only success:
a failed connection, an error, a missing libpq or an unexpected answer returns ``None`` and
the ordinary path reports it with its usual messages, retries (53300) and ``--wait`` handling.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from runner.plan import ordered_applied

CONNECTION_OK = 0
PGRES_COMMAND_OK = 1
PGRES_TUPLES_OK = 2


class QuickState(NamedTuple):
    applied: tuple[str, ...]
    checksums: dict[str, str]
    meta_exists: bool
    busy: bool  # the migration lock is held, or another migrunner session is connected
    schema: str  # the storage schema, resolved as the ordinary path resolves it
    history_exists: bool = False
    #: the history's mark and the recorded verifications (runner/verified.py), when asked
    history_mark: str | None = None
    verified: tuple[tuple[str, ...], ...] = ()
    unfinished: tuple[str, ...] = ()  # pool-mode runs never finished, when asked
    checksums_read: bool = True


class Queries(NamedTuple):
    """The ordinary path's own queries for the resolved schema; ``$1`` is the storage table."""

    applied: str
    checksums: str
    history_mark: str | None = None
    verified_rows: str | None = None
    unfinished: str | None = None
    record_verified: tuple[str, str] | None = None  # $1 storage, $2..$4 the marks
    create_verified: str | None = None  # when missing: created before recording


class Verify(NamedTuple):
    """Skip the checksums when a recorded verification covers the folder: ``covered(state)``
    says so from the first read; otherwise the checksums are read, and ``record(state)``
    (after the caller verified in full) returns (folder, applied, history) to record, or
    None. Both run while the connection is open."""

    covered: Callable[[QuickState], bool]
    record: Callable[[QuickState], tuple[str, str, str] | None]


_lib: Any = None
_tried = False


def libpq() -> Any:
    """The libpq shared library with the few signatures used here, or None."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("MIGRUNNER_NO_QUICKREAD"):
        return None
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        vp, cp = ctypes.c_void_p, ctypes.c_char_p
        for name, res, args in (
            ("PQconnectdb", vp, [cp]),
            ("PQstatus", ctypes.c_int, [vp]),
            ("PQfinish", None, [vp]),
            (
                "PQexecParams",
                vp,
                [vp, cp, ctypes.c_int, vp, ctypes.POINTER(cp), vp, vp, ctypes.c_int],
            ),
            ("PQresultStatus", ctypes.c_int, [vp]),
            ("PQntuples", ctypes.c_int, [vp]),
            ("PQnfields", ctypes.c_int, [vp]),
            ("PQgetvalue", vp, [vp, ctypes.c_int, ctypes.c_int]),
            ("PQgetlength", ctypes.c_int, [vp, ctypes.c_int, ctypes.c_int]),
            ("PQgetisnull", ctypes.c_int, [vp, ctypes.c_int, ctypes.c_int]),
            ("PQclear", None, [vp]),
            ("PQconninfoParse", vp, [cp, ctypes.POINTER(cp)]),
            ("PQconninfoFree", None, [vp]),
            ("PQfreemem", None, [vp]),
        ):
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
        _lib = lib
        return lib
    return None


def _candidates() -> list[str]:
    """psycopg[binary]'s bundled libpq first (what psycopg would load), then the system's."""
    import importlib.util

    out: list[str] = []
    spec = importlib.util.find_spec("psycopg_binary")  # locates without importing it
    if spec and spec.submodule_search_locations:
        libs = os.path.join(
            os.path.dirname(next(iter(spec.submodule_search_locations))), "psycopg_binary.libs"
        )
        with contextlib.suppress(OSError):
            out += sorted(os.path.join(libs, n) for n in os.listdir(libs) if n.startswith("libpq"))
    out.append("libpq.so.5")
    return out


class _Option(ctypes.Structure):
    _fields_ = [
        ("keyword", ctypes.c_char_p),
        ("envvar", ctypes.c_char_p),
        ("compiled", ctypes.c_char_p),
        ("val", ctypes.c_char_p),
        ("label", ctypes.c_char_p),
        ("dispchar", ctypes.c_char_p),
        ("dispsize", ctypes.c_int),
    ]


def parse_conninfo(conninfo: str) -> dict[str, str] | None:
    """libpq's ``PQconninfoParse`` (what psycopg's ``conninfo_to_dict`` calls): keywords with
    a value. None when libpq is missing or rejects the string (psycopg then says why)."""
    lib = libpq()
    if lib is None:
        return None
    err = ctypes.c_char_p()
    opts = lib.PQconninfoParse(conninfo.encode(), ctypes.byref(err))
    if err:
        lib.PQfreemem(err)
    if not opts:
        return None
    try:
        out: dict[str, str] = {}
        arr = ctypes.cast(opts, ctypes.POINTER(_Option))
        i = 0
        while arr[i].keyword is not None:
            if arr[i].val is not None:
                out[arr[i].keyword.decode()] = arr[i].val.decode()
            i += 1
        return out
    finally:
        lib.PQconninfoFree(opts)


def conninfo_string(params: Mapping[str, str]) -> bytes:
    """libpq's ``key='value'`` form (quotes and backslashes escaped)."""

    def q(v: str) -> str:
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{k}={q(str(v))}" for k, v in params.items()).encode()


def query(
    lib: Any, conn: int, sql: str, params: Sequence[str | None] = ()
) -> list[list[str | None]]:
    """Rows of one statement as text; raises LookupError on any failure."""
    arr = (ctypes.c_char_p * max(len(params), 1))(
        *[None if p is None else p.encode() for p in params]
    )
    res = lib.PQexecParams(conn, sql.encode(), len(params), None, arr, None, None, 0)
    if not res:
        raise LookupError("no result")
    try:
        if lib.PQresultStatus(res) != PGRES_TUPLES_OK:
            raise LookupError("query failed")
        nrows, ncols = lib.PQntuples(res), lib.PQnfields(res)
        rows: list[list[str | None]] = []
        for r in range(nrows):
            row: list[str | None] = []
            for c in range(ncols):
                if lib.PQgetisnull(res, r, c):
                    row.append(None)
                else:
                    raw = ctypes.string_at(lib.PQgetvalue(res, r, c), lib.PQgetlength(res, r, c))
                    row.append(raw.decode())
            rows.append(row)
        return rows
    finally:
        lib.PQclear(res)


def command(lib: Any, conn: int, sql: str, params: Sequence[str | None]) -> bool:
    """Run one statement whose result is not needed; whether it succeeded."""
    arr = (ctypes.c_char_p * max(len(params), 1))(
        *[None if p is None else p.encode() for p in params]
    )
    res = lib.PQexecParams(conn, sql.encode(), len(params), None, arr, None, None, 0)
    if not res:
        return False
    try:
        return bool(lib.PQresultStatus(res) in (PGRES_COMMAND_OK, PGRES_TUPLES_OK))
    finally:
        lib.PQclear(res)


#: the recording of a verification waits at most this long for a lock or for the server
BOUNDED = (
    "SELECT pg_catalog.set_config('lock_timeout', '1s', false), "
    "pg_catalog.set_config('statement_timeout', '5s', false)"
)


def read_state(
    conninfo: Mapping[str, str],
    table: str,
    history_table: str,
    schema: str | None,
    queries: Callable[[str], Queries | tuple[str, str]],
    storage: str,
    lock_ids: tuple[int, int] = (0, 0),
    verified_table: str | None = None,
    verify: Verify | None = None,
) -> QuickState | None:
    """The state, or None to take the ordinary path: two statements (the second only when
    SequelizeMeta exists) built from the ordinary path's own queries. ``busy`` (the migration
    lock, ``lock_ids`` = its pg_locks classid/objid, is held or another migrunner session is
    connected) tells whether node may be booted before the lock is taken.

    With ``verify`` (and ``verified_table`` existing), the second statement reads the
    history's mark and the recorded verifications instead of the checksums; only when none
    covers the folder does a third read names, checksums and mark again (one snapshot, so
    what is verified and what is recorded agree), and the verification is then recorded."""
    lib = libpq()
    if lib is None:
        return None
    params = dict(conninfo)
    params["client_encoding"] = "UTF8"
    # an unreachable host must not cost the full timeout twice (here, then the ordinary path)
    timeout = str(params.get("connect_timeout") or "0")
    if not timeout.isdigit() or timeout == "0" or int(timeout) > 2:
        params["connect_timeout"] = "2"
    conn = lib.PQconnectdb(conninfo_string(params))
    if not conn:
        return None
    try:
        if lib.PQstatus(conn) != CONNECTION_OK:
            return None
        classid, objid = (int(x) for x in lock_ids)
        # the storage schema as the ordinary path resolves it (--schema, else current_schema())
        ((resolved, meta_exists, history_exists, verified_exists, busy),) = query(
            lib,
            conn,
            "SELECT x.s, pg_catalog.to_regclass(pg_catalog.format('%I.%I', x.s, $1::text)) "
            "IS NOT NULL, pg_catalog.to_regclass(pg_catalog.format('%I.%I', x.s, $2::text)) "
            "IS NOT NULL, pg_catalog.to_regclass(pg_catalog.format('%I.%I', x.s, $4::text)) "
            "IS NOT NULL, "
            "EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
            f"AND classid = {classid}::oid AND objid = {objid}::oid AND objsubid = 1 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) "
            "OR EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND datname = current_database() AND application_name LIKE 'migrunner/%') "
            "FROM (SELECT coalesce($3::text, pg_catalog.current_schema()) AS s) x",
            (table, history_table, schema, verified_table or history_table),
        )
        if resolved is None:
            return None  # the ordinary path says why (no schema to keep SequelizeMeta in)
        got_q = queries(resolved)
        q = got_q if isinstance(got_q, Queries) else Queries(*got_q)
        has_history = history_exists == "t"
        if meta_exists != "t":
            if has_history and q.unfinished:
                return None  # history without SequelizeMeta: rare, the ordinary path lists it
            return QuickState((), {}, False, busy == "t", resolved, has_history)
        import json

        def read(with_checksums: bool, with_rows: bool) -> QuickState:
            # one value per list: a ctypes call per row and column would cost more than psycopg
            # unsorted: the server's sort by collation costs more than the whole json_agg
            cols = [f"SELECT coalesce(json_agg(s.name), '[]') FROM ({q.applied}) s"]
            if has_history:
                if with_checksums:
                    cols.append(
                        "SELECT coalesce(json_object_agg(c.name, c.checksum), '{}') "
                        f"FROM ({q.checksums}) c WHERE c.checksum IS NOT NULL"
                    )
                if q.history_mark:
                    cols.append(q.history_mark)
                if q.unfinished:
                    cols.append(f"SELECT coalesce(json_agg(u.name), '[]') FROM ({q.unfinished}) u")
                if with_rows and q.verified_rows:
                    cols.append(q.verified_rows)
            sql = "SELECT " + ", ".join(f"({c})" for c in cols)
            ((applied_json, *rest),) = query(lib, conn, sql, (storage,) if has_history else ())
            names = json.loads(applied_json or "[]")
            if not all(isinstance(n, str) for n in names):
                raise ValueError("unexpected SequelizeMeta names")
            applied = tuple(ordered_applied(names))  # run order
            checksums: dict[str, str] = {}
            mark = unfinished = rows = None
            if has_history:
                if with_checksums:
                    checksums = json.loads(rest.pop(0) or "{}") if applied else {}
                    if not isinstance(checksums, dict):
                        raise ValueError("unexpected checksums")
                if q.history_mark:
                    mark = rest.pop(0)
                if q.unfinished:
                    unfinished = json.loads(rest.pop(0) or "[]")
                if with_rows and q.verified_rows:
                    rows = json.loads(rest.pop(0) or "[]")
            return QuickState(
                applied,
                checksums,
                True,
                busy == "t",
                resolved,
                has_history,
                mark,
                tuple(tuple(r) for r in rows or ()),
                tuple(unfinished or ()),
                with_checksums or not has_history,
            )

        if verify is None or not has_history:
            return read(True, False)
        if verified_exists == "t":
            got = read(False, True)
            if verify.covered(got):
                return got
            got = read(True, False)  # names, checksums and mark of one snapshot
        else:
            got = read(True, False)
            verify.covered(got)  # (it is not: nothing was recorded yet)
        marks = verify.record(got)
        if marks is not None and q.record_verified is not None:
            steps = list(q.record_verified)
            if verified_exists != "t" and q.create_verified:
                steps.insert(0, q.create_verified)
            # never wait long for a lock here: it is only a shortcut for the next run
            steps.insert(0, BOUNDED)
            for sql in steps:  # best effort: read-only users, standbys...
                if not command(lib, conn, sql, (storage, *marks) if "$1" in sql else ()):
                    break
        return got
    except (LookupError, UnicodeDecodeError, ValueError):
        return None
    finally:
        lib.PQfinish(conn)
