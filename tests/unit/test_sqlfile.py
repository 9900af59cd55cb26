"""SQL migration sections and statement splitting (pglast), with file line numbers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.errors import SourceError
from runner.sqlfile import error_line, parse_sql_migration

P = Path("m.sql")


def parse(text: str):
    return parse_sql_migration(P, text.encode())


def test_sections_statements_and_lines() -> None:
    m = parse(
        "-- header comment\n"
        "-- migrate:up\n"
        "CREATE TABLE t (a text DEFAULT 'x;y');\n"
        "\n"
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\n"
        "BEGIN RETURN 1; END;\n"
        "$$;\n"
        "/* block; comment */ INSERT INTO t VALUES ('--not a comment');\n"
        "-- migrate:down\n"
        "DROP FUNCTION f();\n"
        "DROP TABLE t;\n"
    )
    assert m.up.transactional
    assert [s.line for s in m.up.statements] == [3, 5, 8]
    assert m.up.statements[1].sql.endswith("$$")
    assert "'--not a comment'" in m.up.statements[2].sql
    assert m.down is not None
    assert [s.sql for s in m.down.statements] == ["DROP FUNCTION f()", "DROP TABLE t"]
    assert [s.line for s in m.down.statements] == [10, 11]


def test_begin_atomic_function_is_one_statement() -> None:
    m = parse(
        "-- migrate:up\n"
        "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;\n"
        "SELECT 3;\n"
    )
    assert len(m.up.statements) == 2
    assert m.down is None


def test_transaction_false_option() -> None:
    m = parse(
        "-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY i ON t (a);\n"
        "-- migrate:down transaction:false\nDROP INDEX CONCURRENTLY i;\n"
    )
    assert not m.up.transactional
    assert m.down is not None and not m.down.transactional


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("CREATE TABLE t (a int);\n", "must start with a '-- migrate:up'"),
        ("-- migrate:down\nSELECT 1;\n-- migrate:up\nSELECT 2;\n", "found migrate:down first"),
        ("SELECT 1;\n-- migrate:up\nSELECT 2;\n", "SQL before the '-- migrate:up' header"),
        ("-- migrate:up\nSELECT 1;\n-- migrate:up\nSELECT 2;\n", "second '-- migrate:up'"),
        ("-- migrate:sideways\nSELECT 1;\n", "unknown section"),
    ],
)
def test_malformed_sections(text: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        parse(text)


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(SourceError, match=r"m\.sql:4: syntax error at or near \"SELEC\".*42601"):
        _ = parse("-- migrate:up\nSELECT 1;\n\nSELEC 2;\n").up


def test_non_utf8_names_the_line() -> None:
    with pytest.raises(SourceError, match=r"m\.sql:2: not valid UTF-8"):
        parse_sql_migration(P, b"-- migrate:up\nSELECT '\xff';\n")


def test_bom_is_accepted() -> None:
    assert len(parse_sql_migration(P, b"\xef\xbb\xbf-- migrate:up\nSELECT 1;\n").up.statements) == 1


def test_error_line_from_server_position() -> None:
    m = parse("-- migrate:up\nINSERT INTO t\nVALUES\n(nope);\n")
    stmt = m.up.statements[0]
    assert error_line(stmt, stmt.sql.index("nope") + 1) == 4
    assert error_line(stmt, None) == 2


# -- exact messages and line numbers (each names the file and the line a user must open) ------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("CREATE TABLE t (a int);\n", "m.sql:1: a SQL migration must start with a '-- migrate:up' section"),
        ("-- migrate:down\nSELECT 1;\n-- migrate:up\nSELECT 2;\n",
         "m.sql:1: a SQL migration must start with a '-- migrate:up' section (found migrate:down first)"),
        ("SELECT 1;\n-- migrate:up\nSELECT 2;\n", "m.sql:1: SQL before the '-- migrate:up' header"),
        ("-- migrate:up\nSELECT 1;\n\n-- migrate:up\nSELECT 2;\n", "m.sql:4: second '-- migrate:up' section"),
        ("-- migrate:up\nSELECT 1;\n-- migrate:sideways\n",
         "m.sql:3: unknown section '-- migrate:sideways' (expected migrate:up or migrate:down)"),
        ("-- migrate:up\nSELECT 1;\n-- migrate:down\nSELECT 2;\nSELEC 3;\n",
         'm.sql:5: syntax error at or near "SELEC" [SQLSTATE 42601]'),
        ("-- migrate:up\nSELECT (1;\n", 'm.sql:2: syntax error at or near ";" [SQLSTATE 42601]'),
    ],
)  # fmt: skip
def test_exact_messages(text: str, message: str) -> None:
    with pytest.raises(SourceError) as info:
        m = parse(text)
        _ = (m.up, m.down)  # sections are split when first used
    assert info.value.message == message


def test_comment_only_preamble_and_section_lines() -> None:
    m = parse(
        "  -- indented comment\n-- migrate:up transaction:true\r\nSELECT 1;\n"
        "-- migrate:down\n-- nothing to undo\n"
    )
    assert (m.up.transactional, m.up.line, m.up.direction) == (True, 2, "up")
    assert m.down is not None and (m.down.line, m.down.direction) == (4, "down")
    assert m.down.statements == () and m.down.transactional
    assert [(s.sql, s.line) for s in m.up.statements] == [("SELECT 1", 3)]
    assert parse("-- migrate:up\n").up.statements == ()


def test_size_limit_and_unreadable_file(tmp_path: Path) -> None:
    from runner.sqlfile import MAX_BYTES

    big = tmp_path / "big.sql"
    big.write_bytes(b"-- migrate:up\n")
    os.truncate(big, MAX_BYTES)  # exactly the limit is allowed (reading only the header)
    assert parse_sql_migration(big).up.line == 1
    os.truncate(big, MAX_BYTES + 2**20)
    with pytest.raises(SourceError) as info:
        parse_sql_migration(big)
    assert info.value.message == (
        f"{big}: 65 MiB is too large for a SQL migration (limit 64 MiB); "
        "load bulk data with COPY or psql"
    )
    with pytest.raises(SourceError) as info:
        parse_sql_migration(tmp_path / "gone.sql")
    assert (
        info.value.message
        == f"{tmp_path / 'gone.sql'}: cannot read migration file: No such file or directory"
    )


def test_non_utf8_message() -> None:
    with pytest.raises(SourceError) as info:
        parse_sql_migration(P, b"-- migrate:up\nSELECT 1;\nSELECT '\xff';\n")
    assert info.value.message == "m.sql:3: not valid UTF-8 (byte 0xff at offset 32)"


def test_error_line_counts_newlines_before_the_position() -> None:
    m = parse("-- migrate:up\nSELECT\n1,\n2;\n")
    stmt = m.up.statements[0]  # "SELECT\n1,\n2" from line 2
    assert [error_line(stmt, p) for p in (1, 7, 8, 9, 10, 11)] == [2, 2, 3, 3, 3, 4]
    assert error_line(stmt, 0) == 2


def test_declared_mode_is_none_true_or_false() -> None:
    m = parse("-- migrate:up\nSELECT 1;\n-- migrate:down transaction:true\nSELECT 2;\n")
    assert m.up.declared is None and m.down is not None and m.down.declared is True
    assert parse("-- migrate:up transaction:false\nVACUUM;\n").up.declared is False


def test_several_comment_lines_may_precede_the_header() -> None:
    m = parse("-- one\n-- two\n\n-- migrate:up\nSELECT 1;\n")
    assert (m.up.line, m.up.statements[0].line) == (4, 5)


def test_down_section_is_split_only_when_needed() -> None:
    # dbmate reads a down section only to roll back: a syntax error there must not block up
    m = parse("-- migrate:up\nCREATE TABLE t (a int);\n-- migrate:down\nDROP TABEL t;\n")
    assert [s.sql for s in m.up.statements] == ["CREATE TABLE t (a int)"]
    with pytest.raises(SourceError, match=r"m\.sql:4: syntax error at or near \"TABEL\""):
        _ = m.down


def test_unknown_section_options_are_ignored_with_a_notice() -> None:
    m = parse("-- migrate:up transaction:maybe foo:bar\nSELECT 1;\n-- migrate:down\nSELECT 2;\n")
    assert m.up.declared is None and m.up.transactional
    assert m.notices == (
        "m.sql:1: ignoring unknown section option 'transaction:maybe' "
        "(migrunner and dbmate know only transaction:false)",
        "m.sql:1: ignoring unknown section option 'foo:bar' "
        "(migrunner and dbmate know only transaction:false)",
    )


def test_folder_migration_files_are_plain_sql(tmp_path: Path) -> None:
    folder = tmp_path / "20240101-x"
    folder.mkdir()
    (folder / "up.sql").write_text("CREATE TABLE t (a int);\n\nINSERT INTO t VALUES (1);\n")
    m = parse_sql_migration(folder)
    assert [(s.line, s.file) for s in m.up.statements] == [
        (1, folder / "up.sql"),
        (3, folder / "up.sql"),
    ]
    assert m.down is None
    (folder / "down.sql").write_text("\nDROP TABL t;\n")
    with pytest.raises(SourceError, match=r"down\.sql:2: syntax error"):
        _ = parse_sql_migration(folder).down
