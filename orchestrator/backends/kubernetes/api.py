"""Every call the kubernetes backend makes to the API server, and nothing else.

Blocking (the backend runs them in its thread pool), through the official
client's typed API objects (``CoreV1Api``, ``NetworkingV1Api``) and its
``watch.Watch``. Answers are read as JSON (``_preload_content=False``): the
backend works on the objects exactly as the API server sends them, the same
shape it renders (:mod:`.render`). Client and transport errors never leave this
module: :func:`translate` turns them into :class:`ConfigError` (refused for
lack of rights, or invalid) or :class:`Unavailable` (anything that may pass),
with the HTTP status in ``details``; "not found" is an ordinary answer (None
or False) where the caller expects it.

:data:`RBAC_RULES` is what this module asks of the API server, as Role rules;
``deploy/kubernetes/rbac.yaml`` grants exactly these and the tests hold the two
together. Secrets are never read or listed: the orchestrator creates, patches
(to set their owner) and deletes its workers' Secrets, and nothing more.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import urllib3

from runtimes.wire.errors import ConfigError, MLBridgeError, Unavailable

try:
    from kubernetes import client as _client
    from kubernetes import config as _config
    from kubernetes import watch as _watch
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
except ImportError as _exc:  # pragma: no cover - depends on the installation
    raise ConfigError(f"the kubernetes backend needs the official Kubernetes client ({_exc}): "
                      "pip install 'mlbridge[kubernetes]'") from _exc

from .settings import KubernetesSettings

__all__ = ["MERGE_PATCH", "RBAC_RULES", "KubeApi", "PodWatch", "translate"]

T = TypeVar("T")

# The client is typed in parts only; bodies here are the JSON-shaped dicts of .render, so its
# typed surface stays behind Any at this one boundary.
k8s: Any = _client
k8s_config: Any = _config
k8s_watch: Any = _watch

#: Content type of every patch the backend sends: lists are replaced whole, maps merged.
MERGE_PATCH = "application/merge-patch+json"
#: (API group, resource, verbs): everything :class:`KubeApi` does, in its own namespace only.
RBAC_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("", "pods", ("create", "delete", "get", "list", "patch", "watch")),
    ("", "pods/log", ("get",)),
    ("", "secrets", ("create", "delete", "deletecollection", "patch")),
    ("networking.k8s.io", "networkpolicies", ("create", "delete", "deletecollection", "patch")),
)
_RBAC_HINT = ("grant the orchestrator's ServiceAccount the Role in deploy/kubernetes/rbac.yaml "
              "in that namespace")


def translate(exc: BaseException, action: str) -> MLBridgeError:
    """The mlbridge error for a client or transport error raised while doing ``action``."""
    if isinstance(exc, MLBridgeError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        message = _status_message(exc)
        details = {"http_status": status}
        if status in (401, 403) and "exceeded quota" not in message:
            hint = "" if "PodSecurity" in message or "RuntimeClass" in message else f"; {_RBAC_HINT}"
            return ConfigError(f"kubernetes refused to {action}: {message}{hint}", details=details)
        if status == 422 or status == 400:
            return ConfigError(f"kubernetes found the request to {action} invalid: {message}", details=details)
        return Unavailable(f"kubernetes could not {action}: {message}", details=details)
    if isinstance(exc, ConfigException):
        return ConfigError(f"cannot load the Kubernetes client configuration to {action}: {exc}")
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return Unavailable(f"the Kubernetes API server could not be reached to {action}: {exc}")
    return Unavailable(f"kubernetes could not {action}: {type(exc).__name__}: {exc}")


def _status_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
        return str(body.get("message") or exc.reason or exc.status)
    except (ValueError, AttributeError):
        return str(exc.reason or exc.status)


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except MLBridgeError:
        raise
    except (ApiException, ConfigException, urllib3.exceptions.HTTPError) as exc:
        raise translate(exc, action) from exc


def _json(resp: Any) -> Any:
    try:
        return json.loads(resp.data or b"null")
    finally:
        resp.release_conn()


def _missing(exc: BaseException) -> bool:
    return isinstance(exc, ApiException) and exc.status == 404


class PodWatch:
    """A ``kubernetes.watch.Watch`` that another thread may stop (the backend does when a start is cancelled)."""

    def __init__(self) -> None:
        self.watch: Any = k8s_watch.Watch()
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()
        self.watch.stop()


class KubeApi:
    """The API server, as the kubernetes backend uses it, in one namespace.

    Args:
        settings: the namespace, and the kubeconfig (or the in-cluster service account).
        api_client: a ``kubernetes.client.ApiClient`` to use (tests pass one whose HTTP layer is
            replaced); by default one is built from ``settings`` on first use.
    """

    def __init__(self, settings: KubernetesSettings, api_client: Any = None) -> None:
        self.settings = settings
        self.namespace = settings.namespace
        self._client: Any = api_client
        self._lock = threading.Lock()

    @property
    def api_client(self) -> Any:
        """The ``ApiClient``, configured on first use."""
        if self._client is None:
            with self._lock, _translated("load the client configuration"):
                if self._client is None:
                    cfg = k8s.Configuration()
                    if self.settings.kubeconfig is not None:
                        k8s_config.load_kube_config(config_file=str(self.settings.kubeconfig),
                                                    context=self.settings.context, client_configuration=cfg)
                    else:
                        try:
                            k8s_config.load_incluster_config(client_configuration=cfg)
                        except ConfigException as exc:
                            raise ConfigError(
                                f"the kubernetes backend is not running in a pod ({exc}): set "
                                "backend_options.kubeconfig to a kubeconfig file") from exc
                    self._client = k8s.ApiClient(cfg)
        return self._client

    @property
    def core(self) -> Any:
        return k8s.CoreV1Api(self.api_client)

    @property
    def networking(self) -> Any:
        return k8s.NetworkingV1Api(self.api_client)

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host)

    # -- objects ---------------------------------------------------------------------------------
    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create a Secret, NetworkPolicy or Pod rendered by :mod:`.render`; the object the server stored."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        creators: dict[str, Callable[..., Any]] = {
            "Secret": self.core.create_namespaced_secret,
            "Pod": self.core.create_namespaced_pod,
            "NetworkPolicy": self.networking.create_namespaced_network_policy,
        }
        with _translated(f"create {kind} {self.namespace}/{name}"):
            return dict(_json(creators[kind](self.namespace, obj, _preload_content=False)))

    def patch(self, kind: str, name: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch a Pod, Secret or NetworkPolicy; None when it is gone."""
        patchers: dict[str, Callable[..., Any]] = {
            "Secret": self.core.patch_namespaced_secret,
            "Pod": self.core.patch_namespaced_pod,
            "NetworkPolicy": self.networking.patch_namespaced_network_policy,
        }
        with _translated(f"patch {kind} {self.namespace}/{name}"):
            try:
                resp = patchers[kind](name, self.namespace, body, _content_type=MERGE_PATCH, _preload_content=False)
            except ApiException as exc:
                if _missing(exc):
                    return None
                raise
            return dict(_json(resp))

    def delete(self, kind: str, name: str, *, grace_s: int | None = None) -> bool:
        """Delete one object (a Pod with ``grace_s``); False when it was already gone."""
        with _translated(f"delete {kind} {self.namespace}/{name}"):
            try:
                if kind == "Pod":
                    resp = self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=grace_s,
                                                           propagation_policy="Background", _preload_content=False)
                elif kind == "Secret":
                    resp = self.core.delete_namespaced_secret(name, self.namespace, _preload_content=False)
                else:
                    resp = self.networking.delete_namespaced_network_policy(name, self.namespace,
                                                                            _preload_content=False)
            except ApiException as exc:
                if _missing(exc):
                    return False
                raise
            _json(resp)
            return True

    def delete_labelled(self, kind: str, label_selector: str) -> None:
        """Delete every Secret or NetworkPolicy matching ``label_selector`` (without reading them)."""
        with _translated(f"delete {kind}s {label_selector} in {self.namespace}"):
            if kind == "Secret":
                resp = self.core.delete_collection_namespaced_secret(self.namespace, label_selector=label_selector,
                                                                     _preload_content=False)
            else:
                resp = self.networking.delete_collection_namespaced_network_policy(
                    self.namespace, label_selector=label_selector, _preload_content=False)
            _json(resp)

    # -- pods ------------------------------------------------------------------------------------
    def read_pod(self, name: str) -> dict[str, Any] | None:
        """The pod, or None when there is none by that name."""
        with _translated(f"read pod {self.namespace}/{name}"):
            try:
                return dict(_json(self.core.read_namespaced_pod(name, self.namespace, _preload_content=False)))
            except ApiException as exc:
                if _missing(exc):
                    return None
                raise

    def list_pods(self, label_selector: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Pods matching ``label_selector`` (every page)."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        with _translated(f"list pods {label_selector} in {self.namespace}"):
            while True:
                page = _json(self.core.list_namespaced_pod(self.namespace, label_selector=label_selector,
                                                           limit=limit or 500, _continue=token,
                                                           _preload_content=False))
                items += page.get("items") or []
                token = (page.get("metadata") or {}).get("continue")
                if not token or limit:
                    return items

    def pod_log(self, name: str, lines: int) -> str:
        """The last ``lines`` of the runtime container's log ("" when there is none)."""
        with _translated(f"read the log of pod {self.namespace}/{name}"):
            try:
                resp = self.core.read_namespaced_pod_log(name, self.namespace, container="runtime",
                                                         tail_lines=lines, _preload_content=False)
            except ApiException as exc:
                if exc.status in (400, 404):  # no such pod, or its container never started
                    return ""
                raise
            try:
                return bytes(resp.data or b"").decode(errors="replace")
            finally:
                resp.release_conn()

    def wait_pod(self, name: str, resource_version: str | None, timeout_s: float,
                 until: Callable[[str, dict[str, Any]], T | None], watcher: PodWatch | None = None) -> T | None:
        """Watch pod ``name`` from ``resource_version`` until ``until(event type, pod)`` answers something.

        A watch (``list_namespaced_pod`` with ``fieldSelector=metadata.name=<name>``), not polling:
        the API server pushes each change. A watch that expired (410 Gone) is resumed from a fresh
        read. Returns None when ``timeout_s`` passes first, or when ``watcher.stop()`` was called.

        Args:
            watcher: the watch, when another thread may want to stop it.
        """
        watcher = watcher if watcher is not None else PodWatch()
        w = watcher.watch
        deadline = time.monotonic() + timeout_s
        rv = resource_version
        action = f"watch pod {self.namespace}/{name}"
        while (left := deadline - time.monotonic()) > 0 and not watcher.stopped.is_set():
            try:
                with _translated(action):
                    for event in w.stream(self.core.list_namespaced_pod, self.namespace,
                                          field_selector=f"metadata.name={name}", resource_version=rv,
                                          timeout_seconds=max(1, math.ceil(left)),
                                          _request_timeout=(10, max(1, math.ceil(left)) + 10)):
                        kind, obj = str(event["type"]), event["raw_object"]
                        if kind not in ("ADDED", "MODIFIED", "DELETED"):
                            continue
                        rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                        answer = until(kind, obj)
                        if answer is not None:
                            w.stop()
                            return answer
            except Unavailable as err:
                if err.details.get("http_status") != 410:
                    raise
                # Expired: read the pod as it is now and watch on from there.
                pod = self.read_pod(name)
                if pod is None:
                    return until("DELETED", {"metadata": {"name": name}})
                answer = until("MODIFIED", pod)
                if answer is not None:
                    return answer
                rv = pod["metadata"].get("resourceVersion")
                continue
        return None

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
