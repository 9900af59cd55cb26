"""dbmate's URL parameters that libpq does not know (pure parsing, no database)."""

from __future__ import annotations

import pytest

from runner.dburl import search_path_schema
from runner.errors import ConfigError
from runner.settings import CliOptions, resolve, url_to_conninfo


def test_dbmate_parameters_become_libpq_keywords() -> None:
    info = url_to_conninfo(
        "postgres://u:p@db:5433/app?sslmode=disable&search_path=a,b"
        "&binary_parameters=yes&statement_timeout=5s&options=-c%20work_mem%3D8MB",
        "DATABASE_URL",
    )
    assert info == {
        "user": "u",
        "password": "p",
        "host": "db",
        "port": "5433",
        "dbname": "app",
        "sslmode": "disable",
        "options": "-c work_mem=8MB -c search_path=a,b -c statement_timeout=5s",
    }


def test_socket_is_the_host_directory() -> None:
    info = url_to_conninfo("postgres://u@/app?socket=/var/run/postgresql", "DATABASE_URL")
    assert info["host"] == "/var/run/postgresql" and info["dbname"] == "app"


def test_spaces_in_values_are_escaped_for_options() -> None:
    info = url_to_conninfo("postgres://h/app?search_path=%22my%20s%22,public", "x")
    assert info["options"] == '-c search_path="my\\ s",public'


@pytest.mark.parametrize(
    ("url", "schema"),
    [
        ("postgres://h/app?search_path=Tenant,public", "tenant"),
        ("postgres://h/app?search_path=%22Tenant%22", "Tenant"),
        ("postgres://h/app?search_path=%24user,public", None),
        ("postgres://h/app?sslmode=disable", None),
    ],
)
def test_storage_schema_is_the_first_schema_of_the_search_path(
    url: str, schema: str | None
) -> None:
    assert search_path_schema(url) == schema
    settings = resolve(CliOptions(url=url), {})
    assert settings.schema == schema


def test_explicit_schema_wins_over_the_search_path() -> None:
    s = resolve(CliOptions(url="postgres://h/app?search_path=a,b", schema="meta"), {})
    assert s.schema == "meta"


def test_a_url_libpq_rejects_still_names_no_secret() -> None:
    with pytest.raises(ConfigError) as info:
        url_to_conninfo("postgres://u:s3cret%zz@h/app?search_path=a", "DATABASE_URL")
    assert "s3cret" not in info.value.message


def test_fleet_target_lines_with_a_search_path_are_schema_targets() -> None:
    from runner.fleet import parse_target_lines

    one, two = parse_target_lines(
        ["postgres://h/app?search_path=t1,public", "postgres://h/app?search_path=t2,public"], "x"
    )
    assert (one.schema, two.schema) == ("t1", "t2")
    assert one.key != two.key
    assert one.conninfo["options"] == "-c search_path=t1,public"
