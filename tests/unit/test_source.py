"""Migration discovery mirrors sequelize-cli's folder rules. Real files in tmp dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import SourceError
from runner.source import classify, discover, js_sort_key


def touch(folder: Path, *names: str) -> None:
    for n in names:
        (folder / n).write_text("")


def test_patterns_match_sequelize_cli() -> None:
    assert classify("001-x.js") == "js"
    assert classify("001-x.cjs") == "js"
    assert classify("001-x.ts") == "js"
    assert classify("001-x.cts") == "js"
    assert classify("001-x.d.ts") is None
    assert classify("001-x.sql") == "sql"
    assert classify("001-x.mjs") == "js"
    assert classify("001-x.mts") == "js"
    assert classify("001-x.d.mts") is None
    assert classify("README.md") is None
    # dbmate's rule: a .sql migration's name starts with its version
    assert classify("schema.sql") is None
    assert classify("v2-x.sql") is None


def test_discover_orders_by_name_and_ignores_others(tmp_path: Path) -> None:
    touch(tmp_path, "b.js", "1-a.sql", "10-x.js", "9-x.js", "types.d.ts", "README.md", ".keep")
    touch(tmp_path, "b.js.map", "c.d.cts", "schema.sql")
    (tmp_path / "sub").mkdir()
    touch(tmp_path / "sub", "000-hidden.js")
    src = discover(tmp_path)
    assert [m.name for m in src.migrations] == ["1-a.sql", "10-x.js", "9-x.js", "b.js"]
    # compiler by-products are skipped silently; schema.sql is named with dbmate's reason
    assert src.ignored == ("README.md", "schema.sql")
    assert src.notices() == [
        f"ignoring {tmp_path / 'README.md'}: not a .js/.cjs/.mjs/.ts/.cts/.mts/.sql migration",
        f"ignoring {tmp_path / 'schema.sql'}: a .sql migration's name starts with its version "
        "(digits), as in dbmate",
    ]


def test_folder_migration_is_one_sql_migration(tmp_path: Path) -> None:
    (tmp_path / "20240102-users").mkdir()
    (tmp_path / "20240102-users" / "up.sql").write_text("CREATE TABLE u (id int);")
    (tmp_path / "20240102-users" / "down.sql").write_text("DROP TABLE u;")
    (tmp_path / "20240103-empty").mkdir()  # no up.sql: not a migration
    touch(tmp_path, "20240101-a.js")
    src = discover(tmp_path)
    assert [(m.name, m.kind) for m in src.migrations] == [
        ("20240101-a.js", "js"),
        ("20240102-users", "sql"),
    ]
    first = src.migrations[1].checksum
    (tmp_path / "20240102-users" / "down.sql").write_text("DROP TABLE u CASCADE;")
    assert discover(tmp_path).migrations[1].checksum != first


def test_sort_is_javascript_utf16_order(tmp_path: Path) -> None:
    # U+FF21 (fullwidth A) is one UTF-16 unit; U+1F600 (emoji) is a surrogate pair 0xD83D...
    # JavaScript sorts the emoji first; code point order would put it last.
    a, b = "\U0001f600.js", "\uff21.js"
    assert sorted([b, a], key=js_sort_key) == [a, b]
    assert sorted([b, a]) == [b, a]
    touch(tmp_path, a, b, "é-001.js")
    assert [m.name for m in discover(tmp_path).migrations] == ["é-001.js", a, b]


def test_missing_and_non_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="migrations folder not found"):
        discover(tmp_path / "nope")
    touch(tmp_path, "file")
    with pytest.raises(SourceError, match="not a folder"):
        discover(tmp_path / "file")


def test_duplicate_stems_rejected(tmp_path: Path) -> None:
    touch(tmp_path, "001-init.js", "001-init.sql")
    with pytest.raises(SourceError, match="duplicate migration name '001-init'"):
        discover(tmp_path)


def test_unicode_normalisation_twins_rejected(tmp_path: Path) -> None:
    touch(tmp_path, "caf\u00e9.js", "cafe\u0301.js")
    with pytest.raises(SourceError, match="Unicode normalisation|duplicate"):
        discover(tmp_path)


def test_discovered_migrations_carry_path_kind_and_folder(tmp_path: Path) -> None:
    touch(tmp_path, "001-a.sql", "002-b.cjs")
    src = discover(tmp_path)
    assert src.folder == tmp_path
    assert [(m.name, m.path, m.kind) for m in src.migrations] == [
        ("001-a.sql", tmp_path / "001-a.sql", "sql"),
        ("002-b.cjs", tmp_path / "002-b.cjs", "js"),
    ]


def test_stems_split_at_the_last_dot(tmp_path: Path) -> None:
    touch(tmp_path, "001.a.js", "001.b.sql")  # different stems: "001.a" and "001.b"
    assert len(discover(tmp_path).migrations) == 2


def test_name_clash_messages(tmp_path: Path) -> None:
    touch(tmp_path, "001-init.js", "001-init.sql")
    with pytest.raises(SourceError) as info:
        discover(tmp_path)
    assert (
        info.value.message
        == f"{tmp_path}: duplicate migration name '001-init': 001-init.js and 001-init.sql"
    )
    other = tmp_path / "other"
    other.mkdir()
    touch(other, "caf\u00e9.js", "cafe\u0301.js")
    with pytest.raises(SourceError) as info:
        discover(other)
    first, second = sorted(["caf\u00e9.js", "cafe\u0301.js"], key=js_sort_key)
    assert info.value.message == (
        f"{other}: migration names {first!r} and {second!r} differ only in Unicode normalisation"
    )


def test_sort_key_accepts_undecodable_file_names() -> None:
    # os.scandir gives undecodable bytes as lone surrogates (surrogateescape)
    assert js_sort_key("a\udcff.js") == "a\udcff.js".encode("utf-16-be", "surrogatepass")
    assert sorted(["b.js", "a\udcff.js"], key=js_sort_key) == ["a\udcff.js", "b.js"]


def test_unreadable_file_is_named() -> None:
    from runner.source import file_checksum

    # (an unreadable folder needs a non-root user: test_bad_input drops DAC override for it)
    with pytest.raises(SourceError) as info:
        file_checksum(Path("/nonexistent/gone.js"))
    assert info.value.message == (
        "/nonexistent/gone.js: cannot read migration file: No such file or directory"
    )
