"""k8s/run-migration.sh: shellcheck-clean, and its argument handling and decisions.

There is no Kubernetes cluster here, so the script talks to a recording stand-in for kubectl
(``KUBECTL``) that answers like kubectl for one Job and its pod. What is tested is the script's
own logic: parsing, asking before deleting, the order of calls, following the pod, turning the
Job status and migrunner's exit code into its own exit code and message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.manifests import K8S

SCRIPT = K8S / "run-migration.sh"

STUB = r"""
import json, os, sys

state_path = os.environ["STUB_STATE"]
with open(state_path) as f:
    state = json.load(f)
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps(args) + "\n")

ctx = []
while args and args[0] in ("--context", "-n"):
    ctx += args[:2]
    args = args[2:]

def save():
    with open(state_path, "w") as f:
        json.dump(state, f)

def jsonpath():
    for a in args:
        if a.startswith("jsonpath="):
            return a[len("jsonpath="):]
    return args[args.index("-o") + 1][len("jsonpath="):] if "-o" in args else ""

pod = "educard-migration-ab12c"
verb = args[0]
if verb == "get" and args[1] == "job":
    if not state["job_exists"]:
        print('Error from server (NotFound): jobs.batch "x" not found', file=sys.stderr)
        sys.exit(1)
    jp = jsonpath()
    if "status==" in jp:
        print(state["outcome"], end="")
    elif "type==" in jp:
        print("BackoffLimitExceeded" if state["outcome"] == "Failed" else "", end="")
    sys.exit(0)
if verb == "delete" and args[1] == "job":
    state["job_exists"] = False
    save()
    sys.exit(0)
if verb == "apply":
    state["job_exists"] = True
    save()
    print("job.batch/educard-migration created")
    sys.exit(0)
if verb == "get" and args[1] == "pods":
    print(pod, end="")
    sys.exit(0)
if verb == "get" and args[1] == "pod":
    jp = jsonpath()
    if args[2] != pod:
        print("Succeeded", end="")
    elif jp.endswith("exitCode}"):
        print(state["exit_code"], end="")
    elif ".state}" in jp:
        print(json.dumps({"terminated": {"exitCode": state["exit_code"]}}), end="")
    elif jp.startswith("{range"):
        print("migrunner\ndb:migrate\n--config\n/app/src/config/database.js\n--to\nx.js\n"
              "--env\nproduction\n--lock-timeout\n600\n")
    sys.exit(0)
if verb == "logs":
    if "pod/" + pod in args:
        print("Migrations completed successfully" if state["exit_code"] == 0 else "error: boom")
    else:
        print("STATUS-OUTPUT")
    sys.exit(0)
if verb in ("debug", "describe") or (verb == "delete" and args[1] == "pod"):
    sys.exit(0)
print("stub: unexpected call", args, file=sys.stderr)
sys.exit(99)
"""


class Kubectl:
    """A stand-in kubectl for one Job: its answers come from a JSON state file."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bin = tmp / "kubectl"
        self.bin.write_text(f"#!{sys.executable}\n{STUB}")
        self.bin.chmod(0o755)
        self.log = tmp / "calls.jsonl"
        self.state = tmp / "state.json"
        self.set(job_exists=False, outcome="Complete", exit_code=0)

    def set(self, **kw: object) -> None:
        current = json.loads(self.state.read_text()) if self.state.exists() else {}
        self.state.write_text(json.dumps({**current, **kw}))

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def verbs(self) -> list[str]:
        out = []
        for call in self.calls():
            while call and call[0] in ("--context", "-n"):
                call = call[2:]
            out.append(" ".join(call[:2]))
        return out


@pytest.fixture
def kubectl(tmp_path: Path) -> Kubectl:
    return Kubectl(tmp_path)


def run(
    *args: str, kubectl: Kubectl | None = None, stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECTL"}
    if kubectl is not None:
        env.update(
            KUBECTL=str(kubectl.bin), STUB_LOG=str(kubectl.log), STUB_STATE=str(kubectl.state)
        )
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (container/ci-deps.sh installs it)")
    proc = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in SCRIPT.read_text()


def test_help() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("Usage: run-migration.sh")
    for flag in ("--yes", "--namespace", "--file", "--timeout", "--no-status"):
        assert flag in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown argument: --bogus"),
        (["extra"], "unknown argument: extra"),
        (["-n"], "-n needs a value"),
        (["--namespace", "--yes"], "--namespace needs a value"),
        (["-t", "soon"], "--timeout must be a whole number"),
        (["-t", "0"], "--timeout must be a whole number"),
        (["-f", "/nonexistent/job.yaml"], "manifest not found"),
        (["-j", "Bad_Name"], "not a valid Job name"),
    ],
)
def test_bad_arguments_exit_2_before_touching_the_cluster(
    kubectl: Kubectl, args: list[str], message: str
) -> None:
    proc = run(*args, kubectl=kubectl)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Try --help." in proc.stderr
    assert kubectl.calls() == []


