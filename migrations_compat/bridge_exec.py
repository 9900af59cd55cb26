"""Executes a JS migration's statements on the runner's psycopg connection.

One :class:`StatementExecutor` serves one ``up()``/``down()``. Every Sequelize connection of the
migration shares the runner's single session, so this is where a migration's idea of
transactions is mapped onto the runner's:

* transactional mode, the bridge's *atomic mode* (the runner has done ``BEGIN``): the
  migration's ``BEGIN`` / ``COMMIT`` / ``ROLLBACK`` become ``SAVEPOINT`` / ``RELEASE`` /
  ``ROLLBACK TO``; every other statement runs inside its own savepoint, so an error the
  migration catches (try/catch idempotency) leaves the runner's transaction usable, while a
  statement that fails inside the migration's own transaction marks that transaction aborted,
  as PostgreSQL would; session ``SET``\\ s become ``SET LOCAL`` so nothing leaks past the
  runner's ``COMMIT``. :mod:`migrations_compat.bridge_tracking` records which client and which
  of the migration's transactions owns each statement; when a rollback would discard work
  sequelize-cli keeps, or a transaction asks for an isolation level or access mode the runner's
  transaction does not have, the attempt is *abandoned*: every later query is refused unrun and
  :meth:`NodeBridge.run` raises ``AtomicModeUnavailable``, so the migrator rolls back and re-runs
  the migration at that isolation level or in pool mode (:mod:`migrations_compat.bridge_pool`);
* non-transactional mode: statements run as sent, in autocommit on the runner's one session,
  and session settings the migration changed are restored afterwards. The migrator no longer
  uses it (``useTransaction: false`` and the 25001/55P04 fallback run in pool mode, on real
  connections as sequelize-cli); it stays for callers of the bridge that want one session.

Results are returned as the server's text values plus type OIDs; the JS side parses them with
Sequelize's own type parsers.
"""

from __future__ import annotations

import base64
import contextlib
import re
import select
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq
from psycopg.abc import Buffer
from psycopg.adapt import Loader

from migrations_compat.bridge_sql import (
    LABEL_INTROSPECTION,
    LABEL_NON_TRANSACTIONAL,
    LABEL_STATEMENT,
    LABEL_TRANSACTION_CONTROL,
    Kind,
    Piece,
    analyze,
    first_line,
    make_local,
)
from migrations_compat.bridge_tracking import NotRepresentable, Step, Tracker
from runner.errors import DatabaseUnavailable

#: Savepoint wrapped around each statement in transactional mode.
STATEMENT_SAVEPOINT = "migrunner_stmt"
_WRAP_HEAD = f"SAVEPOINT {STATEMENT_SAVEPOINT};\n"
_WRAP_TAIL = f"\n;RELEASE SAVEPOINT {STATEMENT_SAVEPOINT}"
_UNWRAP = f"ROLLBACK TO SAVEPOINT {STATEMENT_SAVEPOINT}; RELEASE SAVEPOINT {STATEMENT_SAVEPOINT}"

#: SQLSTATEs that mean "this cannot run inside a transaction block". They never happen under
#: sequelize-cli (autocommit), so a migration that met one is re-run outside a transaction even
#: if its code caught the error.
NON_TRANSACTIONAL_SQLSTATES = frozenset({"25001", "55P04"})

_ERROR_FIELDS = {
    "severity": "severity_nonlocalized",
    "detail": "message_detail",
    "hint": "message_hint",
    "position": "statement_position",
    "internalPosition": "internal_position",
    "internalQuery": "internal_query",
    "where": "context",
    "schema": "schema_name",
    "table": "table_name",
    "column": "column_name",
    "dataType": "datatype_name",
    "constraint": "constraint_name",
    "file": "source_file",
    "line": "source_line",
    "routine": "source_function",
}


@dataclass(frozen=True)
class ExecutedStatement:
    """A statement the migration issued, as recorded for logs and dry-run plans."""

    sql: str
    params: tuple[Any, ...] | None
    label: str
    sqlstate: str | None = None  # set when the statement failed
    executed_as: str | None = None  # what was sent instead (SAVEPOINT for BEGIN, SET LOCAL...)


