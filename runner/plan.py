"""Pure planning: what to run, in which order, from the folder and the applied names.

No I/O here (alembic's lesson): everything is a function of the migrations found on disk and
the names recorded in SequelizeMeta, so it is unit-tested without a database.

Semantics follow sequelize-cli:

* ``up`` runs every pending migration in file-name order; ``--to NAME`` stops after NAME.
  NAME must exist in the folder; if it is already applied there is nothing to do.
* ``down`` reverts applied migrations newest first: one by default (``db:migrate:undo``),
  ``--step N``, ``--to NAME`` (down to and including NAME, as ``db:migrate:undo:all --to``),
  ``--all``, or ``--name NAME`` (exactly that one, as ``db:migrate:undo --name``).
* Targets (``--to``, ``--name``) match like umzug v2: the exact file name, else the first
  migration whose name starts with the given text (``20240101000006`` or a name without
  ``.js``). Unlike sequelize-cli, ``up --to`` a name that matches nothing is an error (exit 2)
  rather than a silent "nothing to do".
* Applied names are ordered by the same file-name order as the folder, so an applied name
  whose file is gone still has a place in the order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from runner.errors import SourceError
from runner.source import Migration, js_sort_key

Direction = Literal["up", "down"]


@dataclass(frozen=True)
class Plan:
    direction: Direction
    steps: tuple[Migration, ...]
    note: str = ""  # why the plan is empty, when it is

    def __bool__(self) -> bool:
        return bool(self.steps)


@dataclass(frozen=True)
class Drift:
    """Applied migrations whose file is missing, or changed since migrunner applied it."""

    missing: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.missing or self.changed)

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append("applied but file missing: " + ", ".join(self.missing))
        if self.changed:
            parts.append("file changed since applied: " + ", ".join(self.changed))
        return "; ".join(parts)


def find(names: Sequence[str], needle: str) -> str | None:
    """umzug v2's rule: the exact name, else the first name (in run order) starting with
    ``needle`` — so ``--name 20240101000006`` or a name without ``.js`` works as in
    sequelize-cli."""
    if needle in names:
        return needle
    ordered = sorted(names, key=js_sort_key)
    return next((n for n in ordered if n.startswith(needle)), None) if needle else None


def pending(available: Sequence[Migration], applied: Sequence[str]) -> list[Migration]:
    done = set(applied)
    return [m for m in available if m.name not in done]


def ordered_applied(applied: Sequence[str]) -> list[str]:
    names = set(applied)
    if all(n.isascii() for n in names):
        return sorted(names)  # the same order as UTF-16 code units, 3× cheaper
    return sorted(names, key=js_sort_key)


def plan_up(
    available: Sequence[Migration],
    applied: Sequence[str],
    to: str | None = None,
    *,
    from_: str | None = None,
    name: str | None = None,
) -> Plan:
    """``up``; ``from_`` and ``name`` are ``db:migrate --from`` / ``--name`` (see
    :func:`select_from` and :func:`select_name`)."""
    todo = pending(available, applied)
    if name is not None:
        return select_name(available, todo, name, to, from_)
    if from_ is not None:
        todo = select_from(available, todo, from_)
        if to is not None and not any(m.name.startswith(to) for m in todo):
            return Plan("up", (), note=f"Migration {to} is not pending after {from_}")
    if to is not None:
        found = find([m.name for m in available], to)
        if found is None:
            raise SourceError(f"--to {to!r}: no such migration in the migrations folder")
        to = found
        if to in set(applied):
            return Plan("up", (), note=f"Migration {to} is not pending")
        idx = next(i for i, m in enumerate(todo) if m.name == to)
        todo = todo[: idx + 1]
    if not todo:
        return Plan("up", (), note=UP_TO_DATE)
    return Plan("up", tuple(todo))


UP_TO_DATE = "No migrations were executed, database schema was already up to date."


def select_name(
    available: Sequence[Migration],
    todo: list[Migration],
    name: str,
    to: str | None,
    from_: str | None,
) -> Plan:
    """``db:migrate --name NAME``: only that migration, found like umzug v2 finds it (exact
    name, else the first whose name starts with NAME); it must be pending. As in sequelize-cli
    it runs even when earlier migrations are pending, and a database with nothing pending at
    all answers "up to date" before NAME is looked at."""
    if to is not None or from_ is not None:
        raise SourceError("--name cannot be combined with --to or --from")
    if not todo:
        return Plan("up", (), note=UP_TO_DATE)
    found = find([m.name for m in available], name)
    if found is None:
        raise SourceError(f"--name {name!r}: no such migration in the migrations folder")
    chosen = next((m for m in todo if m.name == found), None)
    if chosen is None:
        raise SourceError(f"--name {name!r}: migration {found} is not pending")
    return Plan("up", (chosen,))


def select_from(
    available: Sequence[Migration], todo: list[Migration], from_: str
) -> list[Migration]:
    """``db:migrate --from NAME``: the pending migrations AFTER NAME (NAME itself excluded),
    as sequelize-cli 6.6.5 + umzug v2 do. sequelize-cli requires NAME to be the exact name of
    a pending migration and otherwise runs nothing ("up to date"); so does migrunner."""
    if from_ not in {m.name for m in todo}:
        return []
    names = [m.name for m in available]
    start = next(i for i, n in enumerate(names) if n.startswith(from_))
    after = set(names[start + 1 :])
    return [m for m in todo if m.name in after]


def plan_down(
    available: Sequence[Migration],
    applied: Sequence[str],
    *,
    step: int | None = None,
    to: str | None = None,
    all: bool = False,
    name: str | None = None,
) -> Plan:
    chosen = [x is not None for x in (step, to, name)].count(True) + int(all)
    if chosen > 1:
        raise SourceError("down: give at most one of --step, --to, --all, --name")
    if step is not None and step < 1:
        raise SourceError(f"--step must be at least 1 (got {step})")
    by_name = {m.name: m for m in available}
    done = ordered_applied(applied)
    if not done:
        return Plan("down", (), note="No executed migrations found.")
    if name is not None:
        found = find(done, name)
        if found is None:
            raise SourceError(f"--name {name!r}: migration is not applied")
        targets = [found]
    elif to is not None:
        found = find(done, to)
        if found is None:
            raise SourceError(f"--to {to!r}: migration is not applied")
        targets = list(reversed(done[done.index(found) :]))
    elif all:
        targets = list(reversed(done))
    else:
        targets = list(reversed(done))[: step or 1]
    missing = [t for t in targets if t not in by_name]
    if missing:
        raise SourceError(
            "cannot revert applied migrations whose file is missing: " + ", ".join(missing)
        )
    return Plan("down", tuple(by_name[t] for t in targets))


def drift(
    available: Sequence[Migration], applied: Sequence[str], checksums: Mapping[str, str]
) -> Drift:
    """Compare files with what was applied. ``checksums``: name → sha256 at apply time (only
    migrations applied by migrunner have one; sequelize-cli's have none and are not judged)."""
    by_name = {m.name: m for m in available}
    ordered = ordered_applied(applied)  # once: 10,000 names cost ≈ 10 ms to sort this way
    missing = tuple(n for n in ordered if n not in by_name)
    if not checksums:  # nothing to compare (a recorded verification covers it: verified.py)
        return Drift(missing, ())
    changed = tuple(
        n
        for n in ordered
        if n in by_name and n in checksums and by_name[n].checksum != checksums[n]
    )
    return Drift(missing, changed)
