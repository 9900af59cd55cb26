"""How the bridge reads a migration's SQL strings (pure: no database, no node)."""

from __future__ import annotations

import pytest

from migrations_compat.bridge_sql import (
    LABEL_INTROSPECTION,
    LABEL_STATEMENT,
    LABEL_TRANSACTION_CONTROL,
    Kind,
    analyze,
    first_line,
    make_local,
)


def test_multi_statement_string_is_split_on_byte_offsets_with_non_ascii_text() -> None:
    pieces = analyze("UPDATE posts SET \"catégorie\" = 'é — 日本'; SELECT 'ü'; COMMIT")
    assert [p.text.strip() for p in pieces] == [
        "UPDATE posts SET \"catégorie\" = 'é — 日本'",
        "SELECT 'ü'",
        "COMMIT",
    ]
    assert [p.kind for p in pieces] == [Kind.PLAIN, Kind.PLAIN, Kind.COMMIT]


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END; $$",
        "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END",
        "DO 'BEGIN CREATE TYPE t AS ENUM (''a''); EXCEPTION WHEN duplicate_object THEN null; END'",
    ],
)
def test_bodies_full_of_semicolons_are_one_plain_statement(sql: str) -> None:
    (piece,) = analyze(sql)
    assert piece.kind is Kind.PLAIN and piece.parsed


@pytest.mark.parametrize(
    ("sql", "kind", "command"),
    [
        ("BEGIN", Kind.BEGIN, "BEGIN"),
        ("START TRANSACTION;", Kind.BEGIN, "START TRANSACTION"),
        ("begin isolation level serializable", Kind.BEGIN, "BEGIN"),
        ("COMMIT;", Kind.COMMIT, "COMMIT"),
        ("END", Kind.COMMIT, "COMMIT"),
        ("ROLLBACK;", Kind.ROLLBACK, "ROLLBACK"),
        ("ABORT", Kind.ROLLBACK, "ROLLBACK"),
        ('SAVEPOINT "abc-sp-1";', Kind.SAVEPOINT, "SAVEPOINT"),
        ("RELEASE SAVEPOINT s1", Kind.RELEASE, "RELEASE"),
        ('ROLLBACK TO SAVEPOINT "abc-sp-1";', Kind.ROLLBACK_TO, "ROLLBACK"),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;", Kind.SET_TRANSACTION, "SET"),
        ("COMMIT AND CHAIN", Kind.COMMIT, "COMMIT"),
        ("rollback and chain;", Kind.ROLLBACK, "ROLLBACK"),
        ("PREPARE TRANSACTION 'x'", Kind.PLAIN, ""),
    ],
)
def test_transaction_control_is_recognised(sql: str, kind: Kind, command: str) -> None:
    (piece,) = analyze(sql)
    assert (piece.kind, piece.command) == (kind, command)
    assert piece.chain == ("chain" in sql.lower())
    if kind is not Kind.PLAIN:
        assert piece.label == LABEL_TRANSACTION_CONTROL


def test_savepoint_names_are_normalised_like_the_server() -> None:
    assert analyze('SAVEPOINT "Mixed-Case"')[0].savepoint == "Mixed-Case"
    assert analyze("RELEASE SAVEPOINT Plain")[0].savepoint == "plain"


@pytest.mark.parametrize(
    ("sql", "local"),
    [
        ("SET search_path TO audit, public", "SET LOCAL search_path TO audit, public"),
        ("SET SESSION statement_timeout = '5min'", "SET LOCAL statement_timeout = '5min'"),
        ("/* why */ set time zone 'UTC'", "SET LOCAL time zone 'UTC'"),
        (
            "SET TIME ZONE INTERVAL '+00:00' HOUR TO MINUTE",
            "SET LOCAL TIME ZONE INTERVAL '+00:00' HOUR TO MINUTE",
        ),
        ("SET SESSION AUTHORIZATION app", "SET LOCAL SESSION AUTHORIZATION app"),
        ("SET ROLE app_owner", "SET LOCAL ROLE app_owner"),
        ("RESET lock_timeout", "SET LOCAL lock_timeout TO DEFAULT"),
        ("RESET TIME ZONE", "SET LOCAL timezone TO DEFAULT"),
        ("RESET ROLE", "SET LOCAL ROLE NONE"),
        ("RESET SESSION AUTHORIZATION", "SET LOCAL SESSION AUTHORIZATION DEFAULT"),
        ('RESET "my.Setting"', 'SET LOCAL "my.Setting" TO DEFAULT'),
        ("reset app.user_id", "SET LOCAL app.user_id TO DEFAULT"),
    ],
)
def test_session_settings_become_transaction_local(sql: str, local: str) -> None:
    (piece,) = analyze(sql)
    assert piece.kind is Kind.SET
    assert make_local(piece) == local


def test_settings_that_need_no_rewrite_or_cannot_be_local() -> None:
    assert analyze("SET LOCAL work_mem = '64MB'")[0].kind is Kind.SET_LOCAL
    assert analyze("SET CONSTRAINTS ALL DEFERRED")[0].kind is Kind.SET_LOCAL
    assert analyze("RESET ALL")[0].kind is Kind.RESET_ALL
    assert make_local(analyze("SET LOCAL work_mem = '64MB'")[0]) is None


@pytest.mark.parametrize(
    ("sql", "label"),
    [
        ("SELECT t.typname FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid", "introspection"),
        ("SELECT column_name FROM information_schema.columns", LABEL_INTROSPECTION),
        ("SHOW server_version", LABEL_INTROSPECTION),
        ("SET client_min_messages TO warning", LABEL_INTROSPECTION),
        ("SELECT id FROM users", LABEL_STATEMENT),
        ("SELECT * FROM pg_class FOR UPDATE", LABEL_STATEMENT),
        ("CREATE INDEX CONCURRENTLY i ON t (c)", LABEL_STATEMENT),
        ("SET search_path TO audit", LABEL_STATEMENT),
    ],
)
def test_labels_for_dry_run_plans(sql: str, label: str) -> None:
    assert analyze(sql)[0].label == label


def test_text_the_parser_rejects_is_passed_through_whole() -> None:
    for sql in ["SELEC 1; BEGIN", "SELECT 'a\x00b'; COMMIT"]:
        (piece,) = analyze(sql)
        assert piece.text == sql and piece.kind is Kind.PLAIN and not piece.parsed


def test_empty_and_comment_only_strings() -> None:
    assert analyze("")[0].kind is Kind.PLAIN
    assert analyze("-- nothing to do")[0].kind is Kind.PLAIN


def test_first_line_for_error_messages() -> None:
    assert first_line("\n\n  ALTER TABLE x\n  ADD COLUMN y int") == "ALTER TABLE x"
    assert first_line("x" * 300, limit=10) == "x" * 9 + "…"
