"""What a JS migration's SQL string contains: the statements the bridge must treat specially.

Sequelize and hand-written migrations send SQL strings that may hold several statements,
transaction control (``BEGIN`` / ``COMMIT`` from ``sequelize.transaction()`` or raw SQL), and
session ``SET``\\ s. Inside the runner's transaction those must become savepoints and
transaction-local settings, so the string has to be understood exactly. pglast (PostgreSQL's own
grammar via libpg_query) does that: dollar quotes, ``BEGIN ATOMIC`` bodies and comments are
handled by the real parser, and ``parse_sql_json`` costs a few microseconds per statement. A
hand-written lexer would misread exactly the function bodies migrations like to contain.

Everything here is pure: no database, no I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pglast import parser as pg_parser

#: Read-only catalog queries and Sequelize's own session set-up (``SET client_min_messages``,
#: ``SET TIME ZONE``): things a reader of a dry-run plan can skip.
LABEL_INTROSPECTION = "introspection"
#: A statement that changes (or reads) the application's schema or data.
LABEL_STATEMENT = "statement"
#: BEGIN / COMMIT / ROLLBACK / SAVEPOINT / RELEASE / SET TRANSACTION issued by the migration.
LABEL_TRANSACTION_CONTROL = "transaction-control"
#: Dry run only: the statement cannot run inside a transaction (SQLSTATE 25001 / 55P04), so it
#: was recorded and skipped; the real run executes it outside a transaction.
LABEL_NON_TRANSACTIONAL = "non-transactional (not executed in dry run)"

#: Settings Sequelize sets on every new connection; labelled as introspection.
SEQUELIZE_SESSION_SETTINGS = frozenset(
    {"client_min_messages", "timezone", "standard_conforming_strings"}
)

_CATALOG_REF = re.compile(r"\b(?:information_schema|pg_catalog)\s*\.|\bpg_[a-z_]+\b", re.I)
_LEADING_NOISE = r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*"
_SET_KEYWORD = re.compile(_LEADING_NOISE + r"SET\s+(?:SESSION\s+(?!AUTHORIZATION\b))?", re.I | re.S)
_SIMPLE_GUC = re.compile(r"^[a-z_][a-z0-9_$]*(?:\.[a-z_][a-z0-9_$]*)*$")


class Kind(Enum):
    """How the bridge treats one statement."""

    PLAIN = "plain"
    BEGIN = "begin"
    COMMIT = "commit"
    ROLLBACK = "rollback"
    SAVEPOINT = "savepoint"
    RELEASE = "release"
    ROLLBACK_TO = "rollback_to"
    SET = "set"  # session-level SET / RESET of one setting
    SET_LOCAL = "set_local"  # already transaction-local (SET LOCAL, SET CONSTRAINTS)
    SET_TRANSACTION = "set_transaction"  # SET TRANSACTION / SESSION CHARACTERISTICS
    RESET_ALL = "reset_all"

    @property
    def is_transaction_control(self) -> bool:
        return self in _TRANSACTION_CONTROL


_TRANSACTION_CONTROL = frozenset(
    {
        Kind.BEGIN,
        Kind.COMMIT,
        Kind.ROLLBACK,
        Kind.SAVEPOINT,
        Kind.RELEASE,
        Kind.ROLLBACK_TO,
        Kind.SET_TRANSACTION,
    }
)


@dataclass(frozen=True)
class Piece:
    """One top-level statement of a SQL string."""

    text: str
    kind: Kind
    guc: str | None = None  # SET / RESET: the setting's name, as PostgreSQL normalises it
    reset: bool = False  # SET: it was RESET / SET ... TO DEFAULT
    savepoint: str | None = None  # SAVEPOINT / RELEASE / ROLLBACK TO: the name
    command: str = ""  # the command tag PostgreSQL reports for it (BEGIN, COMMIT, SET, ...)
    introspection: bool = False
    #: PostgreSQL's grammar accepted it (False: sent as is, for the server to report the error)
    parsed: bool = True
    #: COMMIT / ROLLBACK AND CHAIN: a new transaction with the same characteristics follows
    chain: bool = False

    @property
    def label(self) -> str:
        if self.kind.is_transaction_control:
            return LABEL_TRANSACTION_CONTROL
        return LABEL_INTROSPECTION if self.introspection else LABEL_STATEMENT


def analyze(sql: str) -> list[Piece]:
    """Split ``sql`` into statements and classify each.

    A string pglast cannot parse is returned whole as one plain statement: the server will
    report the syntax error itself, in its own words.
    """
    if "\x00" in sql:  # libpq would cut the text there: let the server see what it gets
        return [Piece(sql, Kind.PLAIN, parsed=False)]
    try:
        tree = json.loads(pg_parser.parse_sql_json(sql))
    except Exception:
        return [Piece(sql, Kind.PLAIN, parsed=False)]
    stmts: list[dict[str, Any]] = tree.get("stmts", [])
    if len(stmts) <= 1:
        node = stmts[0]["stmt"] if stmts else {}
        return [_classify(sql, node)]
    raw = sql.encode("utf-8")
    pieces = []
    for entry in stmts:
        start = entry.get("stmt_location", 0)
        length = entry.get("stmt_len", 0)
        chunk = raw[start : start + length] if length else raw[start:]
        pieces.append(_classify(chunk.decode("utf-8"), entry["stmt"]))
    return pieces


def _classify(text: str, node: dict[str, Any]) -> Piece:
    if not node:
        return Piece(text, Kind.PLAIN)
    (node_type, body), *_ = node.items()
    if node_type == "TransactionStmt":
        return _transaction_piece(text, body)
    if node_type == "VariableSetStmt":
        return _set_piece(text, body)
    if node_type == "ConstraintsSetStmt":
        return Piece(text, Kind.SET_LOCAL, command="SET CONSTRAINTS")
    if node_type == "VariableShowStmt":
        return Piece(text, Kind.PLAIN, introspection=True)
    if node_type == "SelectStmt":
        read_only = "intoClause" not in body and "lockingClause" not in body
        return Piece(text, Kind.PLAIN, introspection=read_only and bool(_CATALOG_REF.search(text)))
    return Piece(text, Kind.PLAIN)


def _transaction_piece(text: str, body: dict[str, Any]) -> Piece:
    kind = body.get("kind", "")
    if kind in ("TRANS_STMT_BEGIN", "TRANS_STMT_START"):
        tag = "BEGIN" if kind == "TRANS_STMT_BEGIN" else "START TRANSACTION"
        return Piece(text, Kind.BEGIN, command=tag)
    if kind == "TRANS_STMT_COMMIT":
        return Piece(text, Kind.COMMIT, command="COMMIT", chain=bool(body.get("chain")))
    if kind == "TRANS_STMT_ROLLBACK":
        return Piece(text, Kind.ROLLBACK, command="ROLLBACK", chain=bool(body.get("chain")))
    if kind == "TRANS_STMT_SAVEPOINT":
        return Piece(
            text, Kind.SAVEPOINT, savepoint=body.get("savepoint_name"), command="SAVEPOINT"
        )
    if kind == "TRANS_STMT_RELEASE":
        return Piece(text, Kind.RELEASE, savepoint=body.get("savepoint_name"), command="RELEASE")
    if kind == "TRANS_STMT_ROLLBACK_TO":
        name = body.get("savepoint_name")
        return Piece(text, Kind.ROLLBACK_TO, savepoint=name, command="ROLLBACK")
    # PREPARE TRANSACTION, COMMIT / ROLLBACK PREPARED: sent as they are; the server refuses
    # them inside the runner's transaction, which is the honest answer.
    return Piece(text, Kind.PLAIN)


def _set_piece(text: str, body: dict[str, Any]) -> Piece:
    kind = body.get("kind", "")
    name = body.get("name")
    if kind == "VAR_SET_MULTI":
        return Piece(text, Kind.SET_TRANSACTION, guc=name, command="SET")
    if kind == "VAR_RESET_ALL":
        return Piece(text, Kind.RESET_ALL, command="RESET")
    reset = kind in ("VAR_RESET", "VAR_SET_DEFAULT")
    command = "RESET" if kind == "VAR_RESET" else "SET"
    sequelize_setup = name in SEQUELIZE_SESSION_SETTINGS
    piece_kind = Kind.SET_LOCAL if body.get("is_local") else Kind.SET
    return Piece(
        text, piece_kind, guc=name, reset=reset, command=command, introspection=sequelize_setup
    )


def make_local(piece: Piece) -> str | None:
    """The transaction-local form of a session ``SET`` / ``RESET``, or None if there is none.

    ``SET x = v`` becomes ``SET LOCAL x = v`` and ``RESET x`` becomes ``SET LOCAL x TO DEFAULT``,
    so the setting ends with the runner's transaction instead of leaking into its session.
    """
    if piece.kind is not Kind.SET or piece.guc is None:
        return None
    if piece.command == "RESET":
        if piece.guc == "role":
            return "SET LOCAL ROLE NONE"
        if piece.guc == "session_authorization":
            return "SET LOCAL SESSION AUTHORIZATION DEFAULT"
        name = (
            piece.guc if _SIMPLE_GUC.match(piece.guc) else '"' + piece.guc.replace('"', '""') + '"'
        )
        return f"SET LOCAL {name} TO DEFAULT"
    match = _SET_KEYWORD.match(piece.text)
    if not match:
        return None
    return piece.text[: match.start()] + "SET LOCAL " + piece.text[match.end() :]


def first_line(sql: str, limit: int = 200) -> str:
    """The first non-blank line of a statement, for one-line error messages."""
    for line in sql.strip().splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""
