"""Generated workloads: N migrations of a growing app, as `.sql` files and as Sequelize JS.

Both forms come from one plan, so the SQL and JS sets build the same kind of schema: every
ten migrations create a table ``tNNNN`` and a child ``cNNNN`` and then alter, index, fill,
update, comment and view them. The mix is what real migration folders hold: mostly DDL, some
small data changes, a SELECT whose result a migration uses, a few explicit transactions.
Deterministic: the same N always gives the same files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

CONFIG_JS = """'use strict';

// Same shape as the forum app's config: settings from the Job's ConfigMap/Secret variables.
module.exports = {
  production: {
    dialect: 'postgres',
    host: process.env.DB_HOST || '127.0.0.1',
    port: Number(process.env.DB_PORT || 5432),
    database: process.env.DB_NAME,
    username: process.env.DB_USER || 'postgres',
    password: process.env.DB_PASSWORD || null,
    logging: false,
  },
};
"""


@dataclass(frozen=True)
class Step:
    """One migration in both forms."""

    slug: str
    sql_up: str
    sql_down: str
    js_up: str  # body of `async up(queryInterface, Sequelize)`
    js_down: str


def step(i: int) -> Step:
    t = f"t{i // 10:04d}"
    c = f"c{i // 10:04d}"
    k = i % 10
    if k == 0:
        return Step(
            f"create-{t}",
            f"CREATE TABLE {t} (\n"
            "    id serial PRIMARY KEY,\n"
            "    name varchar(100) NOT NULL,\n"
            "    created_at timestamptz NOT NULL DEFAULT now()\n"
            ");\n",
            f"DROP TABLE {t};\n",
            f"    await queryInterface.createTable('{t}', {{\n"
            "      id: { type: Sequelize.INTEGER, autoIncrement: true, primaryKey: true },\n"
            "      name: { type: Sequelize.STRING(100), allowNull: false },\n"
            "      created_at: { type: Sequelize.DATE, allowNull: false,"
            " defaultValue: Sequelize.fn('now') },\n"
            "    });\n",
            f"    await queryInterface.dropTable('{t}');\n",
        )
    if k == 1:
        return Step(
            f"add-score-to-{t}",
            f"ALTER TABLE {t} ADD COLUMN score integer NOT NULL DEFAULT 0;\n",
            f"ALTER TABLE {t} DROP COLUMN score;\n",
            f"    await queryInterface.addColumn('{t}', 'score', {{\n"
            "      type: Sequelize.INTEGER, allowNull: false, defaultValue: 0,\n"
            "    });\n",
            f"    await queryInterface.removeColumn('{t}', 'score');\n",
        )
    if k == 2:
        return Step(
            f"index-{t}-name",
            f"CREATE UNIQUE INDEX {t}_name ON {t} (name);\n",
            f"DROP INDEX {t}_name;\n",
            f"    await queryInterface.addIndex('{t}', ['name'],"
            f" {{ unique: true, name: '{t}_name' }});\n",
            f"    await queryInterface.removeIndex('{t}', '{t}_name');\n",
        )
    if k == 3:
        names = [f"{t}-row-{n}" for n in range(1, 6)]
        values = ", ".join(f"('{n}', {j})" for j, n in enumerate(names))
        rows = ", ".join(f"{{ name: '{n}', score: {j} }}" for j, n in enumerate(names))
        return Step(
            f"seed-{t}",
            f"INSERT INTO {t} (name, score) VALUES {values};\n",
            f"DELETE FROM {t} WHERE name LIKE '{t}-row-%';\n",
            f"    await queryInterface.bulkInsert('{t}', [{rows}]);\n",
            f"    await queryInterface.bulkDelete('{t}', {{ name: {json.dumps(names)} }});\n",
        )
    if k == 4:
        return Step(
            f"bump-{t}-scores",
            f"UPDATE {t} SET score = score + 10 WHERE id % 2 = 0;\n",
            f"UPDATE {t} SET score = score - 10 WHERE id % 2 = 0;\n",
            f"    await queryInterface.sequelize.query("
            f"'UPDATE {t} SET score = score + 10 WHERE id % 2 = 0');\n",
            f"    await queryInterface.sequelize.query("
            f"'UPDATE {t} SET score = score - 10 WHERE id % 2 = 0');\n",
        )
    if k == 5:
        return Step(
            f"create-{c}",
            f"CREATE TABLE {c} (\n"
            "    id serial PRIMARY KEY,\n"
            f"    parent_id integer NOT NULL REFERENCES {t} (id) ON DELETE CASCADE,\n"
            "    body text\n"
            ");\n",
            f"DROP TABLE {c};\n",
            "    await queryInterface.sequelize.transaction(async (transaction) => {\n"
            f"      await queryInterface.createTable('{c}', {{\n"
            "        id: { type: Sequelize.INTEGER, autoIncrement: true, primaryKey: true },\n"
            "        parent_id: {\n"
            "          type: Sequelize.INTEGER, allowNull: false,\n"
            f"          references: {{ model: '{t}', key: 'id' }}, onDelete: 'CASCADE',\n"
            "        },\n"
            "        body: { type: Sequelize.TEXT },\n"
            "      }, { transaction });\n"
            "    });\n",
            f"    await queryInterface.dropTable('{c}');\n",
        )
    if k == 6:
        return Step(
            f"add-tags-and-view-{t}",
            f"ALTER TABLE {t} ADD COLUMN tags jsonb;\n"
            f"CREATE VIEW v{t} AS SELECT id, name, score FROM {t} WHERE score > 0;\n",
            f"DROP VIEW v{t};\nALTER TABLE {t} DROP COLUMN tags;\n",
            f"    await queryInterface.addColumn('{t}', 'tags', {{ type: Sequelize.JSONB }});\n"
            "    await queryInterface.sequelize.query(\n"
            f"      'CREATE VIEW v{t} AS SELECT id, name, score FROM {t} WHERE score > 0');\n",
            f"    await queryInterface.sequelize.query('DROP VIEW v{t}');\n"
            f"    await queryInterface.removeColumn('{t}', 'tags');\n",
        )
    if k == 7:
        return Step(
            f"note-and-index-{c}",
            f"ALTER TABLE {c} ADD COLUMN note text;\nCREATE INDEX {c}_parent ON {c} (parent_id);\n",
            f"DROP INDEX {c}_parent;\nALTER TABLE {c} DROP COLUMN note;\n",
            "    const transaction = await queryInterface.sequelize.transaction();\n"
            "    try {\n"
            f"      await queryInterface.addColumn('{c}', 'note', {{ type: Sequelize.TEXT }},"
            " { transaction });\n"
            f"      await queryInterface.addIndex('{c}', ['parent_id'],"
            f" {{ name: '{c}_parent', transaction }});\n"
            "      await transaction.commit();\n"
            "    } catch (err) {\n"
            "      await transaction.rollback();\n"
            "      throw err;\n"
            "    }\n",
            f"    await queryInterface.removeIndex('{c}', '{c}_parent');\n"
            f"    await queryInterface.removeColumn('{c}', 'note');\n",
        )
    if k == 8:
        return Step(
            f"seed-{c}",
            f"INSERT INTO {c} (parent_id, body)"
            " VALUES (1, 'first'), (2, 'second'), (3, 'third');\n",
            f"DELETE FROM {c};\n",
            f"    await queryInterface.bulkInsert('{c}', [\n"
            "      { parent_id: 1, body: 'first' },\n"
            "      { parent_id: 2, body: 'second' },\n"
            "      { parent_id: 3, body: 'third' },\n"
            "    ]);\n",
            f"    await queryInterface.bulkDelete('{c}', null, {{}});\n",
        )
    return Step(
        f"comment-and-count-{t}",
        f"COMMENT ON TABLE {t} IS 'generated table {t}';\n"
        f"UPDATE {c} SET note = (SELECT count(*) FROM {t})::text;\n",
        f"COMMENT ON TABLE {t} IS NULL;\nUPDATE {c} SET note = NULL;\n",
        "    await queryInterface.sequelize.query(\n"
        f"      \"COMMENT ON TABLE {t} IS 'generated table {t}'\");\n"
        "    const [row] = await queryInterface.sequelize.query(\n"
        f"      'SELECT count(*)::int AS n FROM {t}', {{ type: Sequelize.QueryTypes.SELECT }});\n"
        f"    await queryInterface.sequelize.query('UPDATE {c} SET note = :n',"
        " { replacements: { n: String(row.n) } });\n",
        f"    await queryInterface.sequelize.query('COMMENT ON TABLE {t} IS NULL');\n"
        f"    await queryInterface.sequelize.query('UPDATE {c} SET note = NULL');\n",
    )


def file_stem(i: int) -> str:
    """Timestamp-like prefixes, as sequelize-cli's generator names them; sorted = plan order."""
    return f"2024{i + 1:010d}-{step(i).slug}"


