"""migrunner against the real sequelize-cli 6.6.5 on the forum app: same command lines, same
databases, same results.

Each tool gets its own fresh database; the comparison is a catalog fingerprint (every table,
column, constraint, index, enum, sequence, view, function, trigger, comment, and rows per
table) plus the SequelizeMeta rows. migrunner's own ``migrunner_history`` and
``migrunner_verified`` are left out: the objects sequelize-cli never creates.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.parity.conftest import (
    COMPLETED,
    MIGRATIONS,
    SequelizeCli,
    migrunner,
    ok,
    parse_status,
    sequelize,
)
from tests.support.catalog import diff_fingerprints, fingerprint
from tests.support.state import meta_rows

FIFTH = MIGRATIONS[4]


def assert_same_state(url_a: str, url_b: str, labels: tuple[str, str]) -> None:
    fa, fb = fingerprint(url_a), fingerprint(url_b)
    assert fa == fb, "schemas differ:\n" + diff_fingerprints(fa, fb, labels)
    ma, mb = meta_rows(url_a), meta_rows(url_b)
    assert ma == mb, f"SequelizeMeta differs: {labels[0]}={ma} {labels[1]}={mb}"


def history_ups(url: str) -> list[str]:
    """Names migrunner recorded as applied (one row per successful ``up``)."""
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('migrunner_history')").fetchone() == (None,):
            return []
        rows = conn.execute(
            "SELECT name FROM migrunner_history WHERE direction = 'up' AND outcome = 'applied'"
        ).fetchall()
    return [str(r[0]) for r in rows]


def status_of(url: str) -> tuple[dict[str, str], dict[str, str]]:
    """``db:migrate:status`` as each tool reports it: (sequelize-cli's, migrunner's)."""
    cli = parse_status(ok(sequelize("db:migrate:status", url=url), "sequelize-cli"))
    mr = parse_status(migrunner("db:migrate:status", url=url).stdout)
    return cli, mr


# -- the fixture itself, with sequelize-cli alone -------------------------------------------


def test_fixture_is_eleven_migrations_named_like_the_app() -> None:
    assert len(MIGRATIONS) == 11
    assert all(name[:14].isdigit() and name.endswith(".js") for name in MIGRATIONS)


def test_every_down_reverses_its_up_under_sequelize_cli(
    sequelize_cli: SequelizeCli, db_url: str
) -> None:
    """Step up one migration at a time, then back down: each undo must restore exactly the
    state before that migration, or parity on ``undo`` would compare broken references."""
    states = []
    for name in MIGRATIONS:
        ok(sequelize("db:migrate", "--to", name, url=db_url), "sequelize-cli")
        states.append(fingerprint(db_url))
        assert meta_rows(db_url) == MIGRATIONS[: len(states)]
    for k in range(len(MIGRATIONS) - 1, 0, -1):
        ok(sequelize("db:migrate:undo", url=db_url), "sequelize-cli")
        now = fingerprint(db_url)
        assert now == states[k - 1], (
            f"undo of {MIGRATIONS[k]} left a difference:\n"
            + diff_fingerprints(states[k - 1], now, ("before up", "after down"))
        )
    ok(sequelize("db:migrate:undo", url=db_url), "sequelize-cli")
    empty = fingerprint(db_url)
    assert set(empty["relations"]) == {"public.SequelizeMeta"}
    assert empty["enums"] == {} and empty["sequences"] == {} and empty["functions"] == {}
    assert meta_rows(db_url) == ()


def test_two_sequelize_cli_runs_fingerprint_equal(
    sequelize_cli: SequelizeCli, db_url: str, other_db_url: str
) -> None:
    """The fingerprint is deterministic for this app (no run-specific names or values)."""
    for url in (db_url, other_db_url):
        ok(sequelize("db:migrate", url=url), "sequelize-cli")
    assert_same_state(db_url, other_db_url, ("run 1", "run 2"))


def test_fingerprint_sees_each_kind_of_change_and_ignores_the_history_table(
    db: psycopg.Connection, db_url: str
) -> None:
    """Parity is only as strong as the fingerprint: every category must register a change."""
    db.execute(
        """
        CREATE TYPE mood AS ENUM ('ok', 'good');
        CREATE TABLE t (id serial PRIMARY KEY, a int, b text DEFAULT 'x', m mood);
        CREATE INDEX t_b ON t (b);
        CREATE SEQUENCE s;
        CREATE VIEW v AS SELECT id, b FROM t WHERE a > 0;
        CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
        CREATE TRIGGER t_f BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f();
        CREATE TABLE migrunner_history (id bigserial PRIMARY KEY, name text UNIQUE);
        """
    )
    base = fingerprint(db)
    everything = repr(base)
    assert "migrunner_history" not in everything
    assert {"public.t.id", "public.t.a", "public.v.b"} <= set(base["columns"])
    assert base["enums"] == {"public.mood": ["ok", "good"]}

    changes = [
        ("ALTER TYPE mood ADD VALUE 'meh' BEFORE 'ok'", {"enums"}),
        ("CREATE OR REPLACE VIEW v AS SELECT id, b FROM t WHERE a > 1", {"views"}),
        (
            "CREATE OR REPLACE FUNCTION f() RETURNS trigger LANGUAGE plpgsql"
            " AS $$BEGIN NEW.a := 1; RETURN NEW; END$$",
            {"functions"},
        ),
        ("ALTER TABLE t ALTER COLUMN b SET DEFAULT 'y'", {"columns"}),
        ("ALTER TABLE t ALTER COLUMN a SET NOT NULL", {"columns"}),
        ("DROP INDEX t_b; CREATE INDEX t_b ON t (b DESC)", {"indexes"}),
        (
            "DROP TRIGGER t_f ON t;"
            " CREATE TRIGGER t_f BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION f()",
            {"triggers"},
        ),
        ("ALTER SEQUENCE s INCREMENT BY 2", {"sequences"}),
        ("ALTER TABLE t ADD CONSTRAINT t_a_positive CHECK (a > 0)", {"constraints"}),
        ("COMMENT ON COLUMN t.b IS 'shown'", {"comments"}),
        ("INSERT INTO t (a) VALUES (1)", {"rows"}),
        ("ALTER TABLE t ADD COLUMN z int", {"columns"}),
        # Same columns, other order: drop and re-add moves m behind z.
        ("ALTER TABLE t DROP COLUMN m; ALTER TABLE t ADD COLUMN m mood", {"columns"}),
        # Bookkeeping of the runner: none of this may show.
        (
            "ALTER TABLE migrunner_history ADD COLUMN outcome text CHECK (outcome <> '');"
            " CREATE INDEX migrunner_history_outcome ON migrunner_history (outcome);"
            " INSERT INTO migrunner_history (name) VALUES ('x');"
            " COMMENT ON TABLE migrunner_history IS 'runs'",
            set(),
        ),
    ]
    before = base
    for statement, expected in changes:
        db.execute(statement)
        after = fingerprint(db)
        diff = diff_fingerprints(before, after)
        seen = {line.split(" ", 1)[0] for line in diff.splitlines()}
        assert seen == expected, f"{statement}: expected changes in {expected}, got:\n{diff}"
        before = after
    assert diff_fingerprints(base, base) == ""
    # The current value of a sequence is data, not schema.
    db.execute("SELECT nextval('s')")
    assert fingerprint(db) == before


# -- parity ---------------------------------------------------------------------------------


def test_db_migrate_parity(sequelize_cli: SequelizeCli, db_url: str, other_db_url: str) -> None:
    ok(sequelize("db:migrate", url=db_url), "sequelize-cli")
    output = ok(migrunner("db:migrate", url=other_db_url), "migrunner")
    assert COMPLETED in output
    assert_same_state(db_url, other_db_url, ("sequelize-cli", "migrunner"))
    assert meta_rows(other_db_url) == MIGRATIONS
    # Seed rows from the categories migration's bulkInsert arrived through the bridge.
    assert fingerprint(other_db_url)["rows"]["public.categories"] == 3


def test_db_migrate_undo_all_parity(
    sequelize_cli: SequelizeCli, db_url: str, other_db_url: str
) -> None:
    ok(sequelize("db:migrate", url=db_url), "sequelize-cli")
    ok(migrunner("db:migrate", url=other_db_url), "migrunner")
    ok(sequelize("db:migrate:undo:all", url=db_url), "sequelize-cli")
    ok(migrunner("db:migrate:undo:all", url=other_db_url), "migrunner")
    assert_same_state(db_url, other_db_url, ("sequelize-cli", "migrunner"))
    left = fingerprint(other_db_url)
    assert set(left["relations"]) == {"public.SequelizeMeta"}, left["relations"]
    assert left["enums"] == {}, "down() must drop the ENUM types"
    assert meta_rows(other_db_url) == ()


@pytest.mark.parametrize(
    ("first", "then"),
    [("sequelize-cli", "migrunner"), ("migrunner", "sequelize-cli")],
    ids=["cli-then-migrunner", "migrunner-then-cli"],
)
def test_continuation_parity(
    first: str, then: str, sequelize_cli: SequelizeCli, db_url: str, other_db_url: str
) -> None:
    """An app switches tools mid-history: the second tool picks up exactly where the first
    stopped, and both tools agree on the status at every point."""
    tools = {"sequelize-cli": sequelize, "migrunner": migrunner}
    ok(tools[first]("db:migrate", "--to", FIFTH, url=db_url), first)
    assert meta_rows(db_url) == MIGRATIONS[:5]

    cli_view, mr_view = status_of(db_url)
    expected = {name: ("up" if i < 5 else "down") for i, name in enumerate(MIGRATIONS)}
    assert cli_view == expected
    assert mr_view == cli_view, f"status differs after {first} --to {FIFTH}"

    output = ok(tools[then]("db:migrate", url=db_url), then)
    if then == "migrunner":
        assert COMPLETED in output
    # Nothing ran twice: migrunner recorded only what it applied itself.
    ups = history_ups(db_url)
    by_migrunner = MIGRATIONS[:5] if first == "migrunner" else MIGRATIONS[5:]
    assert sorted(ups) == sorted(by_migrunner), ups
    ok(sequelize("db:migrate", url=other_db_url), "sequelize-cli")
    assert_same_state(other_db_url, db_url, ("straight sequelize-cli run", f"{first}+{then}"))

    cli_view, mr_view = status_of(db_url)
    assert cli_view == dict.fromkeys(MIGRATIONS, "up")
    assert mr_view == cli_view


def test_db_migrate_undo_one_step_parity(
    sequelize_cli: SequelizeCli, db_url: str, other_db_url: str
) -> None:
    for url in (db_url, other_db_url):
        ok(sequelize("db:migrate", url=url), "sequelize-cli")
    ok(sequelize("db:migrate:undo", url=db_url), "sequelize-cli")
    ok(migrunner("db:migrate:undo", url=other_db_url), "migrunner")
    assert_same_state(db_url, other_db_url, ("sequelize-cli", "migrunner"))
    assert meta_rows(other_db_url) == MIGRATIONS[:-1]


# umzug v2 finds `--name` / `--to` targets by prefix of the file name
# (`migration.file.indexOf(needle) === 0`), so scripts in the wild pass any of these.
NAME_FORMS = {
    "file-name": "20240101000006-create-notifications.js",
    "without-extension": "20240101000006-create-notifications",
    "timestamp-prefix": "20240101000006",
}


@pytest.mark.parametrize("form", list(NAME_FORMS))
def test_db_migrate_undo_name_parity(
    form: str, sequelize_cli: SequelizeCli, db_url: str, other_db_url: str
) -> None:
    """``--name`` reverts that one migration even with later ones applied (umzug's down
    with an explicit list)."""
    target = "20240101000006-create-notifications.js"
    for url in (db_url, other_db_url):
        ok(sequelize("db:migrate", url=url), "sequelize-cli")
        # The index migration touches notifications; take it off first, with sequelize-cli.
        ok(sequelize("db:migrate:undo", url=url), "sequelize-cli")
    needle = NAME_FORMS[form]
    ok(sequelize("db:migrate:undo", "--name", needle, url=db_url), "sequelize-cli")
    assert target not in meta_rows(db_url), "the harness's premise about sequelize-cli"
    ok(migrunner("db:migrate:undo", "--name", needle, url=other_db_url), "migrunner")
    assert_same_state(db_url, other_db_url, ("sequelize-cli", "migrunner"))
    assert meta_rows(other_db_url) == tuple(m for m in MIGRATIONS[:-1] if m != target)
    cli_view, mr_view = status_of(other_db_url)
    assert mr_view == cli_view
    assert cli_view[target] == "down"


@pytest.mark.parametrize("form", ["file-name", "without-extension"])
def test_db_migrate_undo_all_to_parity(
    form: str, sequelize_cli: SequelizeCli, db_url: str, other_db_url: str
) -> None:
    """``undo:all --to X`` reverts everything after X and X itself."""
    target = "20240101000009-create-reports.js"
    needle = target if form == "file-name" else target.removesuffix(".js")
    for url in (db_url, other_db_url):
        ok(sequelize("db:migrate", url=url), "sequelize-cli")
    ok(sequelize("db:migrate:undo:all", "--to", needle, url=db_url), "sequelize-cli")
    assert meta_rows(db_url) == MIGRATIONS[:8], "the harness's premise about sequelize-cli"
    ok(migrunner("db:migrate:undo:all", "--to", needle, url=other_db_url), "migrunner")
    assert_same_state(db_url, other_db_url, ("sequelize-cli", "migrunner"))


def test_db_migrate_to_an_applied_migration_is_a_no_op_for_both(
    sequelize_cli: SequelizeCli, db_url: str, other_db_url: str
) -> None:
    """A Job pinned with ``--to`` and re-run after success must succeed and change nothing."""
    for url in (db_url, other_db_url):
        ok(sequelize("db:migrate", "--to", FIFTH, url=url), "sequelize-cli")
    ok(sequelize("db:migrate", "--to", MIGRATIONS[2], url=db_url), "sequelize-cli")
    output = ok(migrunner("db:migrate", "--to", MIGRATIONS[2], url=other_db_url), "migrunner")
    assert COMPLETED in output
    assert_same_state(db_url, other_db_url, ("sequelize-cli", "migrunner"))
    assert meta_rows(other_db_url) == MIGRATIONS[:5]
