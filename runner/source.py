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
from collections.abc import Sequence
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
    """sha256 of a migration file; of ``up.sql`` + ``down.sql`` for a folder migration.

    A file is read with plain ``os`` calls and a 64 KiB buffer: a no-op run hashes every
    applied file (drift detection), and ``Path.read_bytes`` costs about twice as much per
    small file (buffered ``io`` objects, an ``fstat``)."""
    try:
        if path.is_dir():
            digest = hashlib.sha256()
            for part in (FOLDER_UP, FOLDER_DOWN):
                if (path / part).is_file():
                    digest.update(part.encode() + b"\0" + (path / part).read_bytes() + b"\0")
            return digest.hexdigest()
        return _hash_fd(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        raise SourceError(f"{path}: cannot read migration file: {exc.strerror}") from exc


def _hash_fd(fd: int) -> str:
    try:
        digest = hashlib.sha256()
        while chunk := os.read(fd, 65536):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def hash_all(migrations: Sequence[Migration]) -> None:
    """Fill the checksum of every migration not hashed yet, opening each file relative to its
    folder (``openat``: the kernel does not walk the whole path again for each of 10,000
    files, ≈ half the system time). A file that cannot be read is left unhashed: reading it
    again through :attr:`Migration.checksum` raises the error where it is needed."""
    dirs: dict[str, int] = {}
    try:
        for m in migrations:
            if m._checksum:
                continue
            folder, sep, base = os.fspath(m.path).rpartition("/")
            folder = (folder or "/") if sep else "."
            try:
                dfd = dirs.get(folder)
                if dfd is None:
                    dfd = dirs[folder] = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
                checksum = _hash_fd(os.open(base, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd))
            except OSError:
                continue
            if not m._checksum:
                m._checksum.append(checksum)
    finally:
        for dfd in dirs.values():
            os.close(dfd)


class Prehash:
    """Hash every migration in a thread while the main one connects and reads the state.

    Why every file and not only the applied ones: a run needs all of them anyway — applied
    files for drift detection, pending ones for their history row — and at the moment the
    thread starts, nothing is known yet about which is which. File reads release the GIL, so
    on two cores the hashing (≈ 45 ms of CPU for 10,000 files) mostly disappears behind
    the connection and the ``SequelizeMeta`` read. :meth:`wait` before the first checksum is
    used; whatever the thread did not do is done lazily by :attr:`Migration.checksum`.

    With ``digest``, the thread first takes the folder's stat digest (runner/verified.py) and
    then waits: :meth:`skip` when the database has a matching verification (no hashing at
    all: ≈ 30 ms of stat instead of ≈ 80 ms of reading on every pod start), :meth:`start`
    (or :meth:`wait`) to hash. A size/mtime cache alone would be unsound (image builds
    normalise mtimes, so an edited file can keep both); the digest adds ctime and inode,
    which user space cannot set back.
    """

    def __init__(self, migrations: Sequence[Migration], digest: bool = False) -> None:
        import threading

        self.digest: str | None = None
        self.digested = threading.Event()
        self.go = threading.Event()
        self.hashing = True
        if not digest:
            self.digested.set()
            self.go.set()
        self.thread = threading.Thread(
            target=self._run, args=(migrations, digest), name="migrunner-prehash", daemon=True
        )
        self.thread.start()

    def _run(self, migrations: Sequence[Migration], digest: bool) -> None:
        if digest:
            from runner.verified import folder_digest

            try:
                self.digest = folder_digest(migrations)
            finally:
                self.digested.set()
            self.go.wait()
        if self.hashing:
            hash_all(migrations)

    def folder(self) -> str | None:
        """The stat digest taken before any file was read (None: not taken, or not usable)."""
        self.digested.wait()
        return self.digest

    def start(self) -> None:
        self.go.set()

    def skip(self) -> None:
        """No hashing: a recorded verification covers the folder (checksums stay lazy)."""
        if not self.go.is_set():
            self.hashing = False
            self.go.set()

    def wait(self) -> None:
        self.go.set()
        self.thread.join()


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
    base = Path(folder)  # parsed once: a Path per entry built from it costs a third as much
    # pathlib's own constructor for a child with a plain name (what iterdir() uses), where the
    # running Python has it: no parsing of the name at all (10,000 entries: ≈ −8 ms)
    child = getattr(base, "_make_child_relpath", base.joinpath)
    for entry in entries:
        name = entry.name
        check_entry(entry, folder)
        if entry.is_dir() and (Path(folder) / name / FOLDER_UP).is_file():
            migrations.append(Migration(name=name, path=Path(folder) / name, kind="sql"))
            continue
        kind = classify(name)
        if kind is None or not entry.is_file():
            if not name.startswith(".") and not entry.is_dir() and not SILENT_PATTERN.match(name):
                ignored.append(name)
            continue
        migrations.append(Migration(name=name, path=child(name), kind=kind))
    if all(m.name.isascii() for m in migrations):
        migrations.sort(key=lambda m: m.name)  # same order as UTF-16 code units, 3× cheaper
    else:
        migrations.sort(key=lambda m: js_sort_key(m.name))
    check_names([m.name for m in migrations], folder)
    return Source(Path(folder), tuple(migrations), tuple(sorted(ignored)))


def check_entry(entry: os.DirEntry[str], folder: Path) -> None:
    """Refuse, before anything runs, what would otherwise fail half-way or be skipped
    silently: a symlink to nothing (a ConfigMap volume's files are symlinks; a half-updated
    one must not look like a folder with a migration missing) and a file name that is not
    UTF-8 (it could never be stored in SequelizeMeta)."""
    name = entry.name
    if name.startswith("."):
        return  # ConfigMap's own ..data links, editors' dotfiles: never migrations
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(name)
        raise SourceError(
            f"{folder}: file name {ascii(raw)[1:]} is not valid UTF-8: rename it"
        ) from None
    if entry.is_symlink() and not os.path.exists(entry.path):
        target = os.readlink(entry.path)
        raise SourceError(
            f"{folder / name}: dangling symlink (to {target}): the migrations folder is "
            "incomplete; nothing was run"
        )


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
        nfc = name if name.isascii() else unicodedata.normalize("NFC", name)
        if nfc in normal:
            raise SourceError(
                f"{folder}: migration names {normal[nfc]!r} and {name!r} differ only in "
                "Unicode normalisation"
            )
        normal[nfc] = name
