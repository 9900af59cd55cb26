"""What a rehearsal observed, the rules that judge it, and the report (``up --dry-run --analyze``).

Pure: no I/O. :mod:`runner.observe` fills the dataclasses below from the database (locks from
``pg_locks``, rewrites from ``pg_class.relfilenode``, rows from command tags); this module turns
them into findings with stable rule names, a JSON document whose names CI pipelines parse, and
a compact human table.

Why rules combine observation and the statement's parse tree: the database says WHAT happened
(ShareLock on a table, a new relfilenode) but not always WHY (a FOREIGN KEY's validation scan
leaves no trace in the catalogs); the parse tree says why, the observation says whether it
matters (the table existed before the run and has rows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

#: PostgreSQL's table lock modes, weakest first (the order of the conflict table).
LOCK_MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)
RULES = (
    "table-rewrite",
    "blocking-index",
    "fk-validation",
    "not-null-scan",
    "access-exclusive-held",
    "enum-in-transaction",
    "lock-blocked",
)
#: Statements that change nothing a later reader could wait on (the bridge's session noise).
_NOISE = re.compile(
    r"^\s*(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|ABORT|SAVEPOINT|RELEASE|SET|SHOW|RESET)\b",
    re.IGNORECASE,
)
_CATALOG_READ = re.compile(
    r"^\s*(WITH|SELECT)\b.*\bpg_(type|range|catalog|class|attribute)\b", re.I | re.S
)


#: Rows are counted up to this many: enough to judge, a few pages at most on any table.
ROW_COUNT_CAP = 1000


def strength(mode: str) -> int:
    return LOCK_MODES.index(mode) if mode in LOCK_MODES else -1


@dataclass(frozen=True)
class Lock:
    relation: str  # "schema.table"
    mode: str  # as pg_locks names it, e.g. "AccessExclusiveLock"


@dataclass
class StatementObs:
    migration: str
    sql: str
    locks: list[Lock]
    rewrites: list[str]
    rows: int | None
    duration_ms: float
    started: float  # seconds on the observer's clock, for lock-hold times
    where: str = "target"  # or "copy"
    transactional: bool = True
    #: relation -> definitions of its validated CHECK constraints (taken after SET NOT NULL)
    checks: dict[str, list[str]] = field(default_factory=dict)
    #: every table lock the backend holds after the statement (``locks`` are the new ones)
    held: list[Lock] = field(default_factory=list)

    @property
    def noise(self) -> bool:
        quiet = not self.locks and not self.rewrites
        return quiet and bool(_NOISE.match(self.sql) or _CATALOG_READ.match(self.sql))


@dataclass
class MigrationObs:
    name: str
    where: str
    transactional: bool
    started: float
    ended: float = 0.0
    statements: list[StatementObs] = field(default_factory=list)
    note: str | None = None  # e.g. why it ran on a copy, or outside a transaction
    sqlstates: list[str] = field(default_factory=list)  # failures the real run recovers from

    def strongest(self) -> tuple[Lock, float] | None:
        """The strongest lock taken and how long it was held before commit (ms)."""
        best: tuple[Lock, float] | None = None
        for st in self.statements:
            for lock in st.locks:
                if best is None or strength(lock.mode) > strength(best[0].mode):
                    best = (lock, max(0.0, (self.ended - st.started) * 1000))
        return best if self.transactional else None


@dataclass(frozen=True)
class Session:
    """A session holding, or queued before us for, a lock a rehearsed statement needed."""

    pid: int
    user: str | None
    application_name: str | None
    client_addr: str | None
    state: str | None
    transaction_age_s: float | None
    query: str | None  # first line only
    waiting_for: Lock | None = None
    migration: str | None = None

    def describe(self) -> str:
        age = f"{self.transaction_age_s:.1f}s" if self.transaction_age_s is not None else "-"
        return (
            f"pid {self.pid} user {self.user} app {self.application_name or '-'!r} "
            f"client {self.client_addr or 'local'} state {self.state} xact age {age}: "
            f"{self.query or ''}"
        )


@dataclass(frozen=True)
class Thresholds:
    min_rows: int = 1  # a table with fewer rows is harmless to scan or rewrite
    lock_held_ms: float = 0.0  # access-exclusive-held fires from this hold time on


@dataclass(frozen=True)
class Facts:
    """What the rules need besides the statements: which tables pre-existed, their rows."""

    rows: dict[str, int]  # pre-existing table -> rows (counted up to the threshold)
    created: frozenset[str]  # relations created by the pending migrations themselves


@dataclass(frozen=True)
class Finding:
    rule: str
    migration: str
    relation: str | None
    message: str
    sql: str = ""


@dataclass
class Report:
    migrations: list[MigrationObs]
    findings: list[Finding]
    blockers: list[Session]
    copy: dict[str, Any] | None = None  # where the copy was, and why it was used
    target: str = ""
    created: frozenset[str] = frozenset()  # relations the plan itself creates


# ---- statement classification (pglast) ------------------------------------------------------


@dataclass
class Shape:
    """What a statement is, from its parse tree: enough to name a rule and its fix."""

    index: list[tuple[str, bool]] = field(default_factory=list)  # (table, concurrently)
    fk: list[tuple[str, bool]] = field(default_factory=list)  # (table, not_valid)
    set_not_null: list[tuple[str, str]] = field(default_factory=list)  # (table, column)
    type_change: list[str] = field(default_factory=list)
    add_column_default: list[str] = field(default_factory=list)
    enum_add_value: bool = False


def shape_of(sql: str) -> Shape:
    from pglast import parse_sql
    from pglast.enums import AlterTableType, ConstrType

    out = Shape()
    try:
        stmts = parse_sql(sql)
    except Exception:
        return out
    for raw in stmts:
        st: Any = raw.stmt
        kind = type(st).__name__
        if kind == "IndexStmt":
            out.index.append((st.relation.relname, bool(st.concurrent)))
        elif kind == "AlterEnumStmt":
            out.enum_add_value = out.enum_add_value or bool(getattr(st, "newVal", None))
        elif kind == "AlterTableStmt" and st.relation is not None:
            table = st.relation.relname
            for cmd in st.cmds or ():
                sub = cmd.subtype
                if sub == AlterTableType.AT_SetNotNull:
                    out.set_not_null.append((table, cmd.name))
                elif sub == AlterTableType.AT_AlterColumnType:
                    out.type_change.append(table)
                elif sub == AlterTableType.AT_AddConstraint and cmd.def_ is not None:
                    if cmd.def_.contype == ConstrType.CONSTR_FOREIGN:
                        out.fk.append((table, bool(cmd.def_.skip_validation)))
                elif sub == AlterTableType.AT_AddColumn and cmd.def_ is not None:
                    cons = cmd.def_.constraints or ()
                    if any(c.contype == ConstrType.CONSTR_DEFAULT for c in cons):
                        out.add_column_default.append(table)
    return out


def _table(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _relation_for(st: StatementObs, table: str) -> str | None:
    """The observed ``schema.table`` a parsed (maybe unqualified) table name refers to."""
    for lock in [*st.locks, *st.held]:
        if _table(lock.relation) == table:
            return lock.relation
    return None


def first_line(sql: str, limit: int = 100) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- rules --------------------------------------------------------------------------------


def has_not_null_check(defs: list[str], column: str) -> bool:
    pattern = re.compile(
        r"^CHECK\s*\(+\s*\"?" + re.escape(column) + r"\"?\s+IS\s+NOT\s+NULL\s*\)+\s*$", re.I
    )
    return any(pattern.match(d.strip()) for d in defs)


def analyze(migrations: list[MigrationObs], facts: Facts, th: Thresholds) -> list[Finding]:
    """Every finding, in statement order. Tables the plan creates never trigger a rule: no one
    else can be using them yet."""
    found: list[Finding] = []

    def busy(rel: str | None) -> bool:
        if rel is None or rel in facts.created:
            return False
        return facts.rows.get(rel, 0) >= th.min_rows

    def add(rule: str, mig: MigrationObs, rel: str | None, msg: str, sql: str) -> None:
        found.append(Finding(rule, mig.name, rel, msg, sql))

    for mig in migrations:
        for st in mig.statements:
            shape = shape_of(st.sql)
            head = first_line(st.sql, 60)
            for rewritten in st.rewrites:
                if not busy(rewritten):
                    continue
                if shape.add_column_default:
                    fix = (
                        "add the column without a default (or with a constant one), backfill in "
                        "batches, then SET DEFAULT"
                    )
                elif shape.type_change:
                    fix = (
                        "add a new column of the new type, backfill in batches, then swap; or "
                        "pick a binary-compatible change (e.g. widen a varchar)"
                    )
                else:
                    fix = "restructure the change so PostgreSQL need not rewrite the table"
                add(
                    "table-rewrite",
                    mig,
                    rewritten,
                    f"{head!r} rewrites {rewritten} ({_rows(facts, rewritten)}) under an "
                    "exclusive lock; "
                    f"fix: {fix}",
                    st.sql,
                )
            rel: str | None
            for table, concurrently in shape.index:
                rel = _relation_for(st, table)
                if not concurrently and busy(rel):
                    add(
                        "blocking-index",
                        mig,
                        rel,
                        f"{head!r} blocks writes to {rel} ({_rows(facts, rel)}) while it builds; "
                        "fix: CREATE INDEX CONCURRENTLY in a non-transactional migration (JS: "
                        "addIndex(..., { concurrently: true }) with useTransaction = false)",
                        st.sql,
                    )
            for table, not_valid in shape.fk:
                rel = _relation_for(st, table)
                if not not_valid and busy(rel):
                    add(
                        "fk-validation",
                        mig,
                        rel,
                        f"{head!r} scans {rel} ({_rows(facts, rel)}) to validate the foreign key "
                        "while both tables are locked; fix: add it NOT VALID, then VALIDATE "
                        "CONSTRAINT in a later migration",
                        st.sql,
                    )
            for table, column in shape.set_not_null:
                rel = _relation_for(st, table)
                if rel is None or not busy(rel):
                    continue
                if not has_not_null_check(st.checks.get(rel, []), column):
                    add(
                        "not-null-scan",
                        mig,
                        rel,
                        f"SET NOT NULL on {rel}.{column} scans {rel} ({_rows(facts, rel)}) under "
                        f"an AccessExclusiveLock; fix: add CHECK ({column} IS NOT NULL) NOT VALID, "
                        "VALIDATE it in a later migration, then SET NOT NULL (no scan)",
                        st.sql,
                    )
        found.extend(_held(mig, facts, th))
        if "55P04" in mig.sqlstates:
            add(
                "enum-in-transaction",
                mig,
                None,
                f"{mig.name} uses an enum value it adds itself: it cannot run in one transaction, "
                "so it runs statement by statement without atomicity; fix: add the value in its "
                "own, earlier migration",
                next((s.sql for s in mig.statements if shape_of(s.sql).enum_add_value), ""),
            )
    return found


def _held(mig: MigrationObs, facts: Facts, th: Thresholds) -> list[Finding]:
    if not mig.transactional:
        return []
    out = []
    seen: set[str] = set()
    for i, st in enumerate(mig.statements):
        for lock in st.locks:
            rel = lock.relation
            if lock.mode != "AccessExclusiveLock" or rel in facts.created or rel in seen:
                continue
            seen.add(rel)
            later = [s for s in mig.statements[i + 1 :] if not s.noise]
            held = max(0.0, (mig.ended - st.started) * 1000)
            if later and held >= th.lock_held_ms:
                out.append(
                    Finding(
                        "access-exclusive-held",
                        mig.name,
                        rel,
                        f"AccessExclusiveLock on {rel} taken by {first_line(st.sql, 60)!r} is "
                        f"held {held:.0f} ms, while {len(later)} later statement(s) run, until "
                        "commit; every query on it waits meanwhile; fix: move the other "
                        "statements to their own migration (or take this lock last)",
                        st.sql,
                    )
                )
    return out


def _rows(facts: Facts, rel: str | None) -> str:
    n = facts.rows.get(rel or "", 0)
    return f"{n}+ rows" if n >= ROW_COUNT_CAP else f"{n} rows"


def blocked_findings(blockers: list[Session]) -> list[Finding]:
    """One ``lock-blocked`` finding per lock a rehearsed statement could not get."""
    out: dict[tuple[str | None, Lock | None], list[Session]] = {}
    for s in blockers:
        out.setdefault((s.migration, s.waiting_for), []).append(s)
    findings = []
    for (migration, lock), sessions in out.items():
        pids = ", ".join(str(s.pid) for s in sessions)
        what = f"{lock.mode} on {lock.relation}" if lock else "a lock"
        findings.append(
            Finding(
                "lock-blocked",
                migration or "",
                lock.relation if lock else None,
                f"could not get {what} within the statement lock timeout: held or queued "
                f"before it by pid {pids}; fix: run when they are done (or end them)",
            )
        )
    return findings


# ---- output -------------------------------------------------------------------------------


def to_json(report: Report) -> dict[str, Any]:
    """The document ``--json`` prints. The names of ``statements``, ``findings`` and
    ``blockers`` and their keys are an interface: CI pipelines parse them."""
    statements = []
    migrations = []
    for mig in report.migrations:
        for st in mig.statements:
            statements.append(
                {
                    "migration": st.migration,
                    "sql": st.sql,
                    "locks": [{"relation": x.relation, "mode": x.mode} for x in st.locks],
                    "rewrites": list(st.rewrites),
                    "rows": st.rows,
                    "duration_ms": round(st.duration_ms, 3),
                    "where": st.where,
                    "transactional": st.transactional,
                }
            )
        strongest = mig.strongest()
        migrations.append(
            {
                "name": mig.name,
                "where": mig.where,
                "transactional": mig.transactional,
                "strongest_lock": (
                    {"relation": strongest[0].relation, "mode": strongest[0].mode}
                    if strongest
                    else None
                ),
                "lock_held_ms": round(strongest[1], 3) if strongest else None,
                "duration_ms": round(max(0.0, mig.ended - mig.started) * 1000, 3),
                "note": mig.note,
            }
        )
    return {
        "statements": statements,
        "findings": [
            {
                "rule": f.rule,
                "migration": f.migration,
                "relation": f.relation,
                "message": f.message,
                "sql": f.sql,
            }
            for f in report.findings
        ],
        "blockers": [
            {
                "pid": s.pid,
                "user": s.user,
                "application_name": s.application_name,
                "client_addr": s.client_addr,
                "state": s.state,
                "transaction_age_s": (
                    round(s.transaction_age_s, 3) if s.transaction_age_s is not None else None
                ),
                "query": s.query,
                "waiting_for": (
                    {"relation": s.waiting_for.relation, "mode": s.waiting_for.mode}
                    if s.waiting_for
                    else None
                ),
                "migration": s.migration,
            }
            for s in report.blockers
        ],
        "migrations": migrations,
        "copy": report.copy,
    }


def render_text(report: Report) -> str:
    lines: list[str] = []
    for mig in report.migrations:
        mode = "transactional" if mig.transactional else "non-transactional"
        strongest = mig.strongest()
        held = (
            f"; strongest lock {strongest[0].mode} on {strongest[0].relation}, held "
            f"{strongest[1]:.0f} ms"
            if strongest
            else ""
        )
        lines.append(f"== {mig.name} (on the {mig.where}, {mode}{held})")
        if mig.note:
            lines.append(f"   note: {mig.note}")
        lines.append(f"   {'ms':>8} {'rows':>6}  {'locks':<44} {'rewrites':<20} statement")
        for st in mig.statements:
            if st.noise:
                continue
            top: dict[str, str] = {}
            for x in st.locks:  # strongest first
                top.setdefault(x.relation, x.mode.removesuffix("Lock"))
            locks = ", ".join(f"{rel} {mode}" for rel, mode in top.items())
            rows = "-" if st.rows is None else str(st.rows)
            rewrites = ", ".join(st.rewrites) or "-"
            lines.append(
                f"   {st.duration_ms:>8.1f} {rows:>6}  {locks or '-':<44} {rewrites:<20} "
                f"{first_line(st.sql, 70)}"
            )
    if report.copy:
        lines.append(
            f"rehearsed on a copy ({report.copy['method']}, database {report.copy['database']}, "
            f"dropped): {report.copy['reason']}"
        )
    if report.blockers:
        lines.append("blockers:")
        for s in report.blockers:
            w = s.waiting_for
            want = f" (we waited for {w.mode} on {w.relation})" if w else ""
            lines.append(f"   {s.describe()}{want}")
    if report.findings:
        lines.append("findings:")
        for f in report.findings:
            lines.append(f"   {f.rule:<22} {f.migration}: {f.message}")
    else:
        lines.append("findings: none")
    return "\n".join(lines)


def parse_rules(text: str | None) -> frozenset[str]:
    """``--fail-on table-rewrite,blocking-index`` (or ``all``); unknown names are an error."""
    if not text:
        return frozenset()
    names = {n.strip() for n in text.split(",") if n.strip()}
    if "all" in names:
        return frozenset(RULES)
    unknown = sorted(names - set(RULES))
    if unknown:
        raise ValueError(
            f"unknown rule(s) for --fail-on: {', '.join(unknown)} (known: {', '.join(RULES)})"
        )
    return frozenset(names)