def test_missing_kubectl_is_a_usage_error(tmp_path: Path) -> None:
    env = {**os.environ, "KUBECTL": str(tmp_path / "no-kubectl")}
    proc = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=30
    )
    assert proc.returncode == 2
    assert "kubectl not found" in proc.stderr


@pytest.mark.parametrize("answer", ["n\n", "\n", ""], ids=["no", "empty", "eof"])
def test_existing_job_is_kept_unless_the_operator_agrees(kubectl: Kubectl, answer: str) -> None:
    kubectl.set(job_exists=True)
    proc = run(kubectl=kubectl, stdin=answer)
    assert proc.returncode == 1
    assert "Delete it and its pods? [y/N]" in proc.stderr
    assert "aborted" in proc.stderr
    assert kubectl.verbs() == ["get job"]


def test_existing_job_deleted_after_yes_then_applied(kubectl: Kubectl) -> None:
    kubectl.set(job_exists=True)
    proc = run("--no-status", kubectl=kubectl, stdin="y\n")
    assert proc.returncode == 0, proc.stderr
    verbs = kubectl.verbs()
    assert verbs[:3] == ["get job", "delete job", "apply -f"]
    delete = next(c for c in kubectl.calls() if c[2:4] == ["delete", "job"])
    assert "--cascade=foreground" in delete and "--wait=true" in delete


def test_yes_flag_skips_the_question(kubectl: Kubectl) -> None:
    kubectl.set(job_exists=True)
    proc = run("--yes", "--no-status", kubectl=kubectl)
    assert proc.returncode == 0, proc.stderr
    assert "[y/N]" not in proc.stderr
    assert "delete job" in kubectl.verbs()


def test_success_follows_logs_and_prints_status_from_a_pod_copy(kubectl: Kubectl) -> None:
    proc = run(kubectl=kubectl)
    assert proc.returncode == 0, proc.stderr
    assert "Migrations completed successfully" in proc.stdout
    assert "job/educard-migration succeeded" in proc.stderr
    assert "STATUS-OUTPUT" in proc.stdout
    (debug,) = [c for c in kubectl.calls() if "debug" in c]
    assert "--container=migrate" in debug
    tail = debug[debug.index("--") + 1 :]
    assert tail[:2] == ["sh", "-c"]
    assert "migrunner status" in tail[2] and "migrunner lock status" in tail[2]
    # The Job's own options, minus its subcommand and the subcommand-only --to NAME.
    assert tail[3:] == [
        "sh",
        "--config",
        "/app/src/config/database.js",
        "--env",
        "production",
        "--lock-timeout",
        "600",
    ]
    assert kubectl.verbs()[-1] == "delete pod"


@pytest.mark.parametrize(
    ("code", "meaning"),
    [
        (1, "a migration failed"),
        (4, "migration lock: another runner held it too long, or this runner lost it"),
        (5, "database unreachable"),
        (6, "drift"),
    ],
)
def test_failure_exits_with_migrunners_code(kubectl: Kubectl, code: int, meaning: str) -> None:
    kubectl.set(outcome="Failed", exit_code=code)
    proc = run("--no-status", kubectl=kubectl)
    assert proc.returncode == code
    assert "failed (BackoffLimitExceeded)" in proc.stderr
    assert f"migrunner exited {code}: {meaning}" in proc.stderr
    assert "debug" not in " ".join(kubectl.verbs())


def test_namespace_and_context_reach_every_call(kubectl: Kubectl) -> None:
    proc = run("--context", "prod-eu", "-n", "forum", "--no-status", kubectl=kubectl)
    assert proc.returncode == 0, proc.stderr
    calls = kubectl.calls()
    assert calls
    assert all(c[:4] == ["--context", "prod-eu", "-n", "forum"] for c in calls)
