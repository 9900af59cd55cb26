"""Pure planning: ordering, --to, --step, --name, drift. No database."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import SourceError
from runner.plan import drift, plan_down, plan_up
from runner.source import Migration


def migs(*names: str) -> list[Migration]:
    return [Migration(n, Path("/m") / n, "sql" if n.endswith(".sql") else "js") for n in names]


ALL = migs("001-a.js", "002-b.sql", "003-c.js", "004-d.sql")


def names(plan) -> list[str]:
    return [m.name for m in plan.steps]


def test_up_runs_all_pending_in_order() -> None:
    assert names(plan_up(ALL, [])) == ["001-a.js", "002-b.sql", "003-c.js", "004-d.sql"]
    assert names(plan_up(ALL, ["001-a.js", "003-c.js"])) == ["002-b.sql", "004-d.sql"]


def test_up_nothing_pending_has_sequelize_cli_message() -> None:
    plan = plan_up(ALL, [m.name for m in ALL])
    assert not plan
    assert plan.note == "No migrations were executed, database schema was already up to date."


def test_up_to_stops_after_target() -> None:
    assert names(plan_up(ALL, ["001-a.js"], to="003-c.js")) == ["002-b.sql", "003-c.js"]


def test_up_to_applied_target_is_noop() -> None:
    plan = plan_up(ALL, ["001-a.js", "002-b.sql"], to="002-b.sql")
    assert not plan and "not pending" in plan.note


def test_up_to_unknown_is_an_error() -> None:
    with pytest.raises(SourceError, match="no such migration"):
        plan_up(ALL, [], to="999-x.js")


def test_down_default_reverts_newest_one() -> None:
    assert names(plan_down(ALL, ["001-a.js", "002-b.sql", "003-c.js"])) == ["003-c.js"]


def test_down_step_and_all_and_to_and_name() -> None:
    applied = ["002-b.sql", "001-a.js", "003-c.js"]  # order in the table does not matter
    assert names(plan_down(ALL, applied, step=2)) == ["003-c.js", "002-b.sql"]
    assert names(plan_down(ALL, applied, all=True)) == ["003-c.js", "002-b.sql", "001-a.js"]
    assert names(plan_down(ALL, applied, to="002-b.sql")) == ["003-c.js", "002-b.sql"]
    assert names(plan_down(ALL, applied, name="001-a.js")) == ["001-a.js"]
    assert names(plan_down(ALL, applied, step=10)) == ["003-c.js", "002-b.sql", "001-a.js"]


def test_down_rejects_bad_requests() -> None:
    with pytest.raises(SourceError, match="at most one"):
        plan_down(ALL, ["001-a.js"], step=1, all=True)
    with pytest.raises(SourceError, match="not applied"):
        plan_down(ALL, ["001-a.js"], to="003-c.js")
    with pytest.raises(SourceError, match="at least 1"):
        plan_down(ALL, ["001-a.js"], step=0)


def test_down_nothing_applied() -> None:
    plan = plan_down(ALL, [])
    assert not plan and plan.note == "No executed migrations found."


def test_down_refuses_missing_file() -> None:
    with pytest.raises(SourceError, match="file is missing: 005-gone.js"):
        plan_down(ALL, ["001-a.js", "005-gone.js"])


def test_drift_missing_and_changed(tmp_path: Path) -> None:
    f = tmp_path / "001-a.sql"
    f.write_text("-- migrate:up\nselect 1;\n")
    m = Migration("001-a.sql", f, "sql")
    d = drift([m], ["001-a.sql", "000-old.js"], {"001-a.sql": "0" * 64})
    assert d.missing == ("000-old.js",)
    assert d.changed == ("001-a.sql",)
    assert not drift([m], ["001-a.sql"], {"001-a.sql": m.checksum})
    # migrations applied by sequelize-cli have no checksum and are never "changed"
    assert not drift([m], ["001-a.sql"], {})


def test_targets_match_by_prefix_like_umzug() -> None:
    applied = ["001-a.js", "002-b.sql", "003-c.js"]
    assert names(plan_down(ALL, applied, name="002-b")) == ["002-b.sql"]
    assert names(plan_down(ALL, applied, name="001")) == ["001-a.js"]
    assert names(plan_down(ALL, applied, to="002")) == ["003-c.js", "002-b.sql"]
    assert names(plan_up(ALL, ["001-a.js"], to="003-c")) == ["002-b.sql", "003-c.js"]
    with pytest.raises(SourceError, match="not applied"):
        plan_down(ALL, applied, name="004")


# -- exact plans: direction, truth value, messages, JavaScript order in every lookup ---------


def test_plans_carry_their_direction_and_truth() -> None:
    up = plan_up(ALL, [])
    assert (up.direction, bool(up), len(up.steps)) == ("up", True, 4)
    assert isinstance(up.steps, tuple)
    for noop in (plan_up(ALL, [m.name for m in ALL]), plan_up(ALL, ["001-a.js"], to="001-a.js")):
        assert (noop.direction, bool(noop), noop.steps) == ("up", False, ())
    assert plan_up(ALL, ["001-a.js"], to="001-a.js").note == "Migration 001-a.js is not pending"
    down = plan_down(ALL, ["001-a.js"])
    assert (down.direction, bool(down), down.steps) == ("down", True, (ALL[0],))
    empty = plan_down(ALL, [])
    assert (empty.direction, bool(empty), empty.steps) == ("down", False, ())


def test_step_one_is_the_smallest_step() -> None:
    assert names(plan_down(ALL, ["001-a.js", "002-b.sql"], step=1)) == ["002-b.sql"]
    with pytest.raises(SourceError) as info:
        plan_down(ALL, ["001-a.js"], step=0)
    assert info.value.message == "--step must be at least 1 (got 0)"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"step": 1, "to": "001"}, "down: give at most one of --step, --to, --all, --name"),
        ({"all": True, "name": "001"}, "down: give at most one of --step, --to, --all, --name"),
        ({"name": "003"}, "--name '003': migration is not applied"),
        ({"to": "003"}, "--to '003': migration is not applied"),
    ],
)
def test_down_messages(kwargs: dict, message: str) -> None:
    with pytest.raises(SourceError) as info:
        plan_down(ALL, ["001-a.js", "002-b.sql"], **kwargs)
    assert info.value.message == message


def test_missing_files_are_all_named() -> None:
    with pytest.raises(SourceError) as info:
        plan_down(ALL, ["001-a.js", "005-x.js", "006-y.js"], step=3)
    assert info.value.message == (
        "cannot revert applied migrations whose file is missing: 006-y.js, 005-x.js"
    )
    with pytest.raises(SourceError) as info:
        plan_up(ALL, [], to="9")
    assert info.value.message == "--to '9': no such migration in the migrations folder"


# U+1F600 is a surrogate pair in UTF-16 and sorts before U+FF21 in JavaScript, after it in
# code point order: every lookup must use JavaScript's order, as sequelize-cli does.
EMOJI, FULLWIDTH = "0\U0001f600.js", "0\uff21.js"
JS_ORDER = migs(EMOJI, FULLWIDTH)


def test_prefix_and_default_down_follow_javascript_order() -> None:
    applied = [FULLWIDTH, EMOJI]
    assert names(plan_down(JS_ORDER, applied)) == [FULLWIDTH]  # the newest in JS order
    assert names(plan_down(JS_ORDER, applied, name="0")) == [EMOJI]  # first prefix match
    assert names(plan_down(JS_ORDER, applied, to="0")) == [FULLWIDTH, EMOJI]
    assert names(plan_up(JS_ORDER, [], to="0")) == [EMOJI]
    with pytest.raises(SourceError, match="not applied"):
        plan_down(JS_ORDER, applied, name="")


def test_drift_truth_and_order(tmp_path: Path) -> None:
    found = []
    for n in ("001-a.sql", "002-b.sql"):
        (tmp_path / n).write_text("-- migrate:up\nselect 1;\n")
        found.append(Migration(n, tmp_path / n, "sql"))
    a, b = found
    assert not drift([a, b], [a.name, b.name], {})
    only_missing = drift([a], [a.name, "009-gone.js", "008-gone.js"], {})
    assert bool(only_missing) and only_missing.missing == ("008-gone.js", "009-gone.js")
    assert only_missing.changed == ()
    only_changed = drift([a, b], [a.name, b.name], {b.name: "other", a.name: a.checksum})
    assert bool(only_changed) and only_changed.missing == ()
    assert only_changed.changed == (b.name,)


def test_drift_description_names_every_file() -> None:
    from runner.plan import Drift

    assert Drift(("a.js", "b.js"), ()).describe() == "applied but file missing: a.js, b.js"
    assert Drift((), ("c.sql",)).describe() == "file changed since applied: c.sql"
    assert Drift(("a.js",), ("c.sql", "d.sql")).describe() == (
        "applied but file missing: a.js; file changed since applied: c.sql, d.sql"
    )
    assert Drift().describe() == ""


# -- db:migrate --name / --from (sequelize-cli 6.6.5 + umzug v2) -------------------------------


def _migs(*names: str) -> list[Migration]:
    return [Migration(n, Path(n), "js") for n in names]


def test_name_runs_only_that_pending_migration_found_by_prefix() -> None:
    av = _migs("1-a.js", "2-b.js", "3-c.js")
    assert [m.name for m in plan_up(av, [], name="2").steps] == ["2-b.js"]
    with pytest.raises(SourceError, match="is not pending"):
        plan_up(av, ["2-b.js"], name="2-b")
    with pytest.raises(SourceError, match="no such migration"):
        plan_up(av, [], name="9")
    with pytest.raises(SourceError, match="cannot be combined"):
        plan_up(av, [], "3-c.js", name="2")
    assert not plan_up(av, ["1-a.js", "2-b.js", "3-c.js"], name="9")  # nothing pending at all


def test_from_runs_the_pending_ones_after_it_excluded() -> None:
    av = _migs("1-a.js", "2-b.js", "3-c.js", "4-d.js")
    assert [m.name for m in plan_up(av, [], from_="2-b.js").steps] == ["3-c.js", "4-d.js"]
    assert [m.name for m in plan_up(av, [], "3-c.js", from_="1-a.js").steps] == [
        "2-b.js",
        "3-c.js",
    ]
    # sequelize-cli wants the exact name of a pending migration, else runs nothing
    assert not plan_up(av, ["2-b.js"], from_="2-b.js")
    assert not plan_up(av, [], from_="2")
    assert not plan_up(av, [], "1-a.js", from_="2-b.js")


def test_name_plans_exactly() -> None:
    plan = plan_up(ALL, ["001-a.js"], name="003")
    assert (plan.direction, names(plan)) == ("up", ["003-c.js"])
    done = plan_up(ALL, [m.name for m in ALL], name="003")
    assert (done.direction, done.steps, done.note) == (
        "up",
        (),
        "No migrations were executed, database schema was already up to date.",
    )
    for kwargs in ({"to": "004"}, {"from_": "002-b.sql"}):
        with pytest.raises(SourceError) as info:
            plan_up(ALL, [], name="003", **kwargs)
        assert info.value.message == "--name cannot be combined with --to or --from"
    with pytest.raises(SourceError) as info:
        plan_up(ALL, ["001-a.js"], name="001")
    assert info.value.message == "--name '001': migration 001-a.js is not pending"


def test_from_plans_exactly() -> None:
    plan = plan_up(ALL, [], from_="002-b.sql")
    assert (plan.direction, names(plan)) == ("up", ["003-c.js", "004-d.sql"])
    stop = plan_up(ALL, [], from_="002-b.sql", to="002-b.sql")
    assert (stop.direction, stop.steps) == ("up", ())
    assert stop.note == "Migration 002-b.sql is not pending after 002-b.sql"
