"""Which node runs JS migrations: an explicit MIGRUNNER_NODE, else a recent enough node on PATH
(whether or not the [node] extra is installed), never a silent fallback from a named one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from migrations_compat.node_runtime import MIN_NODE_MAJOR, find_node, node_version, select_node


@pytest.fixture
def node() -> str:
    found = shutil.which("node")
    assert found, "node is a prerequisite of the suite (or the [node] extra, put on PATH)"
    return found


def test_node_on_path_wins_when_recent_enough(node: str) -> None:
    version = node_version(node)
    assert version is not None and version[0] >= MIN_NODE_MAJOR
    choice = select_node({"PATH": str(Path(node).parent)})
    assert choice is not None and choice.path == node and choice.source == "PATH"
    assert choice.describe().startswith("using node")
    assert find_node({"PATH": str(Path(node).parent)}) == node


def test_migrunner_node_is_used_as_named_and_never_replaced(node: str, tmp_path: Path) -> None:
    choice = select_node({"PATH": "", "MIGRUNNER_NODE": node})
    assert choice is not None and (choice.path, choice.source) == (node, "MIGRUNNER_NODE")
    missing = {"PATH": str(Path(node).parent), "MIGRUNNER_NODE": str(tmp_path / "node")}
    assert select_node(missing) is None
    assert find_node(missing) is None


def test_node_version_of_something_that_is_not_node(tmp_path: Path) -> None:
    assert node_version(str(tmp_path / "missing")) is None
