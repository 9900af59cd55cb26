"""Drift detection without re-hashing an unchanged folder: the record of a verification.

Every run checks that each applied migration's file still has the checksum it was applied
with. With 10,000 applied files that is ≈ 45–80 ms of CPU reading and hashing, plus a 45 ms
query for the history's checksums (``DISTINCT ON`` over every history row), on every pod
start. So after a run has verified the whole folder against the database and found no drift,
it records (best effort) what it verified, in ``migrunner_verified`` next to SequelizeMeta:

* ``folder``: a digest of the *stat* of every migration file — name, size, ``st_mtime_ns``,
  ``st_ctime_ns``, ``st_ino`` — taken BEFORE the files were read;
* ``applied``: a digest of SequelizeMeta's names;
* ``history``: count, largest id and a sum of row hashes of this storage's history rows.

A later run whose folder stat digest, SequelizeMeta and history all match a recorded row has
the files, the applied set and the checksums that were verified, so it has no drift either: it
skips the checksum query and the hashing. Anything else (first run on a node, another image, a
new migration applied, sequelize-cli's rows, a hand-edited history row) misses, and the run
verifies in full as before — and records its own row if it finds no drift.

Why this is sound where a size/mtime cache is not (a previous analysis rejected one: image
builds normalise mtimes, so an edited file can keep size and mtime):

* ``st_ctime`` cannot be set from user space: any change of a file's content or metadata
  sets it to the current time, and a replaced file is a new inode with its own ctime. The
  stats are taken before the contents are hashed, so a change after the stat — even during
  the hashing — shows in the next run's digest.
* Timestamps are coarse (a jiffy on ext4/xfs/tmpfs/overlayfs, 1 s on some file systems): a
  change within the same tick as a file's previous change could keep its ctime. Like git's
  "racily clean" entries, a folder with a file changed less than :data:`RACY_NS` before the
  stat is never recorded as verified (nor trusted).
* Rows are keyed by the folder digest, so each node (whose image layers have their own inode
  numbers and ctimes) keeps its own row; a folder that is new in every pod (a ConfigMap
  volume) simply never hits, and pays one extra small write per start.

It assumes a POSIX file system where ctime means "changed" (not vfat, whose ctime is the
creation time). Writing is best effort: a read-only user, a standby, a missing table (created
by the next ``up`` that applies something) only mean that the next run verifies in full.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner.db import qualified

if TYPE_CHECKING:
    from runner.source import Migration

VERIFIED_TABLE = "migrunner_verified"
#: newer changes than this (before the stat) are "racy": see the module docstring
RACY_NS = 2_000_000_000
#: rows kept per storage table (one per node / image with the current database state)
KEEP = 16


def folder_digest(migrations: Sequence[Migration]) -> str | None:
    """The stat digest of the migration files, or None when it cannot be trusted (a file
    changed less than :data:`RACY_NS` ago, or one cannot be stat'ed). ≈ 3 µs per file, of
    which the ``stat`` call is 2: fields packed, hashed once, the newest change taken once."""
    now = time.time_ns()
    pack = _PACK.pack
    parts: list[bytes] = []
    changed: list[int] = []
    dirs: dict[str, int] = {}
    try:
        for m in migrations:
            folder, sep, base = os.fspath(m.path).rpartition("/")
            folder = (folder or "/") if sep else "."
            dfd = dirs.get(folder)
            if dfd is None:
                dfd = dirs[folder] = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
            st = os.stat(base, dir_fd=dfd)
            if stat.S_ISDIR(st.st_mode):  # a folder migration: its files
                for part in ("up.sql", "down.sql"):
                    sub = _stat_or_none(os.path.join(m.path, part))
                    if sub is None:
                        parts.append(b"-")
                        continue
                    parts.append(pack(sub.st_size, sub.st_mtime_ns, sub.st_ctime_ns, sub.st_ino))
                    changed += (sub.st_ctime_ns, sub.st_mtime_ns)
            else:
                parts.append(pack(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
                changed += (st.st_ctime_ns, st.st_mtime_ns)
            parts.append(m.name.encode("utf-8", "surrogateescape") + b"\0")
    except OSError:
        return None
    finally:
        for dfd in dirs.values():
            os.close(dfd)
    if changed and now - max(changed) < RACY_NS:
        return None
    return hashlib.sha256(b"".join(parts)).hexdigest()


_PACK = struct.Struct("<qqqQ")


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def applied_digest(names: Iterable[str]) -> str:
    """SequelizeMeta's names, in any order (each path reads them in its own)."""
    text = "\0".join(sorted(names))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class VerifiedTable:
    """``migrunner_verified``: verified (folder, applied, history) marks per storage table."""

    storage: str  # the SequelizeMeta these rows belong to, as the history keys it
    schema: str | None = None

    @property
    def ref(self) -> str:
        return qualified(self.schema, VERIFIED_TABLE)

    def create_sql(self) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self.ref} (storage_table text NOT NULL, "
            "folder text NOT NULL, applied text NOT NULL, history text NOT NULL, "
            "verified_at timestamptz NOT NULL DEFAULT pg_catalog.now(), "
            "PRIMARY KEY (storage_table, folder))"
        )

    def rows_sql(self, placeholder: str) -> str:
        """One JSON value: ``[[folder, applied, history], ...]`` of this storage table."""
        return (
            "(SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(v.folder, "
            f"v.applied, v.history)), '[]') FROM {self.ref} v "
            f"WHERE v.storage_table = {placeholder})"
        )

    def record_sql(self, ph: Sequence[str] = ("$1", "$2", "$3", "$4")) -> tuple[str, str]:
        """Two statements, ``ph`` the placeholders of (storage, folder, applied, history):
        drop this storage's rows of another database state (and all but the newest
        :data:`KEEP`), then upsert this one."""
        storage, folder, applied, history = ph
        prune = (
            f"DELETE FROM {self.ref} WHERE storage_table = {storage} AND folder <> {folder} "
            f"AND (applied <> {applied} OR history <> {history} OR folder NOT IN (SELECT "
            f"folder FROM {self.ref} WHERE storage_table = {storage} "
            f"ORDER BY verified_at DESC LIMIT {KEEP - 1}))"
        )
        upsert = (
            f"INSERT INTO {self.ref} (storage_table, folder, applied, history) "
            f"VALUES ({storage}, {folder}, {applied}, {history}) "
            "ON CONFLICT (storage_table, folder) DO UPDATE "
            "SET applied = EXCLUDED.applied, history = EXCLUDED.history, "
            "verified_at = pg_catalog.now()"
        )
        return prune, upsert


def history_mark_sql(history_ref: str, placeholder: str) -> str:
    """The history's state for one storage table, cheaply (no sort): count, largest id and a
    sum of row hashes — a new, deleted or edited row changes it."""
    return (
        "(SELECT pg_catalog.count(*) || ':' || coalesce(pg_catalog.max(h.id), 0) || ':' || "
        "coalesce(pg_catalog.sum(pg_catalog.hashtext(h.name || ':' || h.direction || ':' || "
        "h.outcome || ':' || coalesce(h.checksum, ''))), 0) "
        f"FROM {history_ref} h WHERE h.storage_table = {placeholder})"
    )


def matches(rows: Sequence[Sequence[str]], folder: str | None, applied: str, history: str) -> bool:
    """Whether a recorded verification covers this folder and database state."""
    if folder is None:
        return False
    return any(list(r) == [folder, applied, history] for r in rows)
