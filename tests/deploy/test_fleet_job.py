"""k8s/fleet-job.yaml: an Indexed Job whose pods run `migrunner fleet up` on their shard.

The generic manifest tests (schema, restricted pods, resources, no inlined secret, the command
accepted by the CLI) cover it with the other files; these check what is particular to a fleet
and run the pods' exact command line for real, one process per completion index at once.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from runner.fleet import RETRYABLE_EXIT_CODES
from tests.conftest import FIXTURES, popen_cli
from tests.deploy.manifests import K8S, argv, containers, load, option, pod_spec
from tests.support.pg import url_parts, with_database

FLEET_JOB = K8S / "fleet-job.yaml"


def _job() -> tuple[dict, dict]:
    (doc,) = load(FLEET_JOB)
    spec = pod_spec(doc)
    assert spec is not None
    (migrate,) = [c for c in containers(spec) if c["name"] == "migrate"]
    return doc.body, migrate


def test_fleet_job_is_indexed_with_one_shard_per_completion() -> None:
    job, migrate = _job()
    spec = job["spec"]
    args = argv(migrate)
    assert args[1:3] == ["fleet", "up"]
    assert spec["completionMode"] == "Indexed"
    assert option(args, "--shards") == str(spec["completions"])
    assert "--shard" not in args  # the index comes from JOB_COMPLETION_INDEX
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_fleet_job_retries_only_what_a_retry_can_fix() -> None:
    job, _migrate = _job()
    (rule,) = job["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailIndex"
    assert rule["onExitCodes"]["operator"] == "In"
    fail_now = set(rule["onExitCodes"]["values"])
    assert fail_now == {1, 2, 6}
    assert not fail_now & set(RETRYABLE_EXIT_CODES)
    assert job["spec"]["backoffLimitPerIndex"] >= 1


def test_fleet_job_pods_together_migrate_every_tenant_once(pg_server: str, tmp_path: Path) -> None:
    """All completion indexes start at once with the manifest's exact arguments (/app pointing
    at a copy of the image fixture, the tenant pattern narrowed to this test's databases)."""
    job, migrate = _job()
    app = tmp_path / "app"
    shutil.copytree(FIXTURES / "image", app)
    prefix = f"mrtfleet{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}_{i}" for i in range(8)]
    args = [
        str(app) + a[len("/app") :] if a.startswith("/app/") else a.replace("tenant", prefix)
        for a in argv(migrate)[1:]
    ]
    assert any(prefix in a for a in args)
    env = {**url_parts(pg_server), "NODE_ENV": "production", "POD_NAMESPACE": "educard"}
    with psycopg.connect(pg_server, autocommit=True) as conn:
        for n in names:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(n)))
    try:
        procs = [
            popen_cli(*args, env={**env, "JOB_COMPLETION_INDEX": str(i), "POD_NAME": f"p-{i}"})
            for i in range(job["spec"]["completions"])
        ]
        for proc in procs:
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, out + err
        migrations = sorted(p.name for p in (app / "src" / "migrations").iterdir())
        pods_per_tenant = []
        for n in names:
            with psycopg.connect(with_database(pg_server, n), autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT name, runner_pod FROM migrunner_history "
                    "WHERE outcome = 'applied' ORDER BY name"
                ).fetchall()
            assert [r[0] for r in rows] == migrations, n
            pods_per_tenant.append({r[1] for r in rows})
        # one pod migrated each tenant; more than one pod had work (the canary aside)
        assert all(len(p) == 1 for p in pods_per_tenant)
        assert len(set().union(*pods_per_tenant)) > 1
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            for n in names:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(n))
                )
