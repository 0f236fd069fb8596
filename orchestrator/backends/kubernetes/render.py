"""Pure rendering of a worker's Kubernetes objects: ``WorkerSpec`` -> Secret, NetworkPolicy, Pod.

No API calls here: the backend sends exactly what :func:`render_worker`
returns (and the patches :func:`owner_patch`, :func:`tenant_patch` and
:func:`egress_patch` return), and the unit tests validate the very same
dicts against the Kubernetes OpenAPI schema and the Pod Security Standards
"restricted" profile (:mod:`.pss`). Objects are plain JSON-shaped dicts, as
the API server reads them.

The hardened contract of a worker pod (docs/kubernetes.md has the table
beside docker's): uid/gid 10001 and never root, no privilege escalation, all
capabilities dropped, seccomp ``RuntimeDefault``, a read-only root
filesystem with ``/tmp`` a memory-backed ``emptyDir`` capped at
``limits.tmpfs_size``, requests equal to limits (cpu, memory,
ephemeral-storage; ``nvidia.com/gpu`` when ``limits.gpus`` is set), no
service account token, no service links, no host namespaces or host paths,
``restartPolicy: Never`` (a worker that dies is replaced by its pool, and its
exit status must stay readable). The runtime serves TLS on port 7443 with the
files of a per-worker Secret mounted read-only; the NetworkPolicy admits only
the orchestrator's pods to that port and lets the worker reach nothing, or the
egress proxy's port alone once a tenant with an allowlist claims it.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

from orchestrator.config import parse_size
from runtimes.wire.errors import ConfigError

from ..base import LABEL_PREFIX, WorkerSpec
from ..tls import TLS_FILES, WORKER_PORT, WorkerCredentials
from .settings import KubernetesSettings, check_label_value

__all__ = [
    "CONTAINER_GID",
    "CONTAINER_NAME",
    "CONTAINER_UID",
    "MANAGED_BY",
    "RESERVED_ENV",
    "SCOPE_LABEL",
    "TENANT_LABEL",
    "TLS_MOUNT",
    "WorkerObjects",
    "cpu_quantity",
    "egress_patch",
    "egress_rules",
    "owner_patch",
    "parse_quantity",
    "render_network_policy",
    "render_pod",
    "render_secret",
    "render_worker",
    "resource_name",
    "tenant_label_value",
    "tenant_patch",
    "worker_labels",
]

#: The runtime's numeric uid/gid inside every image (Dockerfile.base; never root).
CONTAINER_UID = 10001
CONTAINER_GID = 10001
CONTAINER_NAME = "runtime"
#: Where the worker's Secret (its certificate, key and the client CA) appears in the container.
TLS_MOUNT = "/run/mlbridge/tls"
#: Same for every worker: tells a sandboxed program nothing about its tenant.
HOSTNAME = "worker"
SCOPE_LABEL = f"{LABEL_PREFIX}scope"
TENANT_LABEL = f"{LABEL_PREFIX}tenant"
WORKER_LABEL = f"{LABEL_PREFIX}worker"
MANAGED_BY = {"app.kubernetes.io/name": "mlbridge-worker", "app.kubernetes.io/managed-by": "mlbridge"}
#: Set last, so a bridge's env cannot override them.
RESERVED_ENV = ("MLBRIDGE_BRIDGE", "MLBRIDGE_MAX_MESSAGE_BYTES", "MLBRIDGE_LISTEN", "MLBRIDGE_TLS_DIR")
#: The image's runtime entry without its ``--socket``: bridge, address and TLS directory come from the env.
COMMAND = ["/usr/bin/tini", "--", "python3", "-m", "runtimes.start"]
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_UNITS = {"": 1, "m": 0.001, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


@dataclass(frozen=True)
class WorkerObjects:
    """What one worker is made of, in the order the backend creates it."""

    secret: dict[str, Any]
    network_policy: dict[str, Any]
    pod: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])


def resource_name(spec: WorkerSpec) -> str:
    """``mlbridge-<worker id>``: a DNS label (a valid pod hostname too), unique per worker.

    A worker id that had to be changed to fit gets a hash of the original, so two ids never share a name.
    """
    raw = f"mlbridge-{spec.worker_id}"
    name = _NOT_DNS.sub("-", raw.lower()).strip("-")
    if name != raw or len(name) > 63:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        name = f"{name[:54].rstrip('-')}-{digest}"
    return name


def worker_labels(spec: WorkerSpec, scope: str | None = None) -> dict[str, str]:
    """The docker backend's labels (``io.mlbridge.orchestrator``, ``.bridge``, ``.worker``), the scope, and
    ``app.kubernetes.io`` names.

    Raises:
        ConfigError: a value Kubernetes would not take as a label (list, reap and the NetworkPolicy
            select by these labels, so they are never rewritten).
    """
    labels = dict(MANAGED_BY)
    if scope:
        labels[SCOPE_LABEL] = scope
    for key, value in spec.labels.items():
        labels[key] = check_label_value(value, f"label {key}")
    return labels


def tenant_label_value(tenant: str) -> str:
    """``tenant`` as a label value: itself when valid, else a readable stem and a hash (the annotation is exact)."""
    if len(tenant) <= 63 and re.fullmatch(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", tenant):
        return tenant
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", tenant).strip("-_.")[:50].rstrip("-_.")
    digest = hashlib.sha256(tenant.encode()).hexdigest()[:10]
    return f"{stem}-{digest}" if stem else digest


def cpu_quantity(cpus: float) -> str:
    """Cores as millicores: ``1.5`` -> ``"1500m"`` (at least 1m)."""
    return f"{max(1, round(cpus * 1000))}m"


def parse_quantity(text: str | int | float) -> float:
    """A Kubernetes quantity (``512Mi``, ``1500m``, ``2``) as a number of base units.

    Raises:
        ValueError: not a quantity.
    """
    if isinstance(text, int | float):
        return float(text)
    m = _QUANTITY.match(str(text).strip())
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or ""]


def _environment(spec: WorkerSpec) -> list[dict[str, str]]:
    env: dict[str, str] = {}
    for key, value in spec.config.env.items():
        if not _ENV_NAME.match(key) or "\0" in str(value):
            raise ConfigError(f"invalid environment variable {key!r} for bridge {spec.bridge!r}")
        env[key] = str(value)
    env["MLBRIDGE_BRIDGE"] = spec.runtime
    env["MLBRIDGE_MAX_MESSAGE_BYTES"] = str(spec.max_message_bytes)
    env["MLBRIDGE_LISTEN"] = f"0.0.0.0:{WORKER_PORT}"
    env["MLBRIDGE_TLS_DIR"] = TLS_MOUNT
    return [{"name": k, "value": v} for k, v in env.items()]


def _resources(spec: WorkerSpec, settings: KubernetesSettings) -> dict[str, Any]:
    limits = spec.config.limits
    amounts = {
        "cpu": cpu_quantity(limits.cpus),
        "memory": str(limits.memory_bytes),
        "ephemeral-storage": settings.ephemeral_storage,
    }
    if limits.gpus:
        # The device plugin hands out a count, not ids: limits.gpus says how many.
        amounts["nvidia.com/gpu"] = str(len(limits.gpus))
    # Requests equal to limits: the Guaranteed QoS class, and no overcommit a neighbour could feel.
    return {"requests": dict(amounts), "limits": dict(amounts)}


def render_secret(spec: WorkerSpec, credentials: WorkerCredentials, *, namespace: str, name: str,
                  labels: dict[str, str]) -> dict[str, Any]:
    """The worker's TLS files as an immutable Opaque Secret (owned by its pod once that exists)."""
    missing = sorted(set(TLS_FILES) - set(credentials.files))
    if missing:
        raise ConfigError(f"worker {spec.worker_id}: credentials lack {', '.join(missing)}")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{name}-tls", "namespace": namespace, "labels": dict(labels)},
        "type": "Opaque",
        "immutable": True,
        "data": {f: base64.b64encode(credentials.files[f]).decode("ascii") for f in TLS_FILES},
    }


