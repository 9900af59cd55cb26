"""A database schema's fingerprint, read from the system catalogs, for ``migrunner verify``.

``verify`` must tell whether a migration's ``down()`` put the schema back exactly as it was
before its ``up()``. A ``pg_dump`` text diff is noisy (object order, OIDs in names); here every
object is keyed by its qualified name and described by PostgreSQL's own deparsers
(``format_type``, ``pg_get_constraintdef``, ``pg_get_indexdef``, ``pg_get_viewdef``,
``pg_get_functiondef``, ``pg_get_triggerdef``), so two fingerprints compare with ``==`` and
:func:`differences` names exactly what changed.

Covered, in every non-system schema: schemas, tables/views/composite types, columns (type,
default, NOT NULL, identity, generated, collation, order), constraints, indexes, enums (labels
in order), domains, sequences (parameters, not their current value: rolled-back ``nextval``
moves it), views, functions and procedures, triggers, rules, policies, extensions and
comments. Objects an extension owns belong to the extension. Row data is not compared.

The runner's own bookkeeping (``SequelizeMeta``, ``migrunner_history`` and
``migrunner_verified``, with everything hanging off them) is left out: its rows change with
every step by design.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

Fingerprint = dict[str, dict[str, Any]]

_USER_SCHEMAS = """
    SELECT n.oid FROM pg_namespace n
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
      AND n.nspname NOT LIKE 'pg\\_temp\\_%%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass
                      AND d.objid = n.oid AND d.deptype = 'e')
"""

_NOT_EXTENSION = """
    NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass
                AND e.objid = {oid} AND e.deptype = 'e')
