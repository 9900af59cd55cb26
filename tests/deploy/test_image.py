"""The runner image, built for real with buildah and run as uid 1001 against the test PostgreSQL.

Covers both ways the app's migrations reach the runner (README.md, "Deploying on Kubernetes"):
(b) the initContainer copy into a shared emptyDir, with the exact command of
k8s/migration-job.yaml, and (a) the derived image of container/Dockerfile.app-migrations.
Runs use the host network (buildah --network host), so 127.0.0.1:5432 is the test server.
``--read-only`` runs enforce what the Pod's securityContext asks for: read-only root, a tmpfs
/tmp, no capabilities, no_new_privs.

Slow: the first build takes minutes (debootstrap + apt + pip + npm); see build-image.sh.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import FIXTURES
from tests.deploy.manifests import K8S, ROOT, argv, containers, load, pod_spec
from tests.support.ci import under_ci
from tests.support.pg import url_parts

pytestmark = pytest.mark.slow

BUILD = ROOT / "container" / "build-image.sh"
SHIM_SEQUELIZE = "/opt/migrunner/lib/python3.11/site-packages/migrations_compat/shim/node_modules"
MIGRATIONS = sorted(p.name for p in (FIXTURES / "image" / "src" / "migrations").iterdir())


def _tooling_or_skip() -> None:
    missing = [t for t in ("buildah", "debootstrap", "unshare", "setpriv") if not shutil.which(t)]
    reason = None
    if missing:
        reason = f"missing {', '.join(missing)} (run container/ci-deps.sh)"
    elif os.geteuid() != 0:
        reason = "image builds with vfs storage and chroot isolation need root"
    if reason:
        if under_ci():
            pytest.fail(reason)
        pytest.skip(reason)


def sh(*args: str | Path, timeout: float = 900, check: bool = True) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc.stdout


def run_in(
    image: str, *cmd: str, env: dict[str, str], volumes: tuple[str, ...] = (), ro: bool = False
) -> subprocess.CompletedProcess[str]:
    args: list[str] = [str(BUILD), "run"]
    if ro:
        args.append("--read-only")
    for v in volumes:
        args += ["-v", v]
    for k, v in env.items():
        args += ["-e", f"{k}={v}"]
    return subprocess.run([*args, image, "--", *cmd], capture_output=True, text=True, timeout=300)


def manifest_command(rel: str, container: str) -> list[str]:
    (doc,) = load(K8S / rel)
    spec = pod_spec(doc)
    assert spec is not None
    (c,) = [c for c in containers(spec) if c["name"] == container]
    return argv(c)


def job_env(db_url: str, pod: str) -> dict[str, str]:
    return {**url_parts(db_url), "NODE_ENV": "production", "POD_NAME": pod,
            "POD_NAMESPACE": "educard"}  # fmt: skip


def assert_migrated(db: psycopg.Connection, pod: str) -> None:
    names = [r[0] for r in db.execute('SELECT name FROM "SequelizeMeta" ORDER BY name')]
    assert names == MIGRATIONS
    assert db.execute('SELECT email, "displayName" FROM members').fetchall() == [
        ("first@example.test", "First")
    ]
    assert db.execute("SELECT to_regclass('topics') IS NOT NULL").fetchone() == (True,)
    pods = {r[0] for r in db.execute("SELECT DISTINCT runner_pod FROM migrunner_history")}
    assert pods == {f"educard/{pod}"}


@pytest.fixture(scope="module")
def runner_image() -> Iterator[str]:
    _tooling_or_skip()
    tag = "localhost/migrunner:test"
    started = time.monotonic()
    sh(BUILD, "build", "--tag", tag)
    print(f"\nrunner image built in {time.monotonic() - started:.0f}s")
    print(sh(BUILD, "size", "--tag", tag))
    yield tag


@pytest.fixture(scope="module")
def app_image(runner_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A stand-in for the app's image: /app/src/{migrations,config} and an npm-installed
    /app/node_modules (sequelize, pg and their dependencies, plus a package nothing needs)."""
    ctx = tmp_path_factory.mktemp("app-image")
    shutil.copytree(FIXTURES / "image" / "src", ctx / "src")
    (ctx / "Dockerfile").write_text(
        f"FROM {runner_image}\n"
        "USER 0\n"
        "COPY src /app/src\n"
        f"RUN cp -R {SHIM_SEQUELIZE} /app/node_modules \\\n"
        " && mkdir /app/node_modules/unneeded-pkg \\\n"
        ' && echo \'{"name":"unneeded-pkg","version":"1.0.0"}\' \\\n'
        "      > /app/node_modules/unneeded-pkg/package.json\n"
        "USER 1001:1001\n"
    )
    tag = f"localhost/educard-app-fixture:{uuid.uuid4().hex[:8]}"
    sh(BUILD, "build", "--tag", tag, "--file", ctx / "Dockerfile", "--context", ctx)
    yield tag
    sh(BUILD, "buildah", "rmi", "-f", tag, check=False)