def render_pod(spec: WorkerSpec, settings: KubernetesSettings, *, image: str, name: str, secret_name: str,
               labels: dict[str, str]) -> dict[str, Any]:
    """The hardened worker Pod.

    Raises:
        ConfigError: an invalid environment variable name, or a size that does not parse.
    """
    cfg = spec.config
    tmpfs_bytes = parse_size(cfg.limits.tmpfs_size)
    security = {
        "runAsNonRoot": True,
        "runAsUser": CONTAINER_UID,
        "runAsGroup": CONTAINER_GID,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(COMMAND),
        "env": _environment(spec),
        "ports": [{"name": "runtime", "containerPort": WORKER_PORT, "protocol": "TCP"}],
        "resources": _resources(spec, settings),
        "securityContext": security,
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True},
        ],
        # The log's tail lands in the terminated state's message: exit_info and log_tail read it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "stdin": False,
        "tty": False,
    }
    pod_spec: dict[str, Any] = {
        "hostname": HOSTNAME,
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": max(1, math.ceil(cfg.cancel_grace_s)),
        "serviceAccountName": settings.worker_service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "shareProcessNamespace": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": CONTAINER_UID,
            "runAsGroup": CONTAINER_GID,
            # Secret files (defaultMode 0400) become root:10001 0440: readable by the runtime's group alone.
            "fsGroup": CONTAINER_GID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": str(tmpfs_bytes)}},
            {"name": "tls", "secret": {"secretName": secret_name, "defaultMode": 0o400, "optional": False}},
        ],
    }
    if settings.runtime_class_name:
        pod_spec["runtimeClassName"] = settings.runtime_class_name
    if settings.user_namespaces:
        pod_spec["hostUsers"] = False
    if settings.node_selector:
        pod_spec["nodeSelector"] = dict(settings.node_selector)
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in settings.image_pull_secrets]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": dict(labels)},
        "spec": pod_spec,
    }


