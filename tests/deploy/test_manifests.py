"""The Kubernetes manifests of k8s/: schema-valid, restricted, resourced, no inlined secrets,
and their command lines are ones the real migrunner CLI accepts and runs.

Schemas: kubernetes-validate's copy of the OpenAPI schemas for ``K8S_VERSION`` (offline).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import psycopg
import pytest
import yaml

from tests.conftest import FIXTURES, popen_cli, run_cli
from tests.deploy.manifests import (
    K8S,
    K8S_VERSION,
    MIGRUNNER_COMMANDS,
    ROOT,
    Doc,
    all_docs,
    argv,
    containers,
    env_value,
    is_migrunner,
    load,
    manifest_files,
    option,
    pod_spec,
    workload_docs,
)
from tests.support.pg import url_parts

JOB_FILES = [
    K8S / "migration-job.yaml",
    K8S / "helm" / "migration-job-hook.yaml",
    K8S / "argocd" / "migration-job-presync.yaml",
]
SECRET_NAMES = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE|DATABASE_URL|DIRECT_URL|^DB_USER$", re.I)


def the_job(path: Path) -> Doc:
    (doc,) = load(path)
    assert doc.kind == "Job"
    return doc


def migrunner_containers(doc: Doc) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    assert spec is not None
    return [c for c in containers(spec) if is_migrunner(c)]


def ids(docs: list[Doc]) -> list[str]:
    return [f"{d.rel}:{d.kind}/{d.body['metadata']['name']}" for d in docs]


# -- schema ----------------------------------------------------------------------------------


def test_every_file_in_k8s_is_covered() -> None:
    names = {p.relative_to(K8S).as_posix() for p in manifest_files()}
    assert {
        "migration-job.yaml",
        "deployment-initcontainer.yaml",
        "deployment-wait.yaml",
        "helm/migration-job-hook.yaml",
        "argocd/migration-job-presync.yaml",
        "examples/configmap.yaml",
        "examples/secret.example.yaml",
        "fleet-job.yaml",
    } <= names


@pytest.mark.parametrize("doc", all_docs(), ids=ids(all_docs()))
def test_manifest_validates_against_kubernetes_schema(doc: Doc) -> None:
    kubernetes_validate.validate(doc.body, K8S_VERSION, strict=True)


def test_schema_validation_rejects_what_the_api_server_would() -> None:
    """The validator is not a rubber stamp: typos and wrong types in the Job are caught."""
    job = the_job(K8S / "migration-job.yaml").body
    typo = copy.deepcopy(job)
    typo["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    typo["spec"]["backofLimit"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUser"] = "me"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, K8S_VERSION, strict=True)


@pytest.mark.parametrize("folder", [K8S, K8S / "examples"], ids=["k8s", "k8s/examples"])
def test_kustomization_resources_exist_and_render(folder: Path) -> None:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (folder / resource).is_file(), resource
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (for `kubectl kustomize`) is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True
    ).stdout
    rendered = [d for d in yaml.safe_load_all(out) if d]
    expected = sum(len(load(folder / r)) for r in kustomization["resources"])
    assert len(rendered) == expected
    for body in rendered:
        assert body["metadata"]["namespace"] == "educard"
        kubernetes_validate.validate(body, K8S_VERSION, strict=True)
    if folder == K8S:
        assert sorted(d["kind"] for d in rendered) == ["Deployment", "Job"]


# -- the Job's contract ----------------------------------------------------------------------


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_job_keeps_the_original_contract(path: Path) -> None:
    job = the_job(path).body
    assert job["metadata"]["name"] == "educard-migration"
    assert job["metadata"]["namespace"] == "educard"
    spec = job["spec"]
    assert spec["ttlSecondsAfterFinished"] == 100
    assert spec["backoffLimit"] == 3
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    deadline = spec["activeDeadlineSeconds"]
    assert isinstance(deadline, int) and deadline > 0

    (main,) = spec["template"]["spec"]["containers"]
    assert is_migrunner(main)
    refs = {
        (k, v["name"]) for item in main["envFrom"] for k, v in item.items() if k.endswith("Ref")
    }
    assert refs == {("configMapRef", "educard-config"), ("secretRef", "educard-secrets")}

    args = argv(main)
    assert args[:2] == ["migrunner", "db:migrate"]
    assert option(args, "--config") == "/app/src/config/database.js"
    assert option(args, "--migrations-path") == "/app/src/migrations"
    assert option(args, "--env") == "production"

    # Lock identity: the pod's own name and namespace, from the downward API.
    for name, field in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")]:
        item = env_value(main, name)
        assert item is not None, name
        assert item["valueFrom"]["fieldRef"]["fieldPath"] == field

    # A waiter must give up (exit 4, with a message) before the deadline kills it silently.
    lock = option(args, "--lock-timeout")
    lock_env = env_value(main, "MIGRUNNER_LOCK_TIMEOUT")
    lock_timeout = float(lock if lock is not None else (lock_env or {}).get("value", 300))
    wait_timeout = float(option(args, "--wait-timeout") or 60) if "--wait" in args else 0.0
    assert lock_timeout + wait_timeout < deadline


def test_hook_variants_are_the_job_plus_their_annotations() -> None:
    base = the_job(K8S / "migration-job.yaml").body
    expected = {
        "helm/migration-job-hook.yaml": {
            "helm.sh/hook": "pre-install,pre-upgrade",
            "helm.sh/hook-delete-policy": "before-hook-creation",
            "helm.sh/hook-weight": "0",
        },
        "argocd/migration-job-presync.yaml": {
            "argocd.argoproj.io/hook": "PreSync",
            "argocd.argoproj.io/hook-delete-policy": "BeforeHookCreation",
        },
    }
    for rel, wanted in expected.items():
        variant = copy.deepcopy(the_job(K8S / rel).body)
        assert variant["metadata"].pop("annotations") == wanted
        assert variant == base, f"{rel} drifted from migration-job.yaml"


# -- security and resources ------------------------------------------------------------------


@pytest.mark.parametrize("doc", workload_docs(), ids=ids(workload_docs()))
def test_pods_are_restricted(doc: Doc) -> None:
    spec = pod_spec(doc)
    assert spec is not None
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == 1001
    assert pod_sc["runAsGroup"] == 1001
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec.get("automountServiceAccountToken") is False
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in containers(spec):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, c["name"]
        assert sc["runAsUser"] == 1001, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert "add" not in sc["capabilities"], c["name"]
        assert sc.get("privileged", False) is False, c["name"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", c["name"]
        if is_migrunner(c):
            # The only writable paths: emptyDirs (the image's HOME and TMPDIR are /tmp).
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
            assert mounts["/app"]["readOnly"] is True


@pytest.mark.parametrize("doc", workload_docs(), ids=ids(workload_docs()))
def test_migration_containers_have_the_job_resources(doc: Doc) -> None:
    spec = pod_spec(doc)
    assert spec is not None
    for c in containers(spec):
        if is_migrunner(c) or c["name"] == "app-files":
            assert c["resources"] == {
                "requests": {"memory": "128Mi", "cpu": "100m"},
                "limits": {"memory": "256Mi", "cpu": "200m"},
            }, c["name"]


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


@pytest.mark.parametrize("doc", all_docs(), ids=ids(all_docs()))
def test_no_secret_value_is_inlined(doc: Doc) -> None:
    if doc.kind == "Secret":
        values = {**doc.body.get("data", {}), **doc.body.get("stringData", {})}
        assert values, "an example Secret shows its keys"
        assert all(v == "" for v in values.values()), "example Secret carries a real value"
        return
    for node in _walk(doc.body):
        is_env = "name" in node and ("value" in node or "valueFrom" in node)
        if is_env and SECRET_NAMES.search(str(node["name"])):
            assert "value" not in node, f"{node['name']} is inlined; use secretKeyRef"
        for key in ("command", "args"):
            for word in node.get(key, []) if isinstance(node.get(key), list) else []:
                assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", str(word)), word
                assert not str(word).startswith(("--url", "--direct-url")), word
    if doc.kind == "ConfigMap":
        leaked = [k for k in doc.body.get("data", {}) if SECRET_NAMES.search(k)]
        assert not leaked, f"secret-like keys in a ConfigMap: {leaked}"


# -- the Deployments -------------------------------------------------------------------------


def _deployment(rel: str) -> Doc:
    (doc,) = load(K8S / rel)
    assert doc.kind == "Deployment"
    return doc


@pytest.mark.parametrize(
    ("rel", "subcommand"),
    [("deployment-initcontainer.yaml", "up"), ("deployment-wait.yaml", "status")],
)
def test_deployment_runs_migrunner_before_the_app(rel: str, subcommand: str) -> None:
    doc = _deployment(rel)
    spec = pod_spec(doc)
    assert spec is not None
    init_names = [c["name"] for c in spec["initContainers"]]
    runner = [c for c in spec["initContainers"] if is_migrunner(c)]
    assert len(runner) == 1 and not any(is_migrunner(c) for c in spec["containers"])
    # The app's files are copied into the shared emptyDir before migrunner reads them.
    assert init_names.index("app-files") < init_names.index(runner[0]["name"])
    args = argv(runner[0])
    assert args[1] == subcommand
    if subcommand == "up":
        assert option(args, "--lock-timeout") is not None
    else:
        assert "--exit-code" in args and "--wait" in args


# -- the command lines against the real CLI --------------------------------------------------

COMMAND_LINES = [
    (doc, c) for doc in workload_docs() for c in migrunner_containers(doc) if argv(c)[1:]
]


@pytest.mark.parametrize(
    ("doc", "container"),
    COMMAND_LINES,
    ids=[f"{d.rel}:{c['name']}" for d, c in COMMAND_LINES],
)
def test_command_line_is_accepted_by_migrunner(doc: Doc, container: dict[str, Any]) -> None:
    args = argv(container)
    assert args[0] == "migrunner"
    assert args[1] in MIGRUNNER_COMMANDS
    proc = run_cli(*args[1:], "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"Usage: migrunner {args[1]} " in proc.stdout


def _localise(args: list[str], app: Path) -> list[str]:
    return [str(app) + a[len("/app") :] if a.startswith("/app/") else a for a in args]


def test_command_lines_run_for_real(db_url: str, db: psycopg.Connection, tmp_path: Path) -> None:
    """The manifests' exact argument lists, with /app pointing at a copy of the image fixture
    and DB_* set as the ConfigMap and Secret set them: the gate waits, the Job migrates, and
    the per-replica initContainer then finds nothing to do."""
    app = tmp_path / "app"
    shutil.copytree(FIXTURES / "image", app)
    env = {**url_parts(db_url), "NODE_ENV": "production", "POD_NAMESPACE": "educard"}

    def line(rel: str, name: str) -> list[str]:
        (doc,) = load(K8S / rel)
        spec = pod_spec(doc)
        assert spec is not None
        (c,) = [c for c in containers(spec) if c["name"] == name]
        return _localise(argv(c)[1:], app)

    job = line("migration-job.yaml", "migrate")
    gate = line("deployment-wait.yaml", "wait-for-schema")
    per_replica = line("deployment-initcontainer.yaml", "migrate")

    # Before the Job: the readiness gate holds (exit 3), here after 1 s instead of 600 s.
    held = run_cli(*gate, "--wait-timeout", "1", env={**env, "POD_NAME": "educard-web-1"})
    assert held.returncode == 3, held.stderr

    dry = run_cli(*job, "--dry-run", env={**env, "POD_NAME": "educard-migration-dry"})
    assert dry.returncode == 0, dry.stderr
    assert db.execute("SELECT to_regclass('members')").fetchone() == (None,)

    ran = run_cli(*job, env={**env, "POD_NAME": "educard-migration-x1y2z"})
    assert ran.returncode == 0, ran.stderr
    assert "Migrations completed successfully" in ran.stdout + ran.stderr
    names = [r[0] for r in db.execute('SELECT name FROM "SequelizeMeta" ORDER BY name')]
    assert names == sorted(p.name for p in (app / "src" / "migrations").iterdir())
    assert db.execute("SELECT email, role FROM members").fetchall() == [
        ("first@example.test", "moderator")
    ]
    pods = {r[0] for r in db.execute("SELECT runner_pod FROM migrunner_history")}
    assert pods == {"educard/educard-migration-x1y2z"}

    opened = run_cli(*gate, env={**env, "POD_NAME": "educard-web-1"})
    assert opened.returncode == 0, opened.stderr

    again = run_cli(*per_replica, env={**env, "POD_NAME": "educard-web-2"})
    assert again.returncode == 0, again.stderr
    assert db.execute('SELECT count(*) FROM "SequelizeMeta"').fetchone() == (3,)


def test_ten_replicas_starting_at_once_migrate_once(
    db_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    """deployment-initcontainer.yaml with replicas: 10 — ten copies of its exact `up` command
    start together: all exit 0, and every migration was applied exactly once, by one pod."""
    app = tmp_path / "app"
    shutil.copytree(FIXTURES / "image", app)
    (doc,) = load(K8S / "deployment-initcontainer.yaml")
    spec = pod_spec(doc)
    assert spec is not None
    (runner,) = [c for c in spec["initContainers"] if is_migrunner(c)]
    args = _localise(argv(runner)[1:], app)
    env = {**url_parts(db_url), "NODE_ENV": "production", "POD_NAMESPACE": "educard"}
    procs = [popen_cli(*args, env={**env, "POD_NAME": f"educard-web-{i}"}) for i in range(10)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, out + err
    applied = db.execute(
        "SELECT name, count(*), count(DISTINCT runner_pod) FROM migrunner_history"
        " WHERE direction = 'up' AND outcome = 'applied' GROUP BY name ORDER BY name"
    ).fetchall()
    names = sorted(p.name for p in (app / "src" / "migrations").iterdir())
    assert applied == [(n, 1, 1) for n in names]
    (pods,) = db.execute(
        "SELECT count(DISTINCT runner_pod) FROM migrunner_history WHERE outcome = 'applied'"
    ).fetchone() or (0,)
    assert pods == 1
    assert db.execute('SELECT count(*) FROM "SequelizeMeta"').fetchone() == (len(names),)


# -- retries: which exit codes a retry can fix -----------------------------------------------

#: migrunner's exit codes a retry cannot fix (the same input fails the same way): fail at once.
NOT_RETRIED = {1, 2, 6}
#: ...and the ones a retry can fix: lock timeout (another runner finished), unreachable database.
RETRIED = {4, 5}


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_job_fails_at_once_on_what_a_retry_cannot_fix(path: Path) -> None:
    spec = the_job(path).body["spec"]
    rules = spec["podFailurePolicy"]["rules"]
    fail_job = [r for r in rules if r["action"] == "FailJob"]
    codes = {c for r in fail_job for c in r["onExitCodes"]["values"]}
    assert codes == NOT_RETRIED and not codes & RETRIED
    assert all(r["onExitCodes"] == {**r["onExitCodes"], "operator": "In"} for r in fail_job)
    # Only the migrunner container's codes: the app-files copy failing is a different story.
    (main,) = spec["template"]["spec"]["containers"]
    assert {r["onExitCodes"]["containerName"] for r in fail_job} == {main["name"]}
    # No rule swallows the retryable codes (they count against backoffLimit).
    for r in rules:
        if "onExitCodes" in r:
            assert not set(r["onExitCodes"]["values"]) & RETRIED, r
    # Evictions and drains are not failures of the migration.
    assert {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    } in rules
    # backoffLimit and the deadline together: every retry of an unreachable database (each
    # attempt waits --wait-timeout, then exits 5) fits in activeDeadlineSeconds, with the
    # Job controller's pod backoff (10 s, doubling) between attempts.
    args = argv(main)
    wait_timeout = float(option(args, "--wait-timeout") or 60)
    attempts = spec["backoffLimit"] + 1
    backoff = sum(10 * 2**i for i in range(spec["backoffLimit"]))
    assert attempts * wait_timeout + backoff < spec["activeDeadlineSeconds"]


def test_readiness_gate_does_not_copy_node_modules() -> None:
    """`status` reads file names and SequelizeMeta; its config is evaluated by a bare node."""
    spec = pod_spec(_deployment("deployment-wait.yaml"))
    assert spec is not None
    (copy_step,) = [c for c in spec["initContainers"] if c["name"] == "app-files"]
    script = " ".join(copy_step["args"])
    assert "node_modules" not in script and "/app/src/migrations" in script
    # The Job that runs JS migrations still brings the app's sequelize.
    job = pod_spec(the_job(K8S / "migration-job.yaml"))
    assert job is not None
    (job_copy,) = [c for c in job["initContainers"] if c["name"] == "app-files"]
    assert "node_modules" in " ".join(job_copy["args"])
