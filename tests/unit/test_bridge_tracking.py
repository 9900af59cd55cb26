"""The atomic-mode bookkeeping, without a database: which rollbacks are representable on one
session, and what each transaction-control statement becomes."""

from __future__ import annotations

import pytest

from migrations_compat.bridge_exec import requested_characteristics
from migrations_compat.bridge_tracking import NotRepresentable, Tracker


def test_sequential_transactions_map_to_savepoints() -> None:
    t = Tracker()
    assert t.begin(1).sql == "SAVEPOINT migrunner_tx_1"
    t.statement(1)
    assert t.commit(1).sql == "RELEASE SAVEPOINT migrunner_tx_1"
    assert t.begin(2).sql == "SAVEPOINT migrunner_tx_2"
    t.statement(2)
    step = t.rollback(2)
    assert step.sql == "ROLLBACK TO SAVEPOINT migrunner_tx_2; RELEASE SAVEPOINT migrunner_tx_2"
    assert not t.frames


def test_rollback_over_another_clients_statement_is_not_representable() -> None:
    t = Tracker()
    t.begin(1)
    t.begin(2)
    t.statement(2)
    t.statement(1)
    with pytest.raises(NotRepresentable, match="another open transaction"):
        t.rollback(2)


def test_rollback_over_a_no_transaction_statement_is_not_representable() -> None:
    t = Tracker()
    t.begin(1)
    t.statement(1)
    t.statement(2)  # client 2 has no transaction
    with pytest.raises(NotRepresentable, match="without a transaction"):
        t.rollback(1)


def test_rollback_over_a_committed_transaction_is_not_representable() -> None:
    t = Tracker()
    t.begin(1)
    t.begin(2)
    t.statement(2)
    t.commit(2)  # on top: released into client 1's savepoint
    with pytest.raises(NotRepresentable, match="already committed"):
        t.rollback(1)


def test_no_transaction_statement_inside_a_committing_transaction_stays_atomic() -> None:
    t = Tracker()
    t.begin(1)
    t.statement(1)
    t.statement(2)  # the statement that deadlocks under sequelize-cli
    assert t.commit(1).sql == "RELEASE SAVEPOINT migrunner_tx_1"


def test_commit_under_another_open_transaction_is_deferred_so_that_one_can_roll_back() -> None:
    t = Tracker()
    t.begin(1)
    t.statement(1)
    t.begin(2)
    assert t.commit(1).sql == ""  # releasing it would destroy client 2's savepoint
    t.statement(2)
    step = t.rollback(2)
    # client 2 rolled back alone; client 1's committed frame reached the top and is released
    assert step.sql == (
        "ROLLBACK TO SAVEPOINT migrunner_tx_2; RELEASE SAVEPOINT migrunner_tx_2; "
        "RELEASE SAVEPOINT migrunner_tx_1"
    )
    assert not t.frames


def test_an_idle_transaction_above_a_rollback_is_reopened() -> None:
    t = Tracker()
    t.begin(1)
    t.statement(1)
    t.begin(2)  # nothing done yet
    step = t.rollback(1)
    assert step.sql == (
        "ROLLBACK TO SAVEPOINT migrunner_tx_1; RELEASE SAVEPOINT migrunner_tx_1; "
        "SAVEPOINT migrunner_tx_2"
    )
    assert [f.name for f in t.frames] == ["migrunner_tx_2"]


def test_nested_savepoints_of_one_transaction() -> None:
    t = Tracker()
    t.begin(1)
    t.statement(1)
    assert t.savepoint(1, "Nested-1").sql == 'SAVEPOINT "Nested-1"'
    t.statement(1)
    target = t.find_savepoint(1, "Nested-1")
    assert target is not None
    assert t.rollback_to(1, target).sql == 'ROLLBACK TO SAVEPOINT "Nested-1"'
    t.statement(1)
    assert t.release(1, target).sql == 'RELEASE SAVEPOINT "Nested-1"'
    assert t.commit(1).sql == "RELEASE SAVEPOINT migrunner_tx_1"


def test_commit_of_an_aborted_transaction_rolls_it_back() -> None:
    t = Tracker()
    t.begin(1)
    t.failed(1)
    step = t.commit(1)
    assert step.command == "ROLLBACK" and step.sql.startswith("ROLLBACK TO SAVEPOINT")


def test_requested_characteristics() -> None:
    assert requested_characteristics("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;").isolation == (
        "serializable"
    )
    iso = requested_characteristics("START TRANSACTION ISOLATION LEVEL REPEATABLE   READ")
    assert iso.isolation == "repeatable read" and not iso.read_only
    assert requested_characteristics("BEGIN READ ONLY").read_only
    assert requested_characteristics("START TRANSACTION;").isolation is None
