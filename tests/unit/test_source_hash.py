"""The no-op path's hashing (issue 16): batch and background hashing give the same checksums as
hashing one file at a time, and a file that cannot be read still fails where it is used."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from runner.errors import SourceError
from runner.source import Prehash, discover, hash_all


def write(folder: Path, n: int) -> None:
    for i in range(n):
        body = f"-- migrate:up\nCREATE TABLE t{i} (id int);\n" + "x" * (i * 7000)
        (folder / f"{i:03d}-t{i}.sql").write_text(body)


def test_hash_all_and_prehash_match_sha256(tmp_path: Path) -> None:
    write(tmp_path, 12)  # the largest file spans several 64 KiB reads
    expected = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.glob("*.sql")}
    src = discover(tmp_path)
    hash_all(src.migrations)
    assert {m.name: m._checksum for m in src.migrations} == {n: [h] for n, h in expected.items()}
    again = discover(tmp_path)
    pre = Prehash(again.migrations)
    pre.wait()
    assert {m.name: m.checksum for m in again.migrations} == expected


def test_vanished_file_fails_where_used(tmp_path: Path) -> None:
    write(tmp_path, 2)
    src = discover(tmp_path)
    (tmp_path / "001-t1.sql").unlink()  # gone between listing and hashing
    hash_all(src.migrations)
    m = next(m for m in src.migrations if m.name == "001-t1.sql")
    assert not m._checksum
    with pytest.raises(SourceError, match="cannot read migration file"):
        _ = m.checksum


def test_folder_migration_is_hashed_lazily(tmp_path: Path) -> None:
    write(tmp_path, 1)
    folder = tmp_path / "002-folder"
    folder.mkdir()
    (folder / "up.sql").write_text("CREATE TABLE f (id int);\n")
    src = discover(tmp_path)
    hash_all(src.migrations)  # a directory cannot be read as one file: left to .checksum
    m = next(m for m in src.migrations if m.name == "002-folder")
    assert not m._checksum
    assert len(m.checksum) == 64