@dataclass(frozen=True)
class StatementError:
    """A failed statement, in the shape of a pg ``DatabaseError``."""

    message: str
    sqlstate: str | None
    sql: str
    fields: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {"message": self.message, "code": self.sqlstate, **self.fields}


@dataclass(frozen=True)
class Abandoned:
    """Why this attempt left atomic mode; ``isolation``: re-run atomically at that level."""

    reason: str
    isolation: str | None = None


@dataclass(frozen=True)
class Characteristics:
    isolation: str | None = None  # lower case, as SHOW transaction_isolation says it
    read_only: bool = False


_ISOLATION = re.compile(
    r"\bISOLATION\s+LEVEL\s+(SERIALIZABLE|REPEATABLE\s+READ|READ\s+COMMITTED|READ\s+UNCOMMITTED)",
    re.I,
)
_READ_ONLY = re.compile(r"\bREAD\s+ONLY\b", re.I)


def requested_characteristics(text: str) -> Characteristics:
    """The isolation level and access mode a BEGIN / SET TRANSACTION asks for."""
    match = _ISOLATION.search(text)
    level = " ".join(match.group(1).lower().split()) if match else None
    return Characteristics(level, bool(_READ_ONLY.search(text)))


class StatementExecutor:
    """Runs one migration's statements; see the module docstring for the two modes."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        *,
        transactional: bool,
        dry_run: bool,
        isolation: str | None = None,
    ):
        self.conn = conn
        #: The isolation level the migrator began the runner's transaction with (None: the
        #: session's default, read when first needed).
        self.isolation = isolation
        self._level_chosen = isolation is not None
        self.transactional = transactional or dry_run
        self.dry_run = dry_run
        self.statements: list[ExecutedStatement] = []
        self.warnings: list[str] = []
        #: First 25001/55P04 met in a real transactional run (even if the migration caught it).
        self.non_transactional_error: StatementError | None = None
        self.last_error: StatementError | None = None
        self.tracker = Tracker()
        #: Set once this attempt cannot give sequelize-cli's result in atomic mode.
        self.abandoned: Abandoned | None = None
        self._saved_settings: dict[str, str | None] = {}
        self._encoding = conn.info.encoding
        self._rows: RowSink | None = None
        self._cursor: psycopg.RawCursor[Any] | None = None
        #: Optional: called after each executed query with (sql, conn, command tag, seconds).
        self.observer: Any = None

    # -- entry point -------------------------------------------------------------------------

    def execute(
        self,
        client: int,
        sql: str,
        params: Sequence[Any] | None,
        rows: RowSink | None = None,
    ) -> dict[str, Any]:
        """Execute one query of client ``client``; returns the reply for the JS side.

        ``rows`` receives the chunks of a large result before the reply (see :func:`_stream`).
        """
        self._rows = rows
        sql = _without_lone_surrogates(sql)
        values = _decode_params(params)
        if self.abandoned is not None:
            # Nothing more runs in this attempt; the migrator rolls it back and re-runs it.
            self._record(sql, values, LABEL_STATEMENT, executed_as="(not run: re-run follows)")
            pieces = analyze(sql)
            if all(p.kind.is_transaction_control for p in pieces):
                # "succeeds" unrun: Sequelize would log a failed ROLLBACK as the app's problem
                return {"r": [_empty_result(p.command) for p in pieces]}
            return {"e": self._abandoned_error(sql).payload()}
        t0 = time.perf_counter()
        try:
            if self.transactional:
                results = self._execute_transactional(client, sql, values)
            else:
                results = self._execute_autocommit(sql, values)
        except StatementFailure as failure:
            self.last_error = failure.error
            return {"e": failure.error.payload()}
        if self.observer is not None:
            tag = results[-1]["c"] if results else None
            self.observer(sql, self.conn, tag, time.perf_counter() - t0)
        return {"r": results}

    def finish(self) -> str | None:
        """Leave the session as the runner expects; returns what the migration did wrong.

        Non-transactional mode rolls back a transaction the migration left open and restores
        session settings it changed. Transactional mode checks the migration closed its own
        transactions and the runner's transaction is still usable.
        """
        self._check_connection()
        status = self.conn.info.transaction_status
        if self.transactional:
            open_tx = self.tracker.has_open_transaction()
            self.tracker.frames.clear()
            if status == pq.TransactionStatus.INTRANS:
                self._restore_settings()
            if open_tx:
                return (
                    "a transaction the migration started was never committed or rolled back "
                    "(missing await on commit()?)"
                )
            if status != pq.TransactionStatus.INTRANS:
                return "the runner's transaction is no longer usable"
            return None
        left_open = status in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)
        if left_open:
            self._run_control("ROLLBACK")
        self._restore_settings()
        return "the migration left a transaction open; it was rolled back" if left_open else None

    # -- transactional mode ------------------------------------------------------------------

    def _execute_transactional(
        self, client: int, sql: str, values: list[Any] | None
    ) -> list[dict[str, Any]]:
        pieces = analyze(sql)
        frame = self.tracker.transaction_of(client)
        if frame is not None and frame.aborted and not _recovers(pieces[0]):
            err = StatementError(
                "current transaction is aborted, commands ignored until end of transaction block",
                "25P02",
                sql,
            )
            self._record(sql, values, pieces[0].label, err.sqlstate)
            raise StatementFailure(err)
        self._save_settings(pieces)
        groups = list(_groups(pieces))
        if len(groups) == 1 and not groups[0][0].kind.is_transaction_control:
            return self._run_batch(client, sql, pieces, values)
        results: list[dict[str, Any]] = []
        for group in groups:
            if group[0].kind.is_transaction_control:
                results.append(self._chained_control(client, group[0]))
            else:
                results.extend(self._run_batch(client, None, group, values))
        return results

    def _run_batch(
        self, client: int, sql: str | None, pieces: list[Piece], values: list[Any] | None
    ) -> list[dict[str, Any]]:
        """Run plain statements (and rewritten SETs) as one string inside one savepoint."""
        parts: list[str] = []
        synthetic: dict[int, dict[str, Any]] = {}
        rewritten = False
        for i, piece in enumerate(pieces):
            if piece.kind is Kind.SET:
                local = make_local(piece)
                if local is None:
                    self._warn(f"could not make this setting transaction-local: {piece.text}")
                    parts.append(piece.text)
                else:
                    parts.append(local)
                    rewritten = True
            elif piece.kind is Kind.RESET_ALL:
                self._warn("RESET ALL skipped: it would reset the runner's own settings")
                synthetic[i] = _empty_result(piece.command)
                rewritten = True
            else:
                parts.append(piece.text)
        original = sql if sql is not None else ";\n".join(p.text for p in pieces)
        text = original if not rewritten else ";\n".join(parts)
        label = _batch_label(pieces)
        executed_as = text if rewritten else None
        if not parts:
            self._record(original, values, label, executed_as=executed_as)
            return [synthetic[i] for i in sorted(synthetic)]
        try:
            results = self._run_wrapped(text, values, parsed=all(p.parsed for p in pieces))
        except StatementFailure as failure:
            err = failure.error
            if self.dry_run and err.sqlstate in NON_TRANSACTIONAL_SQLSTATES:
                self._record(original, values, LABEL_NON_TRANSACTIONAL, err.sqlstate)
                return [_empty_result("") for _ in pieces]
            if err.sqlstate in NON_TRANSACTIONAL_SQLSTATES and self.non_transactional_error is None:
                self.non_transactional_error = err
            self.tracker.failed(client)
            self._record(original, values, label, err.sqlstate, executed_as)
            failed = StatementError(err.message, err.sqlstate, original, err.fields)
            raise StatementFailure(failed) from None
        self._record(original, values, label, executed_as=executed_as)
        if label != LABEL_INTROSPECTION:
            self.tracker.statement(client)
        for i in sorted(synthetic):
            results.insert(i, synthetic[i])
        return results

    def _run_wrapped(
        self, text: str, values: list[Any] | None, *, parsed: bool = True
    ) -> list[dict[str, Any]]:
        """Run ``text`` inside a savepoint, rolled back to if it fails.

        A string the parser accepted travels with its savepoint in one simple-protocol round
        trip. Anything else gets its savepoint in a round trip of its own first: the server
        parses a whole simple-protocol string before running any of it, so a syntax error would
        otherwise reject the savepoint too and leave the runner's transaction unrecoverable.
        With parameters the extended protocol allows one statement per query: a write (an
        INSERT / UPDATE with ``bind``, what models and ``bulkUpdate`` send) goes pipelined with
        its savepoint in one round trip, its result whole; a read is streamed (three round
        trips), as it is the kind of statement that returns many rows.
        """
        combined = values is None and parsed
        try:
            if combined:
                results = self._stream(_WRAP_HEAD + text + _WRAP_TAIL, None, skip=1)[1:-1]
                return results or [_empty_result("")]
            if values is not None and not _READS.match(text):
                cur = self._pipeline_cursor()
                with self.conn.pipeline():
                    self.conn.execute(f"SAVEPOINT {STATEMENT_SAVEPOINT}", prepare=False)
                    cur.execute(text, values, prepare=False)
                    self.conn.execute(f"RELEASE SAVEPOINT {STATEMENT_SAVEPOINT}", prepare=False)
                res = cur.pgresult
                return [_result_payload(res, self._encoding)] if res else [_empty_result("")]
            self._run_control(f"SAVEPOINT {STATEMENT_SAVEPOINT}")
            results = self._stream(text, values)
            self._run_control(f"RELEASE SAVEPOINT {STATEMENT_SAVEPOINT}")
            return results or [_empty_result("")]
        except psycopg.Error as exc:
            self._check_connection(exc)
            failure = _statement_error(exc, text, len(_WRAP_HEAD) if combined else 0)
            if self.conn.info.transaction_status == pq.TransactionStatus.INERROR:
                self._run_control(_UNWRAP)
            # else refused before it was sent (a NUL in a parameter): nothing ran
            raise StatementFailure(failure) from None

    def _pipeline_cursor(self) -> psycopg.RawCursor[Any]:
        if self._cursor is None:
            self._cursor = _raw_cursor(self.conn)
        return self._cursor

    def _stream(self, sql: str, values: list[Any] | None, skip: int = 0) -> list[dict[str, Any]]:
        """Run ``sql`` and return its results; see :func:`_stream`. ``skip``: leading results
        that belong to the runner's wrapping (not numbered for the JS side)."""
        return _stream(self.conn, sql, values, self._encoding, self._rows, skip)

    def _chained_control(self, client: int, piece: Piece) -> dict[str, Any]:
        """``COMMIT AND CHAIN`` / ``ROLLBACK AND CHAIN``: the transaction's end, then at once a
        new transaction of the same client (a savepoint like any other, so it has the runner's
        transaction's characteristics, as the chained one had). Sent as is, it would end the
        runner's own transaction and leave the migration half-applied."""
        if not piece.chain:
            return self._transaction_control(client, piece)
        if self.tracker.transaction_of(client) is None:
            err = StatementError(
                f"{piece.command} AND CHAIN can only be used in transaction blocks",
                "25P01",
                piece.text,
            )
            self._record(piece.text, None, LABEL_TRANSACTION_CONTROL, err.sqlstate)
            raise StatementFailure(err)
        result = self._transaction_control(client, piece)
        self._transaction_control(
            client, Piece("BEGIN /* AND CHAIN */", Kind.BEGIN, command="BEGIN")
        )
        return result

    def _transaction_control(self, client: int, piece: Piece) -> dict[str, Any]:
        """Map the migration's transaction control onto savepoints of the runner's transaction.

        The tracker decides what each one becomes; when it cannot be represented without
        losing work sequelize-cli keeps, atomic mode is abandoned (see :meth:`_abandon`).
        """
        tracker = self.tracker
        error: StatementError | None = None
        step = Step("", piece.command)
        try:
            if piece.kind is Kind.BEGIN:
                step = tracker.begin(client)
                if step.sql:
                    self._run_control(step.sql)
                self._characteristics(client, piece.text)
            elif piece.kind is Kind.COMMIT:
                step = tracker.commit(client)
            elif piece.kind is Kind.ROLLBACK:
                step = tracker.rollback(client)
            elif piece.kind is Kind.SET_TRANSACTION:
                if piece.guc == "TRANSACTION" and tracker.transaction_of(client) is not None:
                    self._characteristics(client, piece.text)
                else:
                    self._warn(f"skipped inside the runner's transaction: {piece.text}")
            elif piece.kind is Kind.SAVEPOINT:
                if tracker.transaction_of(client) is None:
                    error = StatementError(
                        "SAVEPOINT can only be used in transaction blocks", "25P01", piece.text
                    )
                else:
                    step = tracker.savepoint(client, piece.savepoint or "")
            else:  # RELEASE / ROLLBACK TO a savepoint of the migration
                target = tracker.find_savepoint(client, piece.savepoint)
                if target is None:
                    error = StatementError(
                        f'savepoint "{piece.savepoint}" does not exist', "3B001", piece.text
                    )
                elif piece.kind is Kind.ROLLBACK_TO:
                    step = tracker.rollback_to(client, target)
                else:
                    step = tracker.release(client, target)
        except NotRepresentable as exc:
            # Unrun, and "successful": the attempt is void anyway, and a failed ROLLBACK would
            # be logged by Sequelize as if the app had a problem.
            self._abandon(str(exc))
            self._record(piece.text, None, LABEL_TRANSACTION_CONTROL, executed_as="(not run)")
            return _empty_result(piece.command)
        if piece.kind is not Kind.BEGIN and step.sql:
            self._run_control(step.sql)
        self._record(
            piece.text,
            None,
            LABEL_TRANSACTION_CONTROL,
            error.sqlstate if error else None,
            step.sql if step.sql != piece.text else None,
        )
        if error is not None:
            raise StatementFailure(error)
        return _empty_result(step.command)

    def _characteristics(self, client: int, text: str) -> None:
        """Honour a transaction's isolation level / access mode, or abandon atomic mode.

        Savepoints have no isolation level of their own: the runner's transaction must have it.
        It can be given one only before its first snapshot, so a level requested by the
        migration's first statement makes the migrator re-run the migration in a runner
        transaction begun at that level; any later or differing request needs pool mode.
        """
        wanted = requested_characteristics(text)
        have = self._runner_isolation() if wanted.isolation is not None else None
        if wanted.read_only:
            self._abandon(
                "a READ ONLY transaction cannot be represented inside the runner's read-write "
                f"transaction ({first_line(text)})"
            )
        elif wanted.isolation is not None and wanted.isolation != have:
            first = self.tracker.transactions_begun == 1 and not self.tracker.ledger
            if first and not self._level_chosen:
                if self.dry_run:  # the dry run's one transaction has its level already
                    self._warn(
                        f"isolation level {wanted.isolation} rehearsed at the dry run's {have} "
                        f"(the real run uses {wanted.isolation}): {first_line(text)}"
                    )
                    return
                self._abandon(
                    f"its first transaction asks for isolation level {wanted.isolation}",
                    isolation=wanted.isolation,
                )
            else:
                self._abandon(
                    f"a transaction asks for isolation level {wanted.isolation} while the "
                    f"runner's transaction is {have}"
                )
        else:
            return
        raise StatementFailure(self._abandoned_error(text))

    def _runner_isolation(self) -> str:
        if self.isolation is None:
            row = self.conn.execute("SHOW transaction_isolation", prepare=False).fetchone()
            self.isolation = str(row[0]) if row else "read committed"
        return self.isolation

    def _abandon(self, reason: str, isolation: str | None = None) -> None:
        """Stop executing for this attempt: the migrator rolls back and re-runs the migration
        (at ``isolation``, or in pool mode). Every later query is refused without running."""
        if self.abandoned is None:
            self.abandoned = Abandoned(reason, isolation)

    def _abandoned_error(self, sql: str) -> StatementError:
        assert self.abandoned is not None
        return StatementError(
            f"migrunner re-runs this migration ({self.abandoned.reason})", None, sql
        )

    # -- non-transactional mode --------------------------------------------------------------

    def _execute_autocommit(self, sql: str, values: list[Any] | None) -> list[dict[str, Any]]:
        pieces = analyze(sql)
        self._save_settings(pieces)
        if any(piece.kind is Kind.RESET_ALL for piece in pieces):
            self._warn("RESET ALL in a non-transactional migration resets the runner's settings")
        label = _batch_label(pieces)
        try:
            results = self._stream(sql, values) or [_empty_result("")]
        except psycopg.Error as exc:
            self._check_connection(exc)
            err = _statement_error(exc, sql, 0)
            self._record(sql, values, label, err.sqlstate)
            raise StatementFailure(err) from None
        self._record(sql, values, label)
        return results

    def _save_settings(self, pieces: list[Piece]) -> None:
        """Remember the values of settings a statement is about to change (first time only).

        They are put back by :meth:`finish`, so neither Sequelize's connection set-up nor the
        migration's own SETs reach the runner's statements that follow (SequelizeMeta, history).
        """
        kinds = (Kind.SET, Kind.SET_LOCAL) if self.transactional else (Kind.SET,)
        names: list[str] = []
        for piece in pieces:
            guc = piece.guc
            if piece.kind in kinds and guc and guc not in self._saved_settings and guc not in names:
                names.append(guc)
        if not names:
            return
        query = "SELECT " + ", ".join("current_setting(%s, true)" for _ in names)
        try:
            row = self.conn.execute(query, names, prepare=False).fetchone()
        except psycopg.Error as exc:
            self._check_connection(exc)
            return
        if row is not None:
            self._saved_settings.update(zip(names, row, strict=True))

    def _restore_settings(self) -> None:
        if not self._saved_settings:
            return
        names = list(self._saved_settings)
        values = [self._saved_settings[n] or "" for n in names]
        local = "true" if self.transactional else "false"
        query = "SELECT " + ", ".join(f"set_config(%s, %s, {local})" for _ in names)
        params = [x for pair in zip(names, values, strict=True) for x in pair]
        try:
            self.conn.execute(query, params, prepare=False)
        except psycopg.Error as exc:
            self._check_connection(exc)
            self._warn(f"could not restore settings {', '.join(names)}: {_one_line(exc)}")
        self._saved_settings.clear()

    # -- helpers -----------------------------------------------------------------------------

    def _run_control(self, sql: str) -> None:
        try:
            self.conn.execute(sql, prepare=False)
        except psycopg.Error as exc:
            self._check_connection(exc)
            raise StatementFailure(_statement_error(exc, sql, 0)) from None

    def _check_connection(self, exc: BaseException | None = None) -> None:
        if self.conn.closed or self.conn.broken:
            raise DatabaseUnavailable(f"lost the database connection: {_one_line(exc)}") from exc

    def _record(
        self,
        sql: str,
        values: list[Any] | None,
        label: str,
        sqlstate: str | None = None,
        executed_as: str | None = None,
    ) -> None:
        params = None if values is None else tuple(values)
        self.statements.append(ExecutedStatement(sql, params, label, sqlstate, executed_as))

    def _warn(self, message: str) -> None:
        self.warnings.append(message)


