"""The kubernetes backend's settings: ``backend_options`` of the orchestrator's config, checked.

A pydantic model with ``extra="forbid"``, so a misspelt key is an error naming
it, never a silent default. :func:`load_settings` turns a validation failure
into one :class:`~runtimes.wire.errors.ConfigError` listing each bad key.

Images are pinned by digest (``registry/repo@sha256:<64 hex>``): a tag can
be moved under a running deployment, a digest cannot. ``allow_unpinned_images``
lets a development cluster run tags; nothing else turns the check off.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runtimes.wire.errors import ConfigError

__all__ = ["DIGEST", "POD_IP_ENV", "KubernetesSettings", "check_label_value", "load_settings", "pinned"]

#: An image reference pinned by digest ends with this (sha256, 64 lowercase hex digits).
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
#: Where the orchestrator's own pod IP comes from (the Deployment sets it from the downward API).
POD_IP_ENV = "MLBRIDGE_POD_IP"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


def pinned(image: str) -> bool:
    """Whether ``image`` names one image by its sha256 digest."""
    return bool(DIGEST.search(image))


def check_label_value(value: str, what: str) -> str:
    """``value`` when Kubernetes accepts it as a label value (63 characters of ``[A-Za-z0-9._-]``).

    Raises:
        ConfigError: naming ``what`` and the rule.
    """
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ConfigError(f"{what} {value!r} is not a valid Kubernetes label value (at most 63 characters: "
                          "letters, digits, '-', '_', '.', beginning and ending with a letter or digit)")
    return value


def _check_labels(labels: dict[str, str], what: str) -> dict[str, str]:
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))) or len(name) > 63 \
                or not _LABEL_NAME.match(name):
            raise ValueError(f"{what}: {key!r} is not a valid label key")
        try:
            check_label_value(value, f"{what} value of {key}")
        except ConfigError as err:
            raise ValueError(str(err)) from None
    return labels


class KubernetesSettings(BaseModel):
    """``backend_options`` of the kubernetes backend."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = Field("mlbridge", description="the namespace workers run in (the orchestrator's own, usually)")
    kubeconfig: Path | None = Field(None, description=(
        "a kubeconfig file; unset: the in-cluster service account (the orchestrator runs in a pod)"))
    context: str | None = Field(None, description="the kubeconfig context to use (default: its current one)")
    orchestrator_selector: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "mlbridge-orchestrator"}, description=(
            "labels of the orchestrator's pods: a worker's NetworkPolicy admits only them, on port 7443"))
    egress_proxy_selector: dict[str, str] | None = Field(None, description=(
        "labels of the pods running the egress proxy; unset: orchestrator_selector (the proxy runs inside the "
        "orchestrator). The port is the one the proxy listens on, learnt at start"))
    proxy_host: str | None = Field(None, description=(
        f"the address the egress proxy listens on, the orchestrator pod's IP; unset: ${POD_IP_ENV}"))
    runtime_class_name: str | None = Field(None, description=(
        "RuntimeClass of worker pods (gvisor, kata, ...); unset: the cluster's default runtime"))
    images: dict[str, str] = Field(default_factory=dict, description=(
        "bridge -> image reference pinned by digest (registry/repo@sha256:...); a bridge not listed uses its "
        "bridges.<name>.image, which must be pinned too"))
    allow_unpinned_images: bool = Field(False, description=(
        "development only: accept image references without @sha256: (a tag can change under running workers)"))
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secrets to pull worker images with")
    worker_service_account: str = Field("default", description=(
        "the ServiceAccount of worker pods; its token is never mounted (automountServiceAccountToken: false)"))
    node_selector: dict[str, str] = Field(default_factory=dict, description="nodeSelector of worker pods")
    ephemeral_storage: str = Field("256Mi", description=(
        "ephemeral-storage request and limit of a worker (its logs; the root filesystem is read-only)"))
    user_namespaces: bool = Field(False, description=(
        "run workers in a user namespace (hostUsers: false; needs Kubernetes >= 1.33 or the feature gate, "
        "and a runtime and kernel that support it)"))
    node_pids_limit: int | None = Field(None, gt=0, description=(
        "the kubelet's podPidsLimit on the worker nodes, where the operator set one: Kubernetes has no pids "
        "limit per pod, so limits.pids is enforced only by this node setting (or by the runtime class)"))
    scope: str | None = Field(None, description=(
        "label io.mlbridge.scope of this deployment's workers (list and reap see only these); "
        "default: derived from state_dir, like the docker backend"))

    @field_validator("namespace", "worker_service_account")
    @classmethod
    def _dns_label(cls, v: str) -> str:
        if len(v) > 63 or not _DNS_LABEL.match(v):
            raise ValueError(f"{v!r} is not a DNS label (lowercase letters, digits and '-', at most 63)")
        return v

    @field_validator("image_pull_secrets")
    @classmethod
    def _secret_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
                raise ValueError(f"{name!r} is not a Secret name")
        return v

    @field_validator("runtime_class_name")
    @classmethod
    def _runtime_class(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 253 or not _DNS_SUBDOMAIN.match(v)):
            raise ValueError(f"{v!r} is not a RuntimeClass name")
        return v

    @field_validator("orchestrator_selector")
    @classmethod
    def _selector(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("must name at least one label: an empty selector would admit every pod")
        return _check_labels(v, "orchestrator_selector")

    @field_validator("egress_proxy_selector")
    @classmethod
    def _proxy_selector(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and not v:
            raise ValueError("must name at least one label (or be left unset)")
        return None if v is None else _check_labels(v, "egress_proxy_selector")

    @field_validator("node_selector")
    @classmethod
    def _node_selector(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_labels(v, "node_selector")

    @field_validator("ephemeral_storage")
    @classmethod
    def _quantity(cls, v: str) -> str:
        if not _QUANTITY.match(v):
            raise ValueError(f"{v!r} is not a Kubernetes quantity (e.g. 256Mi, 1Gi)")
        return v

    @field_validator("scope")
    @classmethod
    def _scope(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                check_label_value(v, "scope")
            except ConfigError as err:
                raise ValueError(str(err)) from None
        return v

    @model_validator(mode="after")
    def _images_pinned(self) -> KubernetesSettings:
        if not self.allow_unpinned_images:
            loose = sorted(f"{b}: {ref}" for b, ref in self.images.items() if not pinned(ref))
            if loose:
                raise ValueError("images must be pinned by digest (repo@sha256:<64 hex>), or set "
                                 f"allow_unpinned_images: true on a development cluster; not pinned: {', '.join(loose)}")
        return self

    @property
    def proxy_selector(self) -> dict[str, str]:
        """The pods a worker with an allowlist may reach: the proxy's, by default the orchestrator's."""
        return self.egress_proxy_selector or self.orchestrator_selector

    def proxy_address(self) -> str | None:
        """The egress proxy's listen address: ``proxy_host``, else the pod IP in ``$MLBRIDGE_POD_IP``."""
        return self.proxy_host or os.environ.get(POD_IP_ENV) or None

    def image_for(self, bridge: str, configured: str | None) -> str:
        """The image reference of ``bridge``'s workers.

        Raises:
            ConfigError: none is configured, or it is not pinned by digest.
        """
        ref = self.images.get(bridge) or configured
        if not ref:
            raise ConfigError(f"bridge {bridge!r} has no image for the kubernetes backend: set "
                              f"backend_options.images.{bridge} to the image pushed to your registry, pinned "
                              "by digest (registry.example.com/mlbridge/"
                              f"{bridge}@sha256:...; `docker inspect --format '{{{{.RepoDigests}}}}'` shows it)")
        if not self.allow_unpinned_images and not pinned(ref):
            raise ConfigError(f"image {ref!r} of bridge {bridge!r} is not pinned by digest: use "
                              "repo@sha256:<digest> (or allow_unpinned_images: true on a development cluster)")
        return ref


def load_settings(options: dict[str, Any]) -> KubernetesSettings:
    """``backend_options`` checked.

    Raises:
        ConfigError: one line per bad key, named ``backend_options.<key>``.
    """
    try:
        return KubernetesSettings.model_validate(options)
    except ValidationError as exc:
        lines = [f"  backend_options.{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
                 for e in exc.errors()]
        raise ConfigError("invalid kubernetes backend settings:\n" + "\n".join(lines)) from None
