"""Which client and which logical transaction owns each statement of an atomic-mode migration.

In atomic mode every pool client of the migration shares the runner's one session, so the
migration's transactions and savepoints live on ONE linear savepoint stack. That is only
faithful to sequelize-cli (where each client is a real connection) while every rollback
discards exactly the work of the transaction being rolled back. This module keeps the
bookkeeping that decides it:

* a *ledger* of the owner ``(client, transaction id or None)`` of every statement that had an
  effect (catalog reads and Sequelize's connection set-up excluded);
* the *frames* of the stack: each of the migration's transactions and savepoints, with the
  ledger position at which it was opened.

A ROLLBACK (of a transaction or to a savepoint) is representable only if everything in the ledger
since that frame's savepoint belongs to that same transaction; otherwise it would discard another
client's work, a no-transaction statement, or a transaction that already committed, all of
which sequelize-cli keeps, and :class:`NotRepresentable` says why. A COMMIT of a transaction
that has another client's frame above it is deferred (the savepoint stays until it reaches the
top), so the other transaction can still roll back alone.

Pure: the caller sends the SQL the returned :class:`Step` names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TX_PREFIX = "migrunner_tx_"


class NotRepresentable(Exception):
    """The migration's transactions cannot be mapped onto one session without losing work."""


@dataclass
class Frame:
    client: int
    name: str  # savepoint name on the runner's session
    tx: int  # id of the logical transaction this frame belongs to
    is_transaction: bool  # True: the migration's BEGIN; False: its own SAVEPOINT
    mark: int  # ledger length when the frame was opened
    closed: bool = False  # committed / released, savepoint kept until it reaches the top
    aborted: bool = False  # a statement failed in this transaction (PostgreSQL's 25P02 state)


@dataclass(frozen=True)
class Step:
    """SQL to run for a transaction-control statement ('' = nothing), and its command tag."""

    sql: str
    command: str


