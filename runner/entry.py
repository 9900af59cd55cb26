"""The ``migrunner`` console script: start the run's node first, then import the CLI.

A JS run needs node (the app's config, then the bridge); starting it here, before click,
psycopg and the runner's modules are imported (~0.1–0.3 s), lets node evaluate the config in
parallel with Python's own start (see :mod:`migrations_compat.node_session`). Everything else
is :func:`runner.cli.main`.
"""

from __future__ import annotations

import contextlib
import os
import sys


def main() -> None:
    if len(sys.argv) > 1:
        from migrations_compat.node_session import start_early

        # only a head start: whatever fails here, the ordinary path meets and reports
        with contextlib.suppress(Exception):
            start_early(sys.argv[1:], os.environ, os.getcwd())
    from runner.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
