"""deploy/kubernetes: every manifest validates against the Kubernetes schema; the deployment is what docs promise.

Strict validation with ``kubernetes-validate`` against the newest release it
ships; the orchestrator's pod template against the Pod Security Standards
"restricted" profile (the namespace enforces it); the Role against what the
backend uses (:data:`orchestrator.backends.kubernetes.api.RBAC_RULES`); the
ConfigMap's config through the orchestrator's own config loader and the
backend's settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from orchestrator.backends.kubernetes.api import RBAC_RULES
from orchestrator.backends.kubernetes.pss import violations
from orchestrator.backends.kubernetes.settings import load_settings
from orchestrator.backends.tls import WORKER_PORT
from orchestrator.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
K8S_VERSION = kubernetes_validate.latest_version()


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def _kustomization() -> dict[str, Any]:
    out: dict[str, Any] = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return out


def _all() -> list[dict[str, Any]]:
    return [d for f in _kustomization()["resources"] for d in _docs(f)]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in _all() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def test_kustomization_lists_every_manifest() -> None:
    listed = _kustomization()["resources"]
    on_disk = sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    assert len(set(listed)) == len(listed)
    kinds = {d["kind"] for d in _all()}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "PersistentVolumeClaim",
            "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"} <= kinds


@pytest.mark.parametrize("resource", sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_manifest_validates_against_the_kubernetes_schema(resource: str) -> None:
    for doc in _docs(resource):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "mlbridge", doc["metadata"]["name"]


def test_the_namespace_enforces_restricted() -> None:
    labels = _one("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_orchestrator_pod_meets_the_restricted_profile() -> None:
    template = _one("Deployment")["spec"]["template"]
    assert violations(template) == []
    spec = template["spec"]
    (c,) = spec["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["runAsUser"] == 10001 and spec["securityContext"]["fsGroup"] == 10001


def test_the_deployment_is_one_recreated_replica_with_state_on_a_volume() -> None:
    dep = _one("Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]
    ann = pod["metadata"]["annotations"]
    assert ann == {"prometheus.io/scrape": "true", "prometheus.io/port": "9464", "prometheus.io/path": "/metrics"}
    spec = pod["spec"]
    (c,) = spec["containers"]
    assert c["readinessProbe"]["grpc"] == {"port": 50051, "service": "mlbridge.v1.MLBridge"}
    assert c["livenessProbe"]["grpc"] == {"port": 50051}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    pvc = _one("PersistentVolumeClaim")
    assert volumes[mounts["/var/lib/mlbridge"]]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert volumes[mounts["/etc/mlbridge"]]["configMap"]["name"] == _one("ConfigMap")["metadata"]["name"]
    env = {e["name"]: e for e in c["env"]}
    assert env["MLBRIDGE_POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert spec["serviceAccountName"] == _one("RoleBinding")["subjects"][0]["name"]
    assert "@sha256:" in c["image"]


def test_the_config_is_a_kubernetes_config_the_backend_accepts(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(_one("ConfigMap")["data"]["config.yaml"])
    cfg = load_config(path, env={})
    assert cfg.backend == "kubernetes" and cfg.worker_channel == "tcp-mtls"
    assert str(cfg.state_dir) == "/var/lib/mlbridge" and cfg.metrics_listen == "0.0.0.0:9464"
    settings = load_settings(cfg.backend_options)
    template_labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert settings.orchestrator_selector.items() <= template_labels.items()
    accounts = {d["metadata"]["name"]: d for d in _all() if d["kind"] == "ServiceAccount"}
    assert accounts[settings.worker_service_account]["automountServiceAccountToken"] is False
    for bridge, bcfg in cfg.bridges.items():
        settings.image_for(bridge, bcfg.image)  # pinned by digest


def test_the_role_is_exactly_what_the_backend_uses_in_its_namespace() -> None:
    role = _one("Role")
    got = sorted((g, r, tuple(sorted(rule["verbs"]))) for rule in role["rules"] for g in rule["apiGroups"]
                 for r in rule["resources"])
    assert got == sorted((g, r, tuple(sorted(v))) for g, r, v in RBAC_RULES)
    assert not [d for d in _all() if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    binding = _one("RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    # Secrets are never read or listed.
    assert not {"get", "list", "watch"} & {v for g, r, vs in RBAC_RULES if r == "secrets" for v in vs}


def test_network_policies_let_the_orchestrator_reach_its_workers() -> None:
    orch = _one("NetworkPolicy", "mlbridge-orchestrator")
    deny = _one("NetworkPolicy", "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    to_workers = [r for r in orch["spec"]["egress"] if any("podSelector" in t for t in r.get("to", []))
                  and r["ports"] == [{"protocol": "TCP", "port": WORKER_PORT}]]
    assert to_workers, "the orchestrator must reach workers on 7443"
    proxy_in = [r for r in orch["spec"]["ingress"] if any(p.get("endPort") for p in r.get("ports", []))]
    assert proxy_in and proxy_in[0]["from"][0]["podSelector"]["matchExpressions"][0]["key"] == "io.mlbridge.worker"


def test_the_service_and_pdb_select_the_orchestrator() -> None:
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    svc = _one("Service")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["port"] == 50051
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
