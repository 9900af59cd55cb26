"""Order-insensitive fingerprints of a database's schema, read from the system catalogs.

Parity tests apply the same migrations with sequelize-cli and with migrunner and must show the
two databases hold the same schema. ``pg_dump`` text works for "nothing changed" checks, but
its object order and per-run noise make a poor diff; here every object is keyed by name and
described by PostgreSQL's own deparsers (``format_type``, ``pg_get_constraintdef``,
``pg_get_indexdef``, ``pg_get_viewdef``, ``pg_get_functiondef``, ``pg_get_triggerdef``), so two
fingerprints compare with ``==`` and :func:`diff_fingerprints` names exactly what differs.

Bookkeeping of a runner is left out by name (``exclude_tables``, default migrunner's history
table) together with everything that hangs off it (its columns, indexes, constraints, triggers,
owned sequences, comments). ``SequelizeMeta``'s *shape* stays in: both tools must create the
same table. Its rows are compared separately with :func:`tests.support.state.meta_rows`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql

from tests.support.state import connected

Fingerprint = dict[str, dict[str, Any]]

DEFAULT_EXCLUDED = ("migrunner_history", "migrunner_verified")


def _excluded_oids(
    conn: psycopg.Connection[Any], schemas: list[str], exclude: Iterable[str]
) -> list[int]:
    """OIDs of excluded tables; ``name`` matches in every schema, ``schema.name`` in one."""
    names = list(exclude)
    if not names:
        return []
    rows = conn.execute(
        """
        SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY(%(schemas)s)
          AND (c.relname = ANY(%(names)s) OR n.nspname || '.' || c.relname = ANY(%(names)s))
        """,
        {"schemas": schemas, "names": names},
    ).fetchall()
    return [int(r[0]) for r in rows]


# Every query takes %(schemas)s (text[]) and %(excluded)s (oid[]). Keys are schema-qualified
# names; values are plain JSON-able data so a diff can print them.
_QUERIES: dict[str, str] = {
    "schemas": """
        SELECT n.nspname, jsonb_build_object('owner', pg_get_userbyid(n.nspowner))
        FROM pg_namespace n WHERE n.nspname = ANY(%(schemas)s)
    """,
    "relations": """
        SELECT n.nspname || '.' || c.relname,
               jsonb_build_object(
                   'kind', c.relkind::text,
                   'persistence', c.relpersistence::text,
                   'options', c.reloptions,
                   'row_security', c.relrowsecurity,
                   'acl', c.relacl::text[],
                   'partition_key', CASE WHEN c.relkind = 'p'
                                         THEN pg_get_partkeydef(c.oid) END)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
          AND c.oid <> ALL(%(excluded)s)
    """,
    # position: rank among live columns, so a drop + re-add elsewhere does not show as a change
    # of attnum, but a different column order does.
    "columns": """
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
        WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
          AND a.attnum > 0 AND NOT a.attisdropped AND c.oid <> ALL(%(excluded)s)
    """,
    "constraints": """
        SELECT n.nspname || '.' || COALESCE(c.relname, tp.typname) || '.' || k.conname,
               jsonb_build_object(
                   'type', k.contype::text,
                   'definition', pg_get_constraintdef(k.oid, true),
                   'deferrable', k.condeferrable,
                   'deferred', k.condeferred,
                   'validated', k.convalidated)
        FROM pg_constraint k
        JOIN pg_namespace n ON n.oid = k.connamespace
        LEFT JOIN pg_class c ON c.oid = k.conrelid
        LEFT JOIN pg_type tp ON tp.oid = k.contypid
        WHERE n.nspname = ANY(%(schemas)s) AND k.conrelid <> ALL(%(excluded)s)
          AND k.contype <> 'n'  -- PostgreSQL 18 lists NOT NULL here too; columns have it
    """,
    "indexes": """
        SELECT n.nspname || '.' || ic.relname,
               jsonb_build_object(
                   'table', tc.relname,
                   'definition', pg_get_indexdef(i.indexrelid),
                   'primary', i.indisprimary,
                   'valid', i.indisvalid,
                   'clustered', i.indisclustered)
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_class tc ON tc.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = ic.relnamespace
        WHERE n.nspname = ANY(%(schemas)s) AND i.indrelid <> ALL(%(excluded)s)
    """,
    "enums": """
        SELECT n.nspname || '.' || t.typname,
               to_jsonb(array_agg(e.enumlabel::text ORDER BY e.enumsortorder))
        FROM pg_type t
        JOIN pg_namespace n ON n.oid = t.typnamespace
        JOIN pg_enum e ON e.enumtypid = t.oid
        WHERE n.nspname = ANY(%(schemas)s)
        GROUP BY n.nspname, t.typname
    """,
    "domains": """
        SELECT n.nspname || '.' || t.typname,
               jsonb_build_object(
                   'base', format_type(t.typbasetype, t.typtypmod),
                   'not_null', t.typnotnull,
                   'default', t.typdefault)
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = ANY(%(schemas)s) AND t.typtype = 'd'
    """,
    # Parameters only: the current value depends on how many rows a run inserted and on
    # rolled-back nextval() calls (a dry run advances sequences), not on the schema.
    "sequences": """
        SELECT n.nspname || '.' || c.relname,
               jsonb_build_object(
                   'type', format_type(s.seqtypid, NULL),
                   'start', s.seqstart, 'increment', s.seqincrement,
                   'min', s.seqmin, 'max', s.seqmax, 'cache', s.seqcache, 'cycle', s.seqcycle,
                   'owned_by', (SELECT dc.relname || '.' || da.attname
                                FROM pg_depend d
                                JOIN pg_class dc ON dc.oid = d.refobjid
                                JOIN pg_attribute da ON da.attrelid = d.refobjid
                                                    AND da.attnum = d.refobjsubid
                                WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                  AND d.refclassid = 'pg_class'::regclass
                                  AND d.deptype IN ('a', 'i')
                                LIMIT 1))
        FROM pg_sequence s
        JOIN pg_class c ON c.oid = s.seqrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY(%(schemas)s)
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                            AND d.refclassid = 'pg_class'::regclass
                            AND d.deptype IN ('a', 'i')
                            AND d.refobjid = ANY(%(excluded)s))
    """,
    "views": """
        SELECT n.nspname || '.' || c.relname,
               jsonb_build_object('kind', c.relkind::text,
                                  'definition', pg_get_viewdef(c.oid, true))
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('v', 'm')
          AND c.oid <> ALL(%(excluded)s)
    """,
    # Functions that belong to an extension are the extension's, listed under "extensions".
    "functions": """
        SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid)
               || ')',
               jsonb_build_object(
                   'kind', p.prokind::text,
                   'definition', CASE WHEN p.prokind = 'a' THEN NULL
                                      ELSE pg_get_functiondef(p.oid) END,
                   'result', pg_get_function_result(p.oid))
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = ANY(%(schemas)s)
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                            AND d.deptype = 'e')
    """,
    "triggers": """
        SELECT n.nspname || '.' || c.relname || '.' || tg.tgname,
               jsonb_build_object('definition', pg_get_triggerdef(tg.oid, true),
                                  'enabled', tg.tgenabled::text)
        FROM pg_trigger tg
        JOIN pg_class c ON c.oid = tg.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY(%(schemas)s) AND NOT tg.tgisinternal
          AND c.oid <> ALL(%(excluded)s)
    """,
    "rules": """
        SELECT r.schemaname || '.' || r.tablename || '.' || r.rulename,
               to_jsonb(r.definition)
        FROM pg_rules r
        JOIN pg_namespace n ON n.nspname = r.schemaname
        JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = r.tablename
        WHERE r.schemaname = ANY(%(schemas)s) AND c.oid <> ALL(%(excluded)s)
    """,
    "policies": """
        SELECT p.schemaname || '.' || p.tablename || '.' || p.policyname,
               jsonb_build_object('permissive', p.permissive, 'roles', p.roles, 'cmd', p.cmd,
                                  'qual', p.qual, 'with_check', p.with_check)
        FROM pg_policies p WHERE p.schemaname = ANY(%(schemas)s)
    """,
    "extensions": """
        SELECT e.extname,
               jsonb_build_object('schema', n.nspname, 'version', e.extversion)
        FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname <> 'plpgsql'
    """,
    # pg_identify_object names any commented object (table, column, type, function, index,
    # constraint, trigger...) the same way in both databases.
    "comments": """
        SELECT o.type || ' ' || o.identity, to_jsonb(d.description)
        FROM pg_description d
        CROSS JOIN LATERAL pg_identify_object(d.classoid, d.objoid, d.objsubid) o
        WHERE o.schema = ANY(%(schemas)s)
          AND NOT (d.classoid = 'pg_class'::regclass AND d.objoid = ANY(%(excluded)s))
          AND NOT (d.classoid = 'pg_constraint'::regclass
                   AND d.objoid IN (SELECT oid FROM pg_constraint
                                    WHERE conrelid = ANY(%(excluded)s)))
          AND NOT (d.classoid = 'pg_class'::regclass
                   AND d.objoid IN (SELECT indexrelid FROM pg_index
                                    WHERE indrelid = ANY(%(excluded)s)))
    """,
}


def _row_counts(
    conn: psycopg.Connection[Any], schemas: list[str], excluded: list[int]
) -> dict[str, Any]:
    """Rows per table: seed data (bulkInsert) must land the same way with either tool."""
    tables = conn.execute(
        """
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') AND c.oid <> ALL(%s)
        """,
        (schemas, excluded),
    ).fetchall()
    counts: dict[str, Any] = {}
    for schema, table in tables:
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        row = conn.execute(query).fetchone()
        counts[f"{schema}.{table}"] = row[0] if row else None
    return counts


def _row_data(
    conn: psycopg.Connection[Any], schemas: list[str], excluded: list[int], ignore: set[str]
) -> dict[str, Any]:
    """Every row of every table as sorted JSON, minus ``ignore`` columns (run-time values)."""
    tables = conn.execute(
        """
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') AND c.oid <> ALL(%s)
        """,
        (schemas, excluded),
    ).fetchall()
    data: dict[str, Any] = {}
    for schema, table in tables:
        query = sql.SQL("SELECT to_jsonb(t) FROM {}.{} t").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        data[f"{schema}.{table}"] = sorted(
            _show({k: v for k, v in r[0].items() if k not in ignore})
            for r in conn.execute(query).fetchall()
        )
    return data


def app_schemas(conn_or_url: psycopg.Connection[Any] | str) -> list[str]:
    """Every schema but PostgreSQL's own (for apps whose migrations create schemas)."""
    with connected(conn_or_url) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
            "AND nspname <> 'information_schema' ORDER BY nspname"
        ).fetchall()
        return [str(r[0]) for r in rows]