"""


def _own(catalog: str, oid: str) -> str:
    return _NOT_EXTENSION.format(catalog=catalog, oid=oid)


# Each query takes %(excluded)s (oid[] of bookkeeping tables) and returns (key, details).
_QUERIES: dict[str, str] = {
    "schemas": f"""
        SELECT n.nspname, jsonb_build_object('owner', pg_get_userbyid(n.nspowner))
        FROM pg_namespace n WHERE n.oid IN ({_USER_SCHEMAS})
    """,
    "relations": f"""
        SELECT n.nspname || '.' || c.relname,
               jsonb_build_object('kind', c.relkind::text, 'persistence', c.relpersistence::text,
                                  'options', c.reloptions, 'row_security', c.relrowsecurity,
                                  'partition_key', CASE WHEN c.relkind = 'p'
                                                        THEN pg_get_partkeydef(c.oid) END)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.oid IN ({_USER_SCHEMAS}) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
          AND c.oid <> ALL(%(excluded)s) AND {_own("pg_class", "c.oid")}
    """,
    # position = rank among live columns: a drop and re-add at the end shows as a new order.
    "columns": f"""
        SELECT n.nspname || '.' || c.relname || '.' || a.attname,
               jsonb_build_object(
                   'position', row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
                   'type', format_type(a.atttypid, a.atttypmod),
                   'not_null', a.attnotnull,
                   'default', pg_get_expr(ad.adbin, ad.adrelid),
                   'identity', NULLIF(a.attidentity::text, ''),
                   'generated', NULLIF(a.attgenerated::text, ''),
                   'collation', CASE WHEN a.attcollation <> t.typcollation
                                     THEN a.attcollation::regcollation::text END)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
        WHERE n.oid IN ({_USER_SCHEMAS}) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
          AND a.attnum > 0 AND NOT a.attisdropped AND c.oid <> ALL(%(excluded)s)
          AND {_own("pg_class", "c.oid")}
    """,
    # contype 'n' (PostgreSQL 18's NOT NULL rows) repeats columns.not_null.
    "constraints": f"""
        SELECT n.nspname || '.' || COALESCE(c.relname, tp.typname) || '.' || k.conname,
               jsonb_build_object('type', k.contype::text,
                                  'definition', pg_get_constraintdef(k.oid, true),
                                  'deferrable', k.condeferrable, 'deferred', k.condeferred,
                                  'validated', k.convalidated)
        FROM pg_constraint k
        JOIN pg_namespace n ON n.oid = k.connamespace
        LEFT JOIN pg_class c ON c.oid = k.conrelid
        LEFT JOIN pg_type tp ON tp.oid = k.contypid
        WHERE n.oid IN ({_USER_SCHEMAS}) AND k.conrelid <> ALL(%(excluded)s)
          AND k.contype <> 'n'
          AND {_own("pg_class", "k.conrelid")} AND {_own("pg_type", "k.contypid")}
    """,
    "indexes": f"""
        SELECT n.nspname || '.' || ic.relname,
               jsonb_build_object('table', tc.relname, 'definition', pg_get_indexdef(i.indexrelid),
                                  'primary', i.indisprimary, 'valid', i.indisvalid)
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_class tc ON tc.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = ic.relnamespace
        WHERE n.oid IN ({_USER_SCHEMAS}) AND i.indrelid <> ALL(%(excluded)s)
          AND {_own("pg_class", "tc.oid")}
    """,
    "enums": f"""
        SELECT n.nspname || '.' || t.typname,
               to_jsonb(array_agg(e.enumlabel::text ORDER BY e.enumsortorder))
        FROM pg_type t
        JOIN pg_namespace n ON n.oid = t.typnamespace
        JOIN pg_enum e ON e.enumtypid = t.oid
        WHERE n.oid IN ({_USER_SCHEMAS}) AND {_own("pg_type", "t.oid")}
        GROUP BY n.nspname, t.typname
    """,
    "domains": f"""
        SELECT n.nspname || '.' || t.typname,
               jsonb_build_object('base', format_type(t.typbasetype, t.typtypmod),
                                  'not_null', t.typnotnull, 'default', t.typdefault)
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.oid IN ({_USER_SCHEMAS}) AND t.typtype = 'd' AND {_own("pg_type", "t.oid")}
    """,
    "sequences": f"""
        SELECT n.nspname || '.' || c.relname,
               jsonb_build_object(
                   'type', format_type(s.seqtypid, NULL), 'start', s.seqstart,
                   'increment', s.seqincrement, 'min', s.seqmin, 'max', s.seqmax,
                   'cache', s.seqcache, 'cycle', s.seqcycle,
                   'owned_by', (SELECT dc.relname || '.' || da.attname
                                FROM pg_depend d
                                JOIN pg_class dc ON dc.oid = d.refobjid
                                JOIN pg_attribute da ON da.attrelid = d.refobjid
                                                    AND da.attnum = d.refobjsubid
                                WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                  AND d.refclassid = 'pg_class'::regclass
                                  AND d.deptype IN ('a', 'i') LIMIT 1))
        FROM pg_sequence s
        JOIN pg_class c ON c.oid = s.seqrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.oid IN ({_USER_SCHEMAS}) AND {_own("pg_class", "c.oid")}
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                            AND d.refclassid = 'pg_class'::regclass
                            AND d.deptype IN ('a', 'i') AND d.refobjid = ANY(%(excluded)s))
    """,
    "views": f"""
        SELECT n.nspname || '.' || c.relname,
               jsonb_build_object('kind', c.relkind::text,
                                  'definition', pg_get_viewdef(c.oid, true))
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.oid IN ({_USER_SCHEMAS}) AND c.relkind IN ('v', 'm')
          AND {_own("pg_class", "c.oid")}
    """,
    "functions": f"""
        SELECT n.nspname || '.' || p.proname
               || '(' || pg_get_function_identity_arguments(p.oid) || ')',
               jsonb_build_object('kind', p.prokind::text,
                                  'definition', CASE WHEN p.prokind = 'a' THEN NULL
                                                     ELSE pg_get_functiondef(p.oid) END,
                                  'result', pg_get_function_result(p.oid))
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.oid IN ({_USER_SCHEMAS}) AND {_own("pg_proc", "p.oid")}
    """,
    "triggers": f"""
        SELECT n.nspname || '.' || c.relname || '.' || tg.tgname,
               jsonb_build_object('definition', pg_get_triggerdef(tg.oid, true),
                                  'enabled', tg.tgenabled::text)
        FROM pg_trigger tg
        JOIN pg_class c ON c.oid = tg.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.oid IN ({_USER_SCHEMAS}) AND NOT tg.tgisinternal
          AND c.oid <> ALL(%(excluded)s)
    """,
    "rules": f"""
        SELECT n.nspname || '.' || c.relname || '.' || r.rulename,
               to_jsonb(pg_get_ruledef(r.oid, true))
        FROM pg_rewrite r
        JOIN pg_class c ON c.oid = r.ev_class
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.oid IN ({_USER_SCHEMAS}) AND r.rulename <> '_RETURN'
          AND c.oid <> ALL(%(excluded)s)
    """,
    "policies": f"""
        SELECT n.nspname || '.' || c.relname || '.' || pol.polname,
               jsonb_build_object('command', pol.polcmd::text, 'permissive', pol.polpermissive,
                                  'using', pg_get_expr(pol.polqual, pol.polrelid),
                                  'check', pg_get_expr(pol.polwithcheck, pol.polrelid))
        FROM pg_policy pol
        JOIN pg_class c ON c.oid = pol.polrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.oid IN ({_USER_SCHEMAS})
    """,
    "extensions": """
        SELECT e.extname, jsonb_build_object('schema', n.nspname, 'version', e.extversion)
        FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname <> 'plpgsql'
    """,
    "comments": f"""
        SELECT o.type || ' ' || o.identity, to_jsonb(d.description)
        FROM pg_description d
        CROSS JOIN LATERAL pg_identify_object(d.classoid, d.objoid, d.objsubid) o
        WHERE o.schema IN (SELECT nspname FROM pg_namespace WHERE oid IN ({_USER_SCHEMAS}))
          AND NOT (d.classoid = 'pg_class'::regclass AND d.objoid = ANY(%(excluded)s))
    """,
}


def excluded_tables(
    conn: psycopg.Connection[Any], tables: Iterable[tuple[str | None, str]]
) -> list[int]:
    """OIDs of the bookkeeping tables, given as (schema or None for current_schema(), name)."""
    oids = []
    for schema, name in tables:
        row = conn.execute(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = %s AND n.nspname = coalesce(%s, current_schema())",
            (name, schema),
        ).fetchone()
        if row:
            oids.append(int(row[0]))
    return oids


def fingerprint(conn: psycopg.Connection[Any], excluded: Iterable[int] = ()) -> Fingerprint:
    """``{category: {qualified name: details}}`` for the whole database (see module doc)."""
    params = {"excluded": list(excluded)}
    return {
        category: {str(key): value for key, value in conn.execute(query, params).fetchall()}
        for category, query in _QUERIES.items()
    }


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def differences(
    expected: Fingerprint, actual: Fingerprint, labels: tuple[str, str] = ("expected", "actual")
) -> list[str]:
    """What differs, one line per object or field; empty when the schemas are the same."""
    left, right = labels
    lines: list[str] = []
    for category in sorted(set(expected) | set(actual)):
        a, b = expected.get(category, {}), actual.get(category, {})
        for key in sorted(set(a) | set(b)):
            if key not in b:
                lines.append(f"{category} {key}: only {left}")
            elif key not in a:
                lines.append(f"{category} {key}: only {right}")
            elif a[key] != b[key]:
                va, vb = a[key], b[key]
                if isinstance(va, dict) and isinstance(vb, dict):
                    for field in sorted(set(va) | set(vb)):
                        if va.get(field) != vb.get(field):
                            lines.append(
                                f"{category} {key} [{field}]: {left} {_show(va.get(field))}, "
                                f"{right} {_show(vb.get(field))}"
                            )
                else:
                    lines.append(f"{category} {key}: {left} {_show(va)}, {right} {_show(vb)}")
    return lines