class StatementFailure(Exception):
    """A statement failed; ``error`` goes back to the migration as a pg DatabaseError."""

    def __init__(self, error: StatementError) -> None:
        super().__init__(error.message)
        self.error = error


def _recovers(piece: Piece) -> bool:
    return piece.kind in (Kind.ROLLBACK, Kind.COMMIT, Kind.ROLLBACK_TO)


def _groups(pieces: list[Piece]) -> Iterator[list[Piece]]:
    """Runs of ordinary statements, with each transaction-control statement on its own."""
    batch: list[Piece] = []
    for piece in pieces:
        if piece.kind.is_transaction_control:
            if batch:
                yield batch
                batch = []
            yield [piece]
        else:
            batch.append(piece)
    if batch:
        yield batch


def _batch_label(pieces: list[Piece]) -> str:
    labels = {p.label for p in pieces}
    if len(labels) == 1:
        return labels.pop()
    return LABEL_STATEMENT


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_lone_surrogates(text: str) -> str:
    """A JS string may hold a lone UTF-16 surrogate, which UTF-8 cannot encode; node's pg
    (``Buffer.from(s, 'utf8')``) sends U+FFFD for it, and so does the bridge. (JSON decoding
    has already joined every valid pair.)"""
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


def _decode_params(params: Sequence[Any] | None) -> list[Any] | None:
    if not params:
        return None
    out: list[Any] = []
    for p in params:
        if isinstance(p, dict) and "b" in p:
            out.append(base64.b64decode(p["b"]))
        elif isinstance(p, str):
            out.append(_without_lone_surrogates(p))
        else:
            out.append(p)
    return out


