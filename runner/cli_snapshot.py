"""``migrunner snapshot``: build the V8 startup snapshot of the app's sequelize ahead of time.

Its own module (as ``cli_verify``): the command needs no database, only the app's
``node_modules`` and node. Meant for image builds (``RUN migrunner snapshot --migrations-path
/app/migrations``): every later run then starts node with sequelize already loaded
(:mod:`migrations_compat.snapshot` says when a blob is used and how it is checked).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import click

from runner.cli import EXIT_CODES, common
from runner.cli_sequelize import run_local
from runner.log import Log


def snapshot_action(kw: dict[str, Any]) -> Any:
    def action(log: Log) -> int:
        from migrations_compat.bridge import BridgeOptions, resolve_packages
        from migrations_compat.config import load_rc_paths
        from migrations_compat.node_runtime import bridge_node
        from migrations_compat.snapshot import SnapshotSpec, build, cache_root

        cwd = Path.cwd()
        given = kw.get("migrations_path") or os.environ.get("MIGRUNNER_MIGRATIONS_PATH")
        rc_migrations, _ = load_rc_paths(cwd, kw.get("options_path"), dict(os.environ))
        folder = Path(given) if given else rc_migrations or Path("migrations")
        folder = folder if folder.is_absolute() else cwd / folder
        packages = resolve_packages([folder, cwd])
        spec = SnapshotSpec(
            bridge_node(log),
            tuple(BridgeOptions().node_args),
            packages.sequelize_dir,
            packages.pg_dir,
        )
        started = time.perf_counter()
        blob = build(spec, cache_root())
        log.info(
            f"snapshot of {packages.sequelize_dir} written to {blob} "
            f"in {time.perf_counter() - started:.1f}s",
            snapshot=str(blob),
            sequelize_path=str(packages.sequelize_dir),
        )
        return 0

    return action


@click.command("snapshot", epilog=EXIT_CODES)
@common
def snapshot_cmd(**kw: Any) -> None:
    """Build the startup snapshot of the app's sequelize (for image builds).

    JS runs then start node with sequelize already loaded (~0.15 s less each). Stored in
    MIGRUNNER_SNAPSHOT_DIR (default ~/.cache/migrunner/snapshots); used only while node,
    its flags and every file in it are unchanged. MIGRUNNER_SNAPSHOT=0 turns it off."""
    run_local(kw, snapshot_action(kw))