def egress_rules(settings: KubernetesSettings, proxy_port: int | None) -> list[dict[str, Any]]:
    """A worker's egress: nothing, or the egress proxy's pods on ``proxy_port`` alone."""
    if proxy_port is None:
        return []
    return [{"to": [{"podSelector": {"matchLabels": dict(settings.proxy_selector)}}],
             "ports": [{"protocol": "TCP", "port": int(proxy_port)}]}]


def render_network_policy(spec: WorkerSpec, settings: KubernetesSettings, *, name: str, labels: dict[str, str],
                          proxy_port: int | None = None) -> dict[str, Any]:
    """The worker's NetworkPolicy: ingress from the orchestrator's pods on 7443, egress per :func:`egress_rules`."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": dict(labels)},
        "spec": {
            "podSelector": {"matchLabels": {WORKER_LABEL: spec.worker_id}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": dict(settings.orchestrator_selector)}}],
                "ports": [{"protocol": "TCP", "port": WORKER_PORT}],
            }],
            "egress": egress_rules(settings, proxy_port),
        },
    }


def render_worker(spec: WorkerSpec, settings: KubernetesSettings, *, image: str, credentials: WorkerCredentials,
                  scope: str | None = None) -> WorkerObjects:
    """Everything the backend creates for one worker (this is what it sends).

    Raises:
        ConfigError: a label value, environment variable or size Kubernetes (or mlbridge) would refuse.
    """
    name = resource_name(spec)
    labels = worker_labels(spec, scope)
    secret = render_secret(spec, credentials, namespace=settings.namespace, name=name, labels=labels)
    policy = render_network_policy(spec, settings, name=name, labels=labels)
    pod = render_pod(spec, settings, image=image, name=name, secret_name=secret["metadata"]["name"], labels=labels)
    return WorkerObjects(secret=secret, network_policy=policy, pod=pod)


def owner_patch(pod: dict[str, Any]) -> dict[str, Any]:
    """A merge patch making an object owned by ``pod`` (as the API server returned it): deleted with it."""
    meta = pod["metadata"]
    return {"metadata": {"ownerReferences": [
        {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}]}}


def tenant_patch(tenant: str) -> dict[str, Any]:
    """A merge patch naming a claimed worker's tenant: a label to select by, the exact name as an annotation."""
    return {"metadata": {"labels": {TENANT_LABEL: tenant_label_value(tenant)},
                         "annotations": {TENANT_LABEL: tenant}}}


def egress_patch(settings: KubernetesSettings, proxy_port: int | None) -> dict[str, Any]:
    """A merge patch replacing a worker NetworkPolicy's egress rules (a list: merge patch replaces it whole)."""
    return {"spec": {"egress": egress_rules(settings, proxy_port)}}
