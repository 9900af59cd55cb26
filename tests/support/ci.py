"""Whether this run is CI, where every prerequisite is installed and a skip is a failure."""

from __future__ import annotations

import os


def under_ci() -> bool:
    """Only ``CI=true`` or ``CI=1`` count (``.ci/run`` sets ``CI=true`` itself); ``CI=false``,
    ``CI=0`` or an empty value mean a developer's machine."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")