@dataclass
class Tracker:
    frames: list[Frame] = field(default_factory=list)
    ledger: list[tuple[int, int | None]] = field(default_factory=list)
    transactions_begun: int = 0
    _next_tx: int = 0

    # -- queries ---------------------------------------------------------------------------

    def transaction_of(self, client: int) -> Frame | None:
        for frame in self.frames:
            if frame.client == client and frame.is_transaction and not frame.closed:
                return frame
        return None

    def has_open_transaction(self) -> bool:
        return any(f.is_transaction and not f.closed for f in self.frames)

    def other_clients_open(self, client: int) -> bool:
        return any(f.client != client and not f.closed for f in self.frames)

    # -- events ----------------------------------------------------------------------------

    def statement(self, client: int) -> None:
        """A statement of ``client`` took effect (inside its transaction, if it has one)."""
        tx = self.transaction_of(client)
        self.ledger.append((client, tx.tx if tx else None))

    def failed(self, client: int) -> None:
        tx = self.transaction_of(client)
        if tx is not None:
            tx.aborted = True

    def begin(self, client: int) -> Step:
        if self.transaction_of(client) is not None:
            return Step("", "BEGIN")  # a second BEGIN on one connection only warns
        self._next_tx += 1
        self.transactions_begun += 1
        name = f"{TX_PREFIX}{self._next_tx}"
        self.frames.append(Frame(client, name, self._next_tx, True, len(self.ledger)))
        return Step(f"SAVEPOINT {name}", "BEGIN")

    def commit(self, client: int) -> Step:
        tx = self.transaction_of(client)
        if tx is None:
            return Step("", "COMMIT")  # no transaction in progress: PostgreSQL only warns
        if tx.aborted:
            return self.rollback(client, tag="ROLLBACK")
        for frame in self.frames:
            if frame.tx == tx.tx:
                frame.closed = True
        return Step(self._collapse(), "COMMIT")

    def rollback(self, client: int, tag: str = "ROLLBACK") -> Step:
        tx = self.transaction_of(client)
        if tx is None:
            return Step("", tag)
        self._check_rollback(tx, "the rollback of a transaction")
        index = self._index(tx)
        survivors = self._survivors(index + 1, tx.tx)
        sql = [f"ROLLBACK TO SAVEPOINT {tx.name}", f"RELEASE SAVEPOINT {tx.name}"]
        del self.frames[index:]
        sql += self._reopen(survivors)
        collapsed = self._collapse()
        return Step("; ".join(sql + ([collapsed] if collapsed else [])), tag)

    def savepoint(self, client: int, name: str) -> Step:
        tx = self.transaction_of(client)
        assert tx is not None, "SAVEPOINT outside a transaction is refused by the caller"
        if any(f.name == name and f.client != client for f in self.frames):
            raise NotRepresentable(f'savepoint name "{name}" is used by two connections at once')
        self.frames.append(Frame(client, name, tx.tx, False, len(self.ledger)))
        return Step(f"SAVEPOINT {_quote(name)}", "SAVEPOINT")

    def find_savepoint(self, client: int, name: str | None) -> Frame | None:
        for frame in reversed(self.frames):
            if (
                frame.client == client
                and not frame.is_transaction
                and frame.name == name
                and not frame.closed
            ):
                return frame
        return None

    def release(self, client: int, target: Frame) -> Step:
        index = self._index(target)
        for frame in self.frames[index:]:
            if frame.tx == target.tx:
                frame.closed = True
        return Step(self._collapse(), "RELEASE")

    def rollback_to(self, client: int, target: Frame) -> Step:
        self._check_rollback(target, f'ROLLBACK TO SAVEPOINT "{target.name}"')
        index = self._index(target)
        survivors = self._survivors(index + 1, target.tx)
        del self.frames[index + 1 :]
        target.mark = len(self.ledger)
        tx = self.transaction_of(client)
        if tx is not None:
            tx.aborted = False
        sql = [f"ROLLBACK TO SAVEPOINT {_quote(target.name)}", *self._reopen(survivors)]
        return Step("; ".join(sql), "ROLLBACK")

    # -- internals -------------------------------------------------------------------------

    def _check_rollback(self, frame: Frame, what: str) -> None:
        for client, tx in self.ledger[frame.mark :]:
            if tx == frame.tx:
                continue
            if tx is None:
                whose = f"a statement connection {client} ran without a transaction"
            elif any(f.tx == tx and not f.closed for f in self.frames):
                whose = f"statements of another open transaction (connection {client})"
            else:
                whose = f"a transaction that already committed (connection {client})"
            raise NotRepresentable(f"{what} would also discard {whose}, which sequelize-cli keeps")

    def _survivors(self, start: int, tx: int) -> list[Frame]:
        """Open frames of other transactions above ``start``: re-created after the rollback
        (the ledger check proved they had done nothing since)."""
        return [f for f in self.frames[start:] if f.tx != tx and not f.closed]

    def _reopen(self, survivors: list[Frame]) -> list[str]:
        sql = []
        for frame in survivors:
            frame.mark = len(self.ledger)
            self.frames.append(frame)
            sql.append(f"SAVEPOINT {_quote(frame.name)}")
        return sql

    def _collapse(self) -> str:
        """Release the closed frames at the top of the stack (releasing the top is safe)."""
        lowest: Frame | None = None
        while self.frames and self.frames[-1].closed:
            lowest = self.frames.pop()
        return f"RELEASE SAVEPOINT {_quote(lowest.name)}" if lowest is not None else ""

    def _index(self, frame: Frame) -> int:
        return next(i for i, f in enumerate(self.frames) if f is frame)


def _quote(name: str) -> str:
    """A savepoint name as an identifier: the migration's names arrive as the parser normalised
    them (lower-cased unless quoted), so quoting them keeps them exact."""
    if name.startswith(TX_PREFIX):
        return name
    return '"' + name.replace('"', '""') + '"'