def write_sql(folder: Path, n: int) -> list[str]:
    """``n`` dbmate-format `.sql` migrations in ``folder``; returns their file names in order."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        s = step(i)
        name = file_stem(i) + ".sql"
        (folder / name).write_text(f"-- migrate:up\n{s.sql_up}\n-- migrate:down\n{s.sql_down}")
        names.append(name)
    return names


def write_sql_concat(path: Path, n: int, per_migration: bool = False) -> None:
    """The psql floor for ``write_sql``: every up section in one file, plus the same
    ``SequelizeMeta`` table and rows, so psql builds the same end state migrunner records.

    ``per_migration``: each migration and its row in a transaction of its own (run without
    ``-1``): migrunner's atomicity, without migrunner, to tell its cost from the runner's.
    """
    parts = [
        'CREATE TABLE IF NOT EXISTS "SequelizeMeta" '
        '("name" VARCHAR(255) NOT NULL UNIQUE, PRIMARY KEY ("name"));\n'
    ]
    for i in range(n):
        row = f"INSERT INTO \"SequelizeMeta\" (name) VALUES ('{file_stem(i)}.sql');\n"
        body = step(i).sql_up + row
        parts.append(f"BEGIN;\n{body}COMMIT;\n" if per_migration else body)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts))


def write_js_app(app: Path, n: int, node_modules: Path) -> list[str]:
    """A Sequelize app with ``n`` JS migrations in ``app/migrations`` and its config in
    ``app/config/database.js``; ``app/node_modules`` links to the benchmark's npm install so
    sequelize-cli and migrunner load the very same sequelize."""
    migrations = app / "migrations"
    migrations.mkdir(parents=True, exist_ok=True)
    (app / "config").mkdir(exist_ok=True)
    (app / "config" / "database.js").write_text(CONFIG_JS)
    link = app / "node_modules"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(node_modules.resolve(), link)
    names = []
    for i in range(n):
        s = step(i)
        name = file_stem(i) + ".js"
        (migrations / name).write_text(
            "'use strict';\n\n"
            "/** @type {import('sequelize-cli').Migration} */\n"
            "module.exports = {\n"
            "  async up(queryInterface, Sequelize) {\n"
            f"{s.js_up}"
            "  },\n\n"
            "  async down(queryInterface, Sequelize) {\n"
            f"{s.js_down}"
            "  },\n"
            "};\n"
        )
        names.append(name)
    return names