#: Rows per chunk of a result (libpq's chunked-rows mode): what Python holds of a large result
#: at a time, and one protocol message to node. Smaller results travel whole in the reply.
CHUNK_ROWS = 500

#: Receives ``{"i": result index, "f": fields, "rows": [...]}`` for each chunk of a large result.
RowSink = Callable[[dict[str, Any]], None]

#: libpq >= 17 (psycopg's binary wheels ship one); with an older libpq results come whole.
_CHUNKED = psycopg.capabilities.has_stream_chunked()
_TUPLES_CHUNK = getattr(pq.ExecStatus, "TUPLES_CHUNK", None)
_DONE_STATES = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK, pq.ExecStatus.EMPTY_QUERY)
_BYTEA_OID = 17


def _stream(
    conn: psycopg.Connection[Any],
    sql: str,
    values: list[Any] | None,
    encoding: str,
    sink: RowSink | None,
    skip: int = 0,
) -> list[dict[str, Any]]:
    """Run ``sql`` on ``conn`` and return every result as {c: command tag, f: [[name, oid]],
    rows: [[text]]}, values as the server's text for the JS side's own type parsers.

    Rows never accumulate here: libpq delivers them in chunks of :data:`CHUNK_ROWS` (chunked
    rows mode), and once a result has more than one chunk every chunk but the last goes to
    ``sink`` as it arrives; that result then carries ``s`` (rows sent ahead) and only its last
    chunk. So a 1,000,000-row SELECT costs this process one chunk, as with a cursor, but a
    small result still costs one round trip and one reply, and multi-statement strings work.
    Simple protocol without ``values``; with them, the extended protocol (``$n``, one
    statement). A failed statement raises its psycopg error once the server is done.
    """
    pgconn = conn.pgconn
    with conn.lock:
        if values is None:
            pgconn.send_query(sql.encode(encoding))
        else:
            params, types, formats = _encode_values(values, encoding)
            pgconn.send_query_params(sql.encode(encoding), params, types, formats)
        try:
            while pgconn.flush():
                _wait(pgconn, write=True)
            if _CHUNKED and sink is not None:
                pgconn.set_chunked_rows_mode(CHUNK_ROWS)
            return _read_results(pgconn, encoding, sink, skip)
        except BaseException:
            _abandon_query(conn)
            raise


