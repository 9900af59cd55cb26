"""SequelizeMeta: the record of applied migrations, shared with sequelize-cli.

umzug's three-method storage contract — list applied names, log one, unlog one — plus
``ensure``. The table is created exactly as sequelize-cli creates it and never altered, so an
app can switch between the two tools at any time. Inserts fill ``createdAt``/``updatedAt``
whenever the table has them (``migrationTimestamps: true``), whatever the config says, so a
table created by either tool keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner.db import qualified, quote_ident

if TYPE_CHECKING:
    import psycopg


@dataclass(frozen=True)
class MetaTable:
    table: str = "SequelizeMeta"
    schema: str | None = None
    timestamps: bool = False

    @property
    def ref(self) -> str:
        return qualified(self.schema, self.table)

    @property
    def name(self) -> str:
        """``schema.table`` unquoted, for messages and JSON (``ref`` is the SQL form)."""
        return f"{self.schema}.{self.table}" if self.schema else self.table

    def create_sql(self) -> str:
        cols = '"name" VARCHAR(255) NOT NULL UNIQUE'
        if self.timestamps:
            cols += (
                ', "createdAt" TIMESTAMP WITH TIME ZONE NOT NULL'
                ', "updatedAt" TIMESTAMP WITH TIME ZONE NOT NULL'
            )
        return f'CREATE TABLE IF NOT EXISTS {self.ref} ({cols}, PRIMARY KEY ("name"))'

    def ensure(self, conn: psycopg.Connection) -> bool:
        """Create schema and table if missing; return whether the table has timestamps."""
        if self.schema:
            # Only when missing: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even
            # when the schema exists, which an app's role often lacks.
            found = conn.execute(
                "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", (self.schema,)
            ).fetchone()
            if not found:
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema)}")
        conn.execute(self.create_sql())
        row = conn.execute(
            "SELECT count(*) FROM pg_catalog.pg_attribute "
            "WHERE attrelid = pg_catalog.to_regclass(%s) "
            "AND attname IN ('createdAt', 'updatedAt') AND NOT attisdropped",
            (self.ref,),
        ).fetchone()
        return bool(row and row[0] == 2)

    def exists(self, conn: psycopg.Connection) -> bool:
        row = conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (self.ref,)).fetchone()
        return bool(row and row[0])

    def applied_sql(self) -> str:
        return f'SELECT "name" FROM {self.ref} ORDER BY "name"'

    def applied(self, conn: psycopg.Connection) -> list[str]:
        return [r[0] for r in conn.execute(self.applied_sql())]

    def log(self, conn: psycopg.Connection, name: str, with_timestamps: bool) -> None:
        if with_timestamps:
            conn.execute(
                f'INSERT INTO {self.ref} ("name", "createdAt", "updatedAt") '
                "VALUES (%s, pg_catalog.now(), pg_catalog.now())",
                (name,),
            )
        else:
            conn.execute(f'INSERT INTO {self.ref} ("name") VALUES (%s)', (name,))

    def log_sql(self, name_literal: str, with_timestamps: bool) -> str:
        """:meth:`log` as one statement, the name already quoted (a migration sent to the
        server as one message: ``Migrator.apply_one_message``)."""
        if with_timestamps:
            return (
                f'INSERT INTO {self.ref} ("name", "createdAt", "updatedAt") '
                f"VALUES ({name_literal}, pg_catalog.now(), pg_catalog.now())"
            )
        return f'INSERT INTO {self.ref} ("name") VALUES ({name_literal})'

    def unlog_sql(self, name_literal: str) -> str:
        return f'DELETE FROM {self.ref} WHERE "name" = {name_literal}'

    def unlog(self, conn: psycopg.Connection, name: str) -> None:
        conn.execute(f'DELETE FROM {self.ref} WHERE "name" = %s', (name,))
