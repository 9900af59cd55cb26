"""How node's end is worded, and where the container's memory limit is read from."""

from __future__ import annotations

from pathlib import Path

from migrations_compat.node_exit import MIB, describe_exit, memory_limit


def _tree(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "cgroup"
    proc.write_text(proc_line + "\n")
    root = tmp_path / "sys"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text + "\n")
    return proc, root


def test_v2_limit_of_the_own_cgroup(tmp_path: Path) -> None:
    proc, root = _tree(
        tmp_path, "0::/kubepods/pod1/c1", {"kubepods/pod1/c1/memory.max": "268435456"}
    )
    assert memory_limit(proc, root) == 256 * MIB


def test_v2_inside_a_cgroup_namespace_reads_the_mount_itself(tmp_path: Path) -> None:
    proc, root = _tree(tmp_path, "0::/", {"memory.max": "134217728"})
    assert memory_limit(proc, root) == 128 * MIB


def test_v2_without_limit(tmp_path: Path) -> None:
    proc, root = _tree(tmp_path, "0::/", {"memory.max": "max"})
    assert memory_limit(proc, root) is None


def test_v1_limit_and_v1_unlimited(tmp_path: Path) -> None:
    line = "4:memory:/process_api/x\n0::/"
    proc, root = _tree(tmp_path, line, {"memory/process_api/x/memory.limit_in_bytes": "268435456"})
    assert memory_limit(proc, root) == 256 * MIB
    proc, root = _tree(
        tmp_path / "u", line, {"memory/process_api/x/memory.limit_in_bytes": "9223372036854771712"}
    )
    assert memory_limit(proc, root) is None


def test_no_cgroup_file_means_no_limit(tmp_path: Path) -> None:
    assert memory_limit(tmp_path / "absent", tmp_path) is None


def test_sigkill_names_memory_and_the_limit() -> None:
    text = describe_exit(-9, [], 256 * MIB)
    assert text.startswith("killed by SIGKILL (exit code -9): out of memory?")
    assert "memory limit is 256 MiB" in text
    assert describe_exit(-9, [], None) == "killed by SIGKILL (exit code -9): out of memory?"


def test_heap_exhaustion_and_other_endings() -> None:
    lines = ["FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory"]
    assert describe_exit(-6, lines, None).startswith("out of JavaScript heap")
    assert describe_exit(-15, [], None) == "killed by SIGTERM (exit code -15)"
    assert describe_exit(3, ["bye"], 256 * MIB) == "exit code 3"
