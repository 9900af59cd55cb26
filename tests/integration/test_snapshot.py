"""The V8 startup snapshot of sequelize: built by ``migrunner snapshot``, used when valid, and
never the reason a run fails (a blob node cannot start from is discarded)."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from tests.conftest import FIXTURES, ROOT, run_cli
from tests.support.catalog import Fingerprint, app_schemas, diff_fingerprints, fingerprint
from tests.support.state import meta_rows

FORUM = FIXTURES / "forum"
FORUM_MIGRATIONS = FORUM / "src" / "migrations"
OWN_REQUIRE = FIXTURES / "snapshot"
USED = "(startup snapshot)"


def blobs(cache: Path) -> list[Path]:
    return sorted(cache.glob("*/snapshot.blob"))


def build(cache: Path, migrations: Path) -> Path:
    done = run_cli(
        "snapshot",
        "--migrations-path",
        str(migrations),
        env={"MIGRUNNER_SNAPSHOT_DIR": str(cache)},
    )
    assert done.returncode == 0, done.stderr
    assert f"written to {cache}" in done.stdout + done.stderr
    (blob,) = blobs(cache)
    return blob


def up(url: str, migrations: Path, cache: Path, **env: str) -> tuple[int, str]:
    done = run_cli(
        "up",
        "--url",
        url,
        "--migrations-path",
        str(migrations),
        env={"MIGRUNNER_SNAPSHOT_DIR": str(cache), **env},
    )
    return done.returncode, done.stdout + done.stderr


def end_state(url: str) -> tuple[Fingerprint, list[str]]:
    with psycopg.connect(url) as conn:
        # timestamps the migration wrote with new Date() differ between runs
        fp = fingerprint(
            conn, schemas=app_schemas(conn), data=True, ignore_columns={"createdAt", "updatedAt"}
        )
    return fp, meta_rows(url)


def test_forum_from_a_snapshot_ends_exactly_as_without(
    tmp_path: Path, db_url: str, pg_server: str
) -> None:
    from tests.support.pg import create_database, drop_database_soon

    cache = tmp_path / "cache"
    build(cache, FORUM_MIGRATIONS)
    code, out = up(db_url, FORUM_MIGRATIONS, cache)
    assert code == 0, out
    assert USED in out
    plain_url = create_database(pg_server)
    try:
        code, out = up(plain_url, FORUM_MIGRATIONS, cache, MIGRUNNER_SNAPSHOT="0")
        assert code == 0, out
        assert USED not in out
        (snap_fp, snap_meta), (plain_fp, plain_meta) = end_state(db_url), end_state(plain_url)
        assert snap_meta == plain_meta
        assert snap_fp == plain_fp, diff_fingerprints(snap_fp, plain_fp, ("snapshot", "plain"))
    finally:
        drop_database_soon(pg_server, plain_url)


def test_a_migrations_own_require_gets_the_snapshot_instance(tmp_path: Path, db_url: str) -> None:
    cache = tmp_path / "cache"
    build(cache, OWN_REQUIRE)  # the shim's pinned sequelize: the folder has no node_modules
    code, out = up(db_url, OWN_REQUIRE, cache)
    assert code == 0, out
    assert USED in out
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT label FROM snap_widgets ORDER BY id").fetchall()
    assert rows == [("a",), ("b",)]


def test_a_corrupt_blob_is_discarded_and_the_run_succeeds(tmp_path: Path, db_url: str) -> None:
    cache = tmp_path / "cache"
    blob = build(cache, OWN_REQUIRE)
    blob.write_bytes(b"not a snapshot" * 1000)
    code, out = up(db_url, OWN_REQUIRE, cache)
    assert code == 0, out
    assert f"node could not start from {blob}, discarded" in out
    assert USED not in out
    assert blobs(cache) == []
    assert list(meta_rows(db_url)) == ["20240101000000-own-require.js"]


def test_a_changed_file_makes_the_blob_unused(tmp_path: Path, db_url: str) -> None:
    cache = tmp_path / "cache"
    blob = build(cache, OWN_REQUIRE)
    manifest = blob.parent / "manifest.json"
    data = json.loads(manifest.read_text())
    assert any(f[0].endswith("/sequelize/lib/index.js") for f in data["files"])
    data["files"][0][2] += 1  # as if that file had been edited after the build
    manifest.write_text(json.dumps(data))
    code, out = up(db_url, OWN_REQUIRE, cache)
    assert code == 0, out
    assert USED not in out


def test_build_mode_builds_on_a_miss(tmp_path: Path, db_url: str) -> None:
    cache = tmp_path / "cache"
    code, out = up(db_url, OWN_REQUIRE, cache, MIGRUNNER_SNAPSHOT="build")
    assert code == 0, out
    assert USED in out
    assert len(blobs(cache)) == 1


def test_no_blob_means_a_plain_start(tmp_path: Path, db_url: str) -> None:
    code, out = up(db_url, OWN_REQUIRE, tmp_path / "empty")
    assert code == 0, out
    assert USED not in out
    assert not (tmp_path / "empty").exists()  # nothing is built implicitly


def test_snapshot_without_sequelize_anywhere_is_one_line_exit_2(tmp_path: Path) -> None:
    done = run_cli(
        "snapshot",
        "--migrations-path",
        str(tmp_path),
        env={"MIGRUNNER_SNAPSHOT_DIR": str(tmp_path / "c"), "MIGRUNNER_NODE": str(ROOT / "nope")},
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
