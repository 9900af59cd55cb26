"""The migration source: which files in the migrations folder are migrations, in what order.

Mirrors sequelize-cli (umzug v2): a flat folder, file names matching
``^(?!.*\\.d\\.ts$).*\\.(cjs|js|cts|ts)$`` are JS migrations, sorted by file name with
JavaScript's string comparison (UTF-16 code units), and the name stored in ``SequelizeMeta``
is the base name with its extension. migrunner adds to the same order:

* ``.mjs`` / ``.mts`` files (ESM and TypeScript, which sequelize-cli cannot load);
* ``.sql`` files whose name starts with a version (digits), dbmate's rule
  (``^(\\d+).*\\.sql$``): any other ``.sql`` file (a ``schema.sql`` dump, a helper script)
  is not a migration and is ignored with a notice, as dbmate ignores it;
* Sequelize v7's folder form: a sub-folder holding ``up.sql`` (and usually ``down.sql``) is one
  SQL migration named after the folder.

Decisions where sequelize-cli is silent or lax (documented in the README):

* other files (README.md, .gitkeep, sub-folders) are ignored, as sequelize-cli ignores them;
  a non-dotfile with an unknown extension is reported as a warning by the caller, except the
  by-products of compiling TypeScript (``.js.map``, ``.d.ts``...), which are skipped silently
  as sequelize-cli skips them;
* two migrations with the same stem (``001-x.js`` and ``001-x.sql``) or names equal after
  Unicode NFC normalisation are rejected: they are almost always a mistake, and SequelizeMeta
  could not tell them apart for a human;
* ``SequelizeMeta.name`` is VARCHAR(255): file names are at most 255 bytes on Linux, so
  every file name fits.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from runner.errors import SourceError

JS_PATTERN = re.compile(r"^(?!.*\.d\.[cm]?ts$).*\.(cjs|js|mjs|cts|ts|mts)$", re.DOTALL)
SQL_PATTERN = re.compile(r"^\d+.*\.sql$", re.DOTALL)
# compiler by-products next to compiled migrations: never migrations, never worth a warning
SILENT_PATTERN = re.compile(r"^.*(\.map|\.d\.[cm]?ts|\.tsbuildinfo)$", re.DOTALL)
#: the files of a Sequelize v7 folder migration
FOLDER_UP, FOLDER_DOWN = "up.sql", "down.sql"

Kind = Literal["sql", "js"]


def js_sort_key(name: str) -> bytes:
    """JavaScript compares strings by UTF-16 code units; UTF-16-BE bytes sort the same way."""
    return name.encode("utf-16-be", "surrogatepass")


@dataclass(frozen=True)
class Migration:
    name: str
    path: Path
    kind: Kind
    _checksum: list[str] = field(default_factory=list, compare=False, repr=False)

    @property
    def checksum(self) -> str:
        """sha256 of the file's bytes, computed once (history and drift checks)."""
        if not self._checksum:
            self._checksum.append(file_checksum(self.path))
        return self._checksum[0]


def file_checksum(path: Path) -> str:
    """sha256 of a migration file; of ``up.sql`` + ``down.sql`` for a folder migration."""
    try:
        if path.is_dir():
            digest = hashlib.sha256()
            for part in (FOLDER_UP, FOLDER_DOWN):
                if (path / part).is_file():
                    digest.update(part.encode() + b"\0" + (path / part).read_bytes() + b"\0")
            return digest.hexdigest()
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read migration file: {exc.strerror}") from exc


@dataclass(frozen=True)
class Source:
    """The migrations found in a folder, in run order, plus files that were skipped."""

    folder: Path
    migrations: tuple[Migration, ...]
    ignored: tuple[str, ...] = ()

    def by_name(self) -> dict[str, Migration]:
        return {m.name: m for m in self.migrations}

    def notices(self) -> list[str]:
        """One line per ignored file, saying why it is not a migration."""
        out = []
        for name in self.ignored:
            path = self.folder / name
            if name.endswith(".sql"):
                out.append(
                    f"ignoring {path}: a .sql migration's name starts with its version "
                    "(digits), as in dbmate"
                )
            else:
                out.append(f"ignoring {path}: not a .js/.cjs/.mjs/.ts/.cts/.mts/.sql migration")
        return out


def classify(name: str) -> Kind | None:
    if SQL_PATTERN.match(name):
        return "sql"
    if JS_PATTERN.match(name):
        return "js"
    return None


def discover(folder: Path) -> Source:
    """List the migrations in ``folder``; raise SourceError for an unusable folder."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        raise SourceError(f"migrations folder not found: {folder}") from None
    except NotADirectoryError:
        raise SourceError(f"migrations path is not a folder: {folder}") from None
    except PermissionError:
        raise SourceError(f"migrations folder is not readable: {folder}") from None
    migrations: list[Migration] = []
    ignored: list[str] = []
    for entry in entries:
        name = entry.name
        if entry.is_dir() and (Path(folder) / name / FOLDER_UP).is_file():
            migrations.append(Migration(name=name, path=Path(folder) / name, kind="sql"))
            continue
        kind = classify(name)
        if kind is None or not entry.is_file():
            if not name.startswith(".") and not entry.is_dir() and not SILENT_PATTERN.match(name):
                ignored.append(name)
            continue
        migrations.append(Migration(name=name, path=Path(folder) / name, kind=kind))
    migrations.sort(key=lambda m: js_sort_key(m.name))
    check_names([m.name for m in migrations], folder)
    return Source(Path(folder), tuple(migrations), tuple(sorted(ignored)))


def check_names(names: list[str], folder: Path) -> None:
    stems: dict[str, str] = {}
    normal: dict[str, str] = {}
    for name in names:
        stem = name.rsplit(".", 1)[0] if "." in name else name
        if stem in stems:
            raise SourceError(
                f"{folder}: duplicate migration name {stem!r}: {stems[stem]} and {name}"
            )
        stems[stem] = name
        nfc = unicodedata.normalize("NFC", name)
        if nfc in normal:
            raise SourceError(
                f"{folder}: migration names {normal[nfc]!r} and {name!r} differ only in "
                "Unicode normalisation"
            )
        normal[nfc] = name