def _read_results(
    pgconn: pq.abc.PGconn, encoding: str, sink: RowSink | None, skip: int
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    error: psycopg.Error | None = None
    held: dict[str, Any] | None = None  # the latest chunk of the result being streamed
    sent = 0  # rows of that result already given to the sink
    while (res := _next_result(pgconn)) is not None:
        status = res.status
        if status == _TUPLES_CHUNK:
            chunk = _result_payload(res, encoding)
            if held is not None and sink is not None:
                sink({"i": len(results) - skip, "f": held["f"], "rows": held["rows"]})
                sent += len(held["rows"])
                chunk["c"] = chunk["c"] or held["c"]
            held = chunk
        elif status in _DONE_STATES and held is not None:
            # the end of a chunked result: the tag may come with the last chunk or here
            tag = res.command_status
            if tag:
                held["c"] = tag.decode(encoding)
            if sent:
                held["s"] = sent
            results.append(held)
            held, sent = None, 0
        elif status in _DONE_STATES:
            results.append(_result_payload(res, encoding))
        elif status == pq.ExecStatus.FATAL_ERROR:
            if error is None:
                error = psycopg.errors.error_from_result(res, encoding=encoding)
            held, sent = None, 0
        elif status == pq.ExecStatus.COPY_IN:
            pgconn.put_copy_end(b"COPY FROM STDIN is not supported in a JS migration")
        elif status == pq.ExecStatus.COPY_OUT:
            while True:
                while (got := pgconn.get_copy_data(1))[0] == 0:
                    _wait(pgconn)
                if got[0] < 0:
                    break
            error = error or psycopg.NotSupportedError(
                "COPY TO STDOUT is not supported in a JS migration"
            )
    if error is not None:
        raise error
    return results


def _next_result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult | None:
    while pgconn.is_busy():
        _wait(pgconn)
        pgconn.consume_input()
    return pgconn.get_result()


def _wait(pgconn: pq.abc.PGconn, write: bool = False) -> None:
    fd = pgconn.socket
    if write:
        select.select([fd], [fd], [])
        pgconn.consume_input()  # the server may be talking while we send
    else:
        select.select([fd], [], [])


def _abandon_query(conn: psycopg.Connection[Any]) -> None:
    """Interrupted (a signal) or the connection failed mid-result: cancel what runs and drain
    it, so the session can still be rolled back."""
    pgconn = conn.pgconn
    if (
        pgconn.status != pq.ConnStatus.OK
        or pgconn.transaction_status != pq.TransactionStatus.ACTIVE
    ):
        return
    with contextlib.suppress(Exception):
        conn.cancel_safe(timeout=5)
    with contextlib.suppress(Exception):
        while _next_result(pgconn) is not None:
            pass


class _PassThroughLoader(Loader):
    """Leaves a value as the server sent it: the JS side parses every value itself."""

    def load(self, data: Buffer) -> Buffer:
        return data


#: Types whose psycopg loaders look up the session time zone when a result arrives; Sequelize's
#: ``SET TIME ZONE INTERVAL '+00:00' ...`` is a zone Python cannot name, so skip them.
_TZ_TYPE_OIDS = (1184, 1185, 3910, 3911, 4534, 6153)

#: Statements read-shaped enough to stream (the rest of the bound ones go pipelined, whole).
_READS = re.compile(r"\s*(?:\(\s*)*(?:SELECT|WITH|VALUES|TABLE|SHOW|EXPLAIN|FETCH)\b", re.I)


def _raw_cursor(conn: psycopg.Connection[Any]) -> psycopg.RawCursor[Any]:
    """A cursor for pipelined bound statements: ``$n`` placeholders as sent by pg; its rows
    are read raw from ``pgresult``, never loaded."""
    cur = psycopg.RawCursor(conn)
    for oid in _TZ_TYPE_OIDS:
        cur.adapters.register_loader(oid, _PassThroughLoader)
    return cur


def _encode_values(
    values: list[Any], encoding: str
) -> tuple[list[bytes | None], list[int], list[int]]:
    """Parameters as pg sends them: text (server-inferred type) or bytea in binary."""
    params: list[bytes | None] = []
    types: list[int] = []
    formats: list[int] = []
    for value in values:
        if value is None:
            params.append(None)
            types.append(0)
            formats.append(0)
        elif isinstance(value, bytes | bytearray | memoryview):
            params.append(bytes(value))
            types.append(_BYTEA_OID)
            formats.append(1)
        else:
            text = value if isinstance(value, str) else str(value)
            if "\x00" in text:
                raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
            params.append(text.encode(encoding))
            types.append(0)
            formats.append(0)
    return params, types, formats


def _result_payload(res: pq.abc.PGresult, encoding: str) -> dict[str, Any]:
    nfields = res.nfields
    fields = [[(res.fname(i) or b"").decode(encoding), res.ftype(i)] for i in range(nfields)]
    rows = []
    get = res.get_value
    for r in range(res.ntuples):
        row = []
        for c in range(nfields):
            v = get(r, c)
            row.append(None if v is None else v.decode(encoding, "replace"))
        rows.append(row)
    tag = res.command_status
    return {"c": tag.decode(encoding) if tag else "", "f": fields, "rows": rows}


def _empty_result(command: str) -> dict[str, Any]:
    return {"c": command, "f": [], "rows": []}


def _statement_error(exc: psycopg.Error, sql: str, offset: int) -> StatementError:
    diag = exc.diag
    fields: dict[str, Any] = {}
    for js_name, diag_name in _ERROR_FIELDS.items():
        value = getattr(diag, diag_name, None)
        if value is not None:
            fields[js_name] = value
    if "position" in fields and offset:
        with contextlib.suppress(ValueError):
            fields["position"] = str(max(1, int(fields["position"]) - offset))
    message = diag.message_primary or _one_line(exc)
    return StatementError(message, exc.sqlstate, sql, fields)


def _one_line(exc: BaseException | None) -> str:
    if exc is None:
        return "connection closed"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = [
    "NON_TRANSACTIONAL_SQLSTATES",
    "Abandoned",
    "ExecutedStatement",
    "StatementError",
    "StatementExecutor",
    "StatementFailure",
]
