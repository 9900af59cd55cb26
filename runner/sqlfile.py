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

Read as dbmate reads it:

* a section's statements are split only when that section is about to run, so a syntax error
  in a ``-- migrate:down`` section never blocks ``up`` (dbmate reads a down section only to roll
  back); the headers themselves are checked for every file;
* header options are ``key:value`` words; ``transaction:false`` is the only one with a meaning,
  anything else (a typo, another tool's option) is ignored with a notice, as dbmate ignores it.

A Sequelize v7 folder migration (``NAME/up.sql`` and ``NAME/down.sql``) holds plain SQL: each
file is one section, without headers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import SourceError

HEADER = re.compile(r"^--\s*migrate:(\w+)(.*)$")
MAX_BYTES = 64 * 1024 * 1024  # a bigger "migration" is a data load: use psql or COPY


@dataclass(frozen=True)
class Statement:
    sql: str
    line: int  # 1-based line of the statement's first character in the file
    file: Path | None = field(default=None, compare=False)  # set when not the migration's path


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
class RawSection:
    """A section found by its header; its body is split into statements on first use."""

    direction: str
    declared: bool | None
    body: str
    first_line: int  # file line of the body's first line
    header_line: int
    file: Path


class SqlMigration:
    """A parsed `.sql` migration: ``up`` and ``down`` sections, split lazily."""

    def __init__(
        self, path: Path, raw: dict[str, RawSection], notices: tuple[str, ...] = ()
    ) -> None:
        self.path = path
        self.raw = raw
        self.notices = notices
        self._split: dict[str, Section] = {}

    def section(self, direction: str) -> Section | None:
        if direction not in self.raw:
            return None
        if direction not in self._split:
            r = self.raw[direction]
            stmts = split_statements(r.file, r.body, first_line=r.first_line)
            if r.file != self.path:
                stmts = tuple(Statement(st.sql, st.line, r.file) for st in stmts)
            self._split[direction] = Section(direction, r.declared, stmts, r.header_line)
        return self._split[direction]

    @property
    def up(self) -> Section:
        section = self.section("up")
        assert section is not None
        return section

    @property
    def down(self) -> Section | None:
        return self.section("down")


def decode(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SourceError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None
    return text.removeprefix("\ufeff")


def parse_options(path: Path, line: int, rest: str, notices: list[str]) -> bool | None:
    """The section's declared transaction mode; None when it declares none.

    dbmate's rule: whitespace-separated ``key:value`` words; only ``transaction:false`` turns
    the transaction off. Every other word is ignored, with a notice naming file and line.
    """
    transactional: bool | None = None
    for opt in rest.split():
        key, _, value = opt.partition(":")
        if key == "transaction" and value in ("true", "false"):
            transactional = value == "true"
        else:
            notices.append(
                f"{path}:{line}: ignoring unknown section option {opt!r} "
                "(migrunner and dbmate know only transaction:false)"
            )
    return transactional


def read_limited(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SourceError(
                f"{path}: {size / 2**20:.0f} MiB is too large for a SQL migration "
                f"(limit {MAX_BYTES // 2**20} MiB); load bulk data with COPY or psql"
            )
        return path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read migration file: {exc.strerror}") from None


def parse_folder_migration(folder: Path) -> SqlMigration:
    """Sequelize v7's form: ``folder/up.sql`` and optional ``folder/down.sql``, plain SQL."""
    raw: dict[str, RawSection] = {}
    for direction in ("up", "down"):
        file = folder / f"{direction}.sql"
        if direction == "down" and not file.exists():
            continue
        text = decode(file, read_limited(file))
        raw[direction] = RawSection(direction, None, text, 1, 1, file)
    return SqlMigration(folder, raw)


def parse_sql_migration(path: Path, data: bytes | None = None) -> SqlMigration:
    """Parse a `.sql` migration's headers; every problem is a SourceError naming file and
    line. Statements are split when a section is first used (:meth:`SqlMigration.section`)."""
    if data is None:
        if path.is_dir():
            return parse_folder_migration(path)
        data = read_limited(path)
    text = decode(path, data)
    lines = text.splitlines(keepends=True)
    notices: list[str] = []
    headers: list[tuple[int, str, bool | None]] = []  # (line index, direction, transactional)
    for i, raw_line in enumerate(lines):
        m = HEADER.match(raw_line.rstrip("\r\n"))
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
        headers.append((i, direction, parse_options(path, i + 1, m.group(2), notices)))
    if not headers or headers[0][1] != "up":
        raise SourceError(
            f"{path}:1: a SQL migration must start with a '-- migrate:up' section"
            + (" (found migrate:down first)" if headers else "")
        )
    preamble = "".join(lines[: headers[0][0]])
    if strip_comments(preamble).strip():
        raise SourceError(f"{path}:1: SQL before the '-- migrate:up' header")
    raw: dict[str, RawSection] = {}
    for n, (idx, direction, transactional) in enumerate(headers):
        end = headers[n + 1][0] if n + 1 < len(headers) else len(lines)
        body = "".join(lines[idx + 1 : end])
        raw[direction] = RawSection(direction, transactional, body, idx + 2, idx + 1, path)
    return SqlMigration(path, raw, tuple(notices))


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
