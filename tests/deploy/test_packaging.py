"""Packaging: the LICENSE matches pyproject and ships in the wheel; the image's Python
dependencies are locked (exact versions with hashes) and the lock covers pyproject's ranges;
the Dockerfile names only files that exist; SQLAlchemy is gone."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = ROOT / "container" / "requirements.lock"


def locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) from the pip-compile lock file."""
    out: dict[str, tuple[str, list[str]]] = {}
    name = ""
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if m:
            name = canonicalize_name(m.group(1))
            out[name] = (m.group(2), [])
        h = re.search(r"--hash=sha256:([0-9a-f]{64})", line)
        if h and name:
            out[name][1].append(h.group(1))
    return out


def test_license_file_matches_pyproject() -> None:
    assert PYPROJECT["project"]["license"] == "MIT"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Permission is hereby granted" in text


def test_wheel_carries_the_license(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("migrunner-*.whl")
    with zipfile.ZipFile(wheel) as z:
        (lic,) = [n for n in z.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert z.read(lic).decode() == (ROOT / "LICENSE").read_text()
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = z.read(meta).decode()
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata


def test_lock_pins_every_runtime_dependency_within_its_range() -> None:
    pins = locked()
    for spec in PYPROJECT["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in {LOCK.name}: run container/lock-requirements.sh"
        version, _hashes = pins[name]
        assert req.specifier.contains(version, prereleases=True), (spec, version)
        for extra in req.extras:  # psycopg[binary] -> psycopg-binary, same version
            assert pins[canonicalize_name(f"{req.name}-{extra}")][0] == version
    assert all(hashes for _, hashes in pins.values()), "every pin needs --hash (require-hashes)"
    assert "sqlalchemy" not in pins
    # The image's Node.js: the LTS line container/requirements-image.in asks for.
    node_req = Requirement(
        next(
            ln
            for ln in (ROOT / "container" / "requirements-image.in").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")
        )
    )
    assert node_req.specifier.contains(pins[canonicalize_name(node_req.name)][0])


def test_image_installs_the_lock_with_hashes() -> None:
    dockerfile = (ROOT / "container" / "Dockerfile").read_text()
    assert "COPY pyproject.toml container/requirements.lock ./" in dockerfile
    assert "pip install -q --require-hashes --no-deps -r requirements.lock" in dockerfile
    assert "sqlalchemy" not in dockerfile.lower()


def test_dockerfile_names_only_files_that_exist() -> None:
    ignore = (ROOT / "container" / "Dockerfile.dockerignore").read_text().splitlines()
    for dockerfile in (ROOT / "container").glob("Dockerfile*"):
        if dockerfile.name.endswith(".dockerignore"):
            continue
        text = dockerfile.read_text()
        for ref in set(re.findall(r"\bcontainer/[\w.-]+\b", text)):
            assert (ROOT / ref).exists(), f"{dockerfile.name} names {ref}, which does not exist"
        if dockerfile.name != "Dockerfile":
            continue  # derived images build from another context
        for line in text.splitlines():
            m = re.match(r"^COPY (?!--from)(.+) \S+$", line)
            if not m:
                continue
            for src in m.group(1).split():
                src = src.rstrip("/")
                assert list(ROOT.glob(src)), f"COPY {src}: no such file"
                kept = [p[1:] for p in ignore if p.startswith("!")]
                assert (
                    any(
                        src == k or (k.endswith("/**") and f"{src}/".startswith(k[:-2]))
                        for k in kept
                    )
                    or "[" in src
                ), f"COPY {src}: excluded by Dockerfile.dockerignore"


def test_sqlalchemy_is_not_a_dependency_or_import() -> None:
    deps = [Requirement(d).name.lower() for d in PYPROJECT["project"]["dependencies"]]
    assert "sqlalchemy" not in deps
    for path in [*(ROOT / "runner").rglob("*.py"), *(ROOT / "migrations_compat").rglob("*.py")]:
        assert not re.search(r"^\s*(import|from) sqlalchemy", path.read_text(), re.M), path


def test_lock_refresh_script_is_shellcheck_clean_and_refuses_a_wrong_python(
    tmp_path: Path,
) -> None:
    script = ROOT / "container" / "lock-requirements.sh"
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (container/ci-deps.sh installs it)")
    proc = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    # The lock is resolved for the image's Python: another version is refused before anything
    # is installed or written.
    fake = tmp_path / "python3.12"
    fake.write_text("#!/bin/sh\necho 3.12\n")
    fake.chmod(0o755)
    before = LOCK.read_text()
    run = subprocess.run(
        ["sh", str(script)],
        env={"PYTHON": str(fake), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "the image runs 3.11" in run.stderr
    assert LOCK.read_text() == before
