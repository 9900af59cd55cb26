"""Reading the Kubernetes manifests of k8s/ for the deploy tests (helpers, no tests here)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"

#: The Kubernetes release the manifests are validated against (kubernetes-validate's schemas).
K8S_VERSION = "1.32.0"

#: Subcommands of migrunner, as the manifests' command lines may use them.
MIGRUNNER_COMMANDS = {"up", "status", "db:migrate", "db:migrate:status", "wait", "fleet"}


@dataclass(frozen=True)
class Doc:
    path: Path
    body: dict[str, Any]

    @property
    def rel(self) -> str:
        return str(self.path.relative_to(ROOT))

    @property
    def kind(self) -> str:
        return str(self.body["kind"])


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest in k8s/ (kustomization files are kustomize's, not the API's)."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def load(path: Path) -> list[Doc]:
    with path.open(encoding="utf-8") as f:
        return [Doc(path, d) for d in yaml.safe_load_all(f) if d]


def all_docs() -> list[Doc]:
    return [doc for path in manifest_files() for doc in load(path)]


def pod_spec(doc: Doc) -> dict[str, Any] | None:
    if doc.kind in {"Job", "Deployment", "StatefulSet", "DaemonSet"}:
        spec: dict[str, Any] = doc.body["spec"]["template"]["spec"]
        return spec
    if doc.kind == "Pod":
        pod: dict[str, Any] = doc.body["spec"]
        return pod
    return None


def workload_docs() -> list[Doc]:
    return [d for d in all_docs() if pod_spec(d) is not None]


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def is_migrunner(container: dict[str, Any]) -> bool:
    return "/migrunner:" in container["image"] or container.get("command") == ["migrunner"]


def argv(container: dict[str, Any]) -> list[str]:
    """The container's command line; the image's entrypoint is ``migrunner`` if none is set."""
    return [*container.get("command", ["migrunner"]), *container.get("args", [])]


def option(args: list[str], name: str) -> str | None:
    """Value of ``--name VALUE`` or ``--name=VALUE`` in a command line."""
    for i, word in enumerate(args):
        if word == name and i + 1 < len(args):
            return args[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def env_value(container: dict[str, Any], name: str) -> dict[str, Any] | None:
    for item in container.get("env", []):
        if item["name"] == name:
            return dict(item)
    return None
