"""``migration:generate`` / ``seed:generate``: a new, empty migration or seeder file.

Named as sequelize-cli names them, ``YYYYMMDDHHMMSS-NAME.js`` with the current UTC time, so the
new file sorts after every existing one; the folder is created when missing. ``--sql`` writes a
``.sql`` file with migrunner's (dbmate's) sections instead. An existing file is never
overwritten (two runs in the same second with the same name): that is an error.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from runner.errors import ConfigError

Kind = Literal["migration", "seeder"]

JS_SKELETON = """'use strict';

/** @type {{import('sequelize-cli').Migration}} */
module.exports = {{
  async up (queryInterface, Sequelize) {{
    /**
     * {up}
     *
     * Example:
     * {up_example}
     */
  }},

  async down (queryInterface, Sequelize) {{
    /**
     * {down}
     *
     * Example:
     * {down_example}
     */
  }}
}};
"""

TEXTS = {
    "migration": {
        "up": "Add altering commands here.",
        "up_example": "await queryInterface.createTable('users', { id: Sequelize.INTEGER });",
        "down": "Add reverting commands here.",
        "down_example": "await queryInterface.dropTable('users');",
    },
    "seeder": {
        "up": "Add seed commands here.",
        "up_example": "await queryInterface.bulkInsert('People', [{ name: 'John Doe' }], {});",
        "down": "Add commands to revert seed here.",
        "down_example": "await queryInterface.bulkDelete('People', null, {});",
    },
}

SQL_SKELETON = """-- migrate:up


-- migrate:down

"""


def timestamp(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d%H%M%S")


def file_name(name: str, sql: bool, now: datetime | None = None) -> str:
    if not name or "/" in name or "\x00" in name or name in (".", ".."):
        raise ConfigError(f"--name {name!r}: give a plain name such as add-user-roles")
    if re.search(r"\s", name):
        raise ConfigError(f"--name {name!r}: no spaces, please (use dashes)")
    return f"{timestamp(now)}-{name}.{'sql' if sql else 'js'}"


def skeleton(kind: Kind, sql: bool) -> str:
    return SQL_SKELETON if sql else JS_SKELETON.format(**TEXTS[kind])


def generate(
    folder: Path, kind: Kind, name: str, sql: bool = False, now: datetime | None = None
) -> Path:
    """Write the skeleton; return its path."""
    target = folder / file_name(name, sql, now)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with target.open("x", encoding="utf-8") as fh:
            fh.write(skeleton(kind, sql))
    except FileExistsError:
        raise ConfigError(f"{target} already exists") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror}") from None
    return target
