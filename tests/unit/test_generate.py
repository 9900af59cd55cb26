"""File names and skeletons of migration:generate / seed:generate; db:create's statement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from runner.dbadmin import create_sql
from runner.errors import ConfigError
from runner.generate import file_name, generate
from runner.sqlfile import parse_sql_migration

NOW = datetime(2024, 3, 5, 7, 8, 9, tzinfo=UTC)


def test_names_carry_the_utc_time_like_sequelize_cli() -> None:
    assert file_name("add-roles", sql=False, now=NOW) == "20240305070809-add-roles.js"
    local = NOW.astimezone(timezone(timedelta(hours=-5)))
    assert file_name("x", sql=True, now=local) == "20240305070809-x.sql"
    for bad in ("", "a/b", "two words", ".."):
        with pytest.raises(ConfigError):
            file_name(bad, sql=False, now=NOW)


def test_generate_never_overwrites_and_sql_skeleton_parses(tmp_path: Path) -> None:
    made = generate(tmp_path / "new", "migration", "raw", sql=True, now=NOW)
    parsed = parse_sql_migration(made)
    assert parsed.up.statements == () and parsed.down is not None
    with pytest.raises(ConfigError, match="already exists"):
        generate(tmp_path / "new", "migration", "raw", sql=True, now=NOW)
    js = generate(tmp_path / "new", "seeder", "demo", now=NOW).read_text()
    assert "async up (queryInterface, Sequelize)" in js and "bulkInsert" in js


def test_create_database_statement_quotes_every_option() -> None:
    assert create_sql('my"db', {}) == 'CREATE DATABASE "my""db"'
    assert create_sql(
        "d", {"encoding": "UTF8", "collate": "C", "ctype": "C", "template": "t0"}
    ) == ('CREATE DATABASE "d" ENCODING = "UTF8" LC_COLLATE = "C" LC_CTYPE = "C" TEMPLATE = "t0"')
