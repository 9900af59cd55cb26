"""Which seeders db:seed / db:seed:undo pick, per storage (pure planning, no database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import SourceError
from runner.seeders import plan_seed, plan_undo
from runner.source import Migration

A, B, C = "20240101-a.js", "20240102-b.js", "20240103-c.js"
SEEDERS = [Migration(n, Path(n), "js") for n in (A, B, C)]


def names(migs: list[Migration]) -> list[str]:
    return [m.name for m in migs]


def test_seed_all_runs_what_is_not_recorded() -> None:
    assert names(plan_seed(SEEDERS, [], None)) == [A, B, C]
    assert names(plan_seed(SEEDERS, [A], None)) == [B, C]


def test_seed_named_in_the_given_order_by_prefix() -> None:
    assert names(plan_seed(SEEDERS, [], ("20240103", "seeders/20240101-a.js"))) == [C, A]
    with pytest.raises(SourceError, match="not pending"):
        plan_seed(SEEDERS, [B], ("20240102",))
    with pytest.raises(SourceError, match="no such seeder"):
        plan_seed(SEEDERS, [], ("nope",))


def test_undo_candidates_depend_on_the_storage() -> None:
    # "none" records nothing: the candidates are all files, the last one goes first
    assert names(plan_undo(SEEDERS, [], "none", None, False)) == [C]
    assert names(plan_undo(SEEDERS, [], "none", None, True)) == [C, B, A]
    # "sequelize"/"json": only what was recorded
    assert names(plan_undo(SEEDERS, [A, B], "sequelize", None, False)) == [B]
    assert names(plan_undo(SEEDERS, [A, B], "json", None, True)) == [B, A]
    assert plan_undo(SEEDERS, [], "sequelize", None, True) == []
    # json keeps insertion order: the last seeded is the first reverted
    assert names(plan_undo(SEEDERS, [B, A], "json", None, False)) == [A]
    # --seed: exact names only, as sequelize-cli filters with includes()
    assert names(plan_undo(SEEDERS, [A, B], "sequelize", (A, C), False)) == [A]
    assert plan_undo(SEEDERS, [A], "sequelize", ("20240101",), False) == []
    with pytest.raises(SourceError, match="file is missing"):
        plan_undo(SEEDERS, ["gone.js"], "sequelize", None, False)