def fingerprint(
    conn_or_url: psycopg.Connection[Any] | str,
    schemas: Iterable[str] = ("public",),
    exclude_tables: Iterable[str] = DEFAULT_EXCLUDED,
    row_counts: bool = True,
    data: bool = False,
    ignore_columns: Iterable[str] = (),
) -> Fingerprint:
    """Describe every schema object in ``schemas`` as ``{category: {qualified name: details}}``.

    ``exclude_tables`` holds bare names (matched in every schema) or ``schema.name``; each
    excluded table takes its columns, indexes, constraints, triggers, rules, owned sequences
    and comments with it. ``row_counts`` adds a ``rows`` category (rows per table); ``data``
    a ``data`` category with every row (minus ``ignore_columns``, e.g. timestamps).
    """
    schema_list = list(schemas)
    with connected(conn_or_url) as conn:
        excluded = _excluded_oids(conn, schema_list, exclude_tables)
        params = {"schemas": schema_list, "excluded": excluded}
        result: Fingerprint = {}
        for category, query in _QUERIES.items():
            rows = conn.execute(query, params).fetchall()
            result[category] = {str(key): value for key, value in rows}
        if row_counts:
            result["rows"] = _row_counts(conn, schema_list, excluded)
        if data:
            result["data"] = _row_data(conn, schema_list, excluded, set(ignore_columns))
    return result


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def diff_fingerprints(a: Fingerprint, b: Fingerprint, labels: tuple[str, str] = ("A", "B")) -> str:
    """A readable list of what differs between two fingerprints; ``""`` when they are equal."""
    left, right = labels
    lines: list[str] = []
    for category in sorted(set(a) | set(b)):
        objs_a, objs_b = a.get(category, {}), b.get(category, {})
        for key in sorted(set(objs_a) | set(objs_b)):
            if key not in objs_b:
                lines.append(f"{category} {key}: only in {left}: {_show(objs_a[key])}")
            elif key not in objs_a:
                lines.append(f"{category} {key}: only in {right}: {_show(objs_b[key])}")
            elif objs_a[key] != objs_b[key]:
                va, vb = objs_a[key], objs_b[key]
                if isinstance(va, dict) and isinstance(vb, dict):
                    for field in sorted(set(va) | set(vb)):
                        if va.get(field) != vb.get(field):
                            lines.append(
                                f"{category} {key} [{field}]: {left}={_show(va.get(field))} "
                                f"{right}={_show(vb.get(field))}"
                            )
                else:
                    lines.append(f"{category} {key}: {left}={_show(va)} {right}={_show(vb)}")
    return "\n".join(lines)
