"""Parsing `.sql` migrations: the ``-- migrate:up`` / ``-- migrate:down`` sections (dbmate's
format) and their statements with line numbers.

Statements are split with pglast, i.e. PostgreSQL's own grammar (libpg_query), rather than a
hand-written lexer or sqlparse: it is exact for ``$$`` bodies, ``BEGIN ATOMIC`` functions,
nested comments and semicolons in strings, and it reports a syntax error with its position
before anything runs. It costs ~30 MB in the image and ~0.03 s to import, paid only when a
SQL migration is pending. pglast's grammar is a fixed PostgreSQL major (17 for pglast 8); syntax
newer than that is reported as a syntax error — upgrade pglast with the server.

A section header is ``-- migrate:up`` or ``-- migrate:down`` at the start of a line, optionally
followed by ``transaction:false`` (run statement by statement in autocommit, e.g. for
``CREATE INDEX CONCURRENTLY``). Only blank lines and comments may precede ``-- migrate:up``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from runner.errors import SourceError

HEADER = re.compile(r"^--\s*migrate:(\w+)(.*)$")
MAX_BYTES = 64 * 1024 * 1024  # a bigger "migration" is a data load: use psql or COPY


@dataclass(frozen=True)
class Statement:
    sql: str
    line: int  # 1-based line of the statement's first character in the file


@dataclass(frozen=True)
class Section:
    direction: str  # "up" | "down"
    declared: bool | None  # transaction:true/false, or None when not declared
    statements: tuple[Statement, ...]
    line: int  # line of the header

    @property
    def transactional(self) -> bool:
        return self.declared is not False


@dataclass(frozen=True)
class SqlMigration:
    up: Section
    down: Section | None


def decode(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SourceError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None
    return text.removeprefix("\ufeff")


def parse_options(path: Path, line: int, rest: str) -> bool | None:
    """The section's declared transaction mode; None when it declares none."""
    transactional: bool | None = None
    for opt in rest.split():
        key, _, value = opt.partition(":")
        if key == "transaction" and value in ("true", "false"):
            transactional = value == "true"
        else:
            raise SourceError(
                f"{path}:{line}: unknown section option {opt!r} (known: transaction:false)"
            )
    return transactional


def parse_sql_migration(path: Path, data: bytes | None = None) -> SqlMigration:
    """Parse a `.sql` migration file; every problem is a SourceError naming file and line."""
    if data is None:
        try:
            size = path.stat().st_size
            if size > MAX_BYTES:
                raise SourceError(
                    f"{path}: {size / 2**20:.0f} MiB is too large for a SQL migration "
                    f"(limit {MAX_BYTES // 2**20} MiB); load bulk data with COPY or psql"
                )
            data = path.read_bytes()
        except OSError as exc:
            raise SourceError(f"{path}: cannot read migration file: {exc.strerror}") from None
    text = decode(path, data)
    lines = text.splitlines(keepends=True)
    headers: list[tuple[int, str, bool | None]] = []  # (line index, direction, transactional)
    for i, raw in enumerate(lines):
        m = HEADER.match(raw.rstrip("\r\n"))
        if not m:
            continue
        direction = m.group(1)
        if direction not in ("up", "down"):
            raise SourceError(
                f"{path}:{i + 1}: unknown section '-- migrate:{direction}' "
                "(expected migrate:up or migrate:down)"
            )
        if any(h[1] == direction for h in headers):
            raise SourceError(f"{path}:{i + 1}: second '-- migrate:{direction}' section")
        headers.append((i, direction, parse_options(path, i + 1, m.group(2))))
    if not headers or headers[0][1] != "up":
        raise SourceError(
            f"{path}:1: a SQL migration must start with a '-- migrate:up' section"
            + (" (found migrate:down first)" if headers else "")
        )
    preamble = "".join(lines[: headers[0][0]])
    if strip_comments(preamble).strip():
        raise SourceError(f"{path}:1: SQL before the '-- migrate:up' header")
    sections: dict[str, Section] = {}
    for n, (idx, direction, transactional) in enumerate(headers):
        end = headers[n + 1][0] if n + 1 < len(headers) else len(lines)
        body = "".join(lines[idx + 1 : end])
        stmts = split_statements(path, body, first_line=idx + 2)
        sections[direction] = Section(direction, transactional, stmts, idx + 1)
    return SqlMigration(up=sections["up"], down=sections.get("down"))


def strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))


def split_statements(path: Path, body: str, first_line: int) -> tuple[Statement, ...]:
    """Split a section body into statements with the file line each starts on."""
    if not strip_comments(body).strip():
        return ()
    import pglast  # lazy: only paid when a SQL migration is parsed

    try:
        slices = pglast.split(body, with_parser=True, only_slices=True)
    except pglast.parser.ParseError as exc:
        msg, *rest = exc.args
        location = rest[0] if rest and isinstance(rest[0], int) else 0
        line = first_line + body[:location].count("\n")
        raise SourceError(f"{path}:{line}: {msg} [SQLSTATE 42601]") from None
    out = []
    for sl in slices:
        out.append(Statement(body[sl], first_line + body[: sl.start].count("\n")))
    return tuple(out)


def error_line(stmt: Statement, position: int | None) -> int:
    """File line of a server error, from the 1-based character position PostgreSQL reports."""
    if not position:
        return stmt.line
    return stmt.line + stmt.sql[: position - 1].count("\n")