def test_image_metadata(runner_image: str) -> None:
    info = json.loads(sh(BUILD, "buildah", "inspect", "--type", "image", runner_image))
    config = info["OCIv1"]["config"]
    assert config["User"] == "1001:1001"
    assert config["Entrypoint"] == ["migrunner"]
    assert config["WorkingDir"] == "/app"
    assert "HOME=/tmp" in config["Env"] and "TMPDIR=/tmp" in config["Env"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "migrunner"
    assert labels["org.opencontainers.image.base.name"].endswith("debian:bookworm-slim")
    revision = labels["org.opencontainers.image.revision"]
    assert len(revision) == 40
    sh("git", "-C", ROOT, "cat-file", "-e", f"{revision}^{{commit}}")  # a commit of this repo


def test_build_secret_ca_is_not_in_the_image(runner_image: str) -> None:
    """The host's extra CAs (a TLS proxy's) reached pip/npm as a build secret only."""
    local = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    if not local:
        pytest.skip("this host has no local CA to look for")
    bundle = run_in(runner_image, "cat", "/etc/ssl/certs/ca-certificates.crt", env={})
    assert bundle.returncode == 0, bundle.stderr
    assert bundle.stdout.count("BEGIN CERTIFICATE") > 50  # Debian's own bundle is there
    for crt in local:
        body = [ln for ln in crt.read_text().splitlines() if ln and "CERTIFICATE" not in ln]
        assert body[1] not in bundle.stdout, f"{crt.name} leaked into the image"
    secrets = run_in(runner_image, "ls", "/run/secrets", env={})
    assert secrets.returncode != 0 or not secrets.stdout.strip()


def test_job_command_in_image_as_uid_1001(
    runner_image: str, db_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    """The Job's exact command line, the app's files on a read-only volume at /app and no
    node_modules of the app: JS migrations run on the image's own (shim) sequelize."""
    app = tmp_path / "app"
    shutil.copytree(FIXTURES / "image", app)
    app.chmod(0o755)
    who = run_in(runner_image, "id", "-u", env={})
    assert who.stdout.strip() == "1001", who.stderr

    cmd = manifest_command("migration-job.yaml", "migrate")
    env = job_env(db_url, "educard-migration-img01")
    proc = run_in(runner_image, *cmd, env=env, volumes=(f"{app}:/app:ro",))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Migrations completed successfully" in out
    assert f"using sequelize 6.37.8 from {SHIM_SEQUELIZE}/sequelize" in out
    assert_migrated(db, "educard-migration-img01")

    status = run_in(
        runner_image,
        *manifest_command("deployment-wait.yaml", "wait-for-schema"),
        env=job_env(db_url, "educard-web-1"),
        volumes=(f"{app}:/app:ro",),
    )
    assert status.returncode == 0, status.stderr


def test_read_only_root_no_capabilities(
    runner_image: str, db_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    probe = run_in(
        runner_image,
        "sh",
        "-c",
        "id -u; id -g; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status;"
        " touch /opt/x 2>/dev/null && echo root-writable || echo root-read-only;"
        " touch /tmp/x && echo tmp-writable",
        env={},
        ro=True,
    )
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.split()
    assert lines[:2] == ["1001", "1001"]
    assert "CapEff:\t0000000000000000" in probe.stdout
    assert "CapBnd:\t0000000000000000" in probe.stdout
    assert "NoNewPrivs:\t1" in probe.stdout
    assert "root-read-only" in lines and "tmp-writable" in lines

    app = tmp_path / "app"
    shutil.copytree(FIXTURES / "image", app)
    cmd = manifest_command("migration-job.yaml", "migrate")
    proc = run_in(
        runner_image,
        *cmd,
        env=job_env(db_url, "educard-migration-ro001"),
        volumes=(f"{app}:/app:ro",),
        ro=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Migrations completed successfully" in proc.stdout + proc.stderr
    assert_migrated(db, "educard-migration-ro001")


def test_initcontainer_pattern_copies_app_files_into_shared_volume(
    runner_image: str, app_image: str, db_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    """Pattern (b): the app image's initContainer command of migration-job.yaml fills the
    emptyDir; the migrunner container reads it at /app and uses the APP's sequelize."""
    shared = tmp_path / "emptydir"
    shared.mkdir()
    shared.chmod(0o777)  # an emptyDir is writable by the pod's fsGroup
    copy_cmd = manifest_command("migration-job.yaml", "app-files")
    copied = run_in(app_image, *copy_cmd, env={}, volumes=(f"{shared}:/shared",), ro=True)
    assert copied.returncode == 0, copied.stderr
    assert (shared / "src" / "migrations" / MIGRATIONS[0]).is_file()
    assert (shared / "node_modules" / "sequelize" / "package.json").is_file()

    cmd = manifest_command("migration-job.yaml", "migrate")
    proc = run_in(
        runner_image,
        *cmd,
        env=job_env(db_url, "educard-migration-init1"),
        volumes=(f"{shared}:/app:ro",),
        ro=True,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "using sequelize 6.37.8 from /app/node_modules/sequelize" in out
    assert_migrated(db, "educard-migration-init1")


def test_derived_image_pattern(
    app_image: str, runner_image: str, db_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    """Pattern (a): Dockerfile.app-migrations FROM the app image; the result migrates with no
    volume, on the app's sequelize, and carries only sequelize + pg's dependency closure."""
    tag = f"localhost/educard-migrations-fixture:{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    sh(
        BUILD, "build", "--tag", tag,
        "--file", ROOT / "container" / "Dockerfile.app-migrations",
        "--context", tmp_path,
        "--build-arg", f"APP_IMAGE={app_image}",
        "--build-arg", f"MIGRUNNER_IMAGE={runner_image}",
    )  # fmt: skip
    print(f"\nderived image built in {time.monotonic() - started:.0f}s")
    try:
        listing = run_in(tag, "ls", "/app/node_modules", env={})
        modules = set(listing.stdout.split())
        assert {"sequelize", "pg", "lodash", "pg-connection-string"} <= modules
        assert "unneeded-pkg" not in modules

        cmd = manifest_command("migration-job.yaml", "migrate")
        proc = run_in(tag, *cmd, env=job_env(db_url, "educard-migration-drv01"), ro=True)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        # the image build baked a startup snapshot of the app's sequelize, valid read-only
        assert "using sequelize 6.37.8 from /app/node_modules/sequelize (startup snapshot)" in out
        assert_migrated(db, "educard-migration-drv01")
    finally:
        sh(BUILD, "buildah", "rmi", "-f", tag, check=False)
