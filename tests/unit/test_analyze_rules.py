"""The pure half of ``--analyze``: statement shapes, rule thresholds, ``--fail-on`` parsing."""

from __future__ import annotations

import pytest

from runner.analyze import (
    RULES,
    Facts,
    Lock,
    MigrationObs,
    StatementObs,
    Thresholds,
    analyze,
    has_not_null_check,
    parse_rules,
    shape_of,
)
from runner.observe import command_rows


def stmt(
    sql: str, *locks: Lock, rewrites: tuple[str, ...] = (), started: float = 0.0
) -> StatementObs:
    return StatementObs("m", sql, list(locks), list(rewrites), None, 1.0, started)


def test_shapes_from_the_parse_tree() -> None:
    assert shape_of('CREATE INDEX CONCURRENTLY i ON "t" (a)').index == [("t", True)]
    assert shape_of(
        "ALTER TABLE s.t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES u NOT VALID"
    ).fk == [("t", True)]
    both = shape_of(
        'ALTER TABLE "t" ALTER COLUMN "a" SET NOT NULL;ALTER TABLE "t" ALTER COLUMN "a" TYPE int'
    )
    assert both.set_not_null == [("t", "a")] and both.type_change == ["t"]
    assert shape_of("ALTER TYPE mood ADD VALUE 'x'").enum_add_value
    assert shape_of("not sql at all").index == []


def test_a_validated_check_spares_the_not_null_scan() -> None:
    assert has_not_null_check(["CHECK ((email IS NOT NULL))"], "email")
    assert has_not_null_check(['CHECK (("E-mail" IS NOT NULL))'], "E-mail")
    assert not has_not_null_check(["CHECK ((email IS NOT NULL) AND (id > 0))"], "email")
    assert not has_not_null_check([], "email")


def test_thresholds() -> None:
    alter = stmt("ALTER TABLE t ADD COLUMN x uuid DEFAULT gen_random_uuid()",
                 Lock("public.t", "AccessExclusiveLock"), rewrites=("public.t",), started=1.0)  # fmt: skip
    update = stmt("UPDATE t SET x = NULL", Lock("public.t", "RowExclusiveLock"), started=1.5)
    mig = MigrationObs("m", "target", True, 1.0, 1.2, [alter, update])
    facts = Facts(rows={"public.t": 10}, created=frozenset())
    assert {f.rule for f in analyze([mig], facts, Thresholds())} == {
        "table-rewrite",
        "access-exclusive-held",
    }
    assert {f.rule for f in analyze([mig], facts, Thresholds(min_rows=11))} == {
        "access-exclusive-held"
    }
    quiet = Thresholds(min_rows=11, lock_held_ms=500)  # held 200 ms
    assert analyze([mig], facts, quiet) == []


def test_fail_on_names() -> None:
    assert parse_rules("table-rewrite, blocking-index") == {"table-rewrite", "blocking-index"}
    assert parse_rules("all") == set(RULES)
    assert parse_rules(None) == frozenset()
    with pytest.raises(ValueError, match="unknown rule"):
        parse_rules("table-rewrites")


def test_rows_from_command_tags() -> None:
    assert command_rows("INSERT 0 5") == 5
    assert command_rows("UPDATE 12") == 12
    assert command_rows("ALTER TABLE") is None
    assert command_rows(None) is None
