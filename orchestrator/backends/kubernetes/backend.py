"""The ``kubernetes`` backend: each worker one hardened Pod, reached over TCP with mutual TLS.

Objects come from :mod:`.render` (pure, schema- and PSS-checked in the
tests); what a pod's status means from :mod:`.state`; every API call sits in
:mod:`.api`, which translates client errors at the boundary. The client
blocks, so every call runs in this backend's thread pool.

A start, in one visible sequence (:meth:`KubernetesBackend._start_sync`):

1. a certificate for the worker from the orchestrator's worker CA
   (:class:`~orchestrator.backends.tls.WorkerCA` in ``<state_dir>/ca``);
2. the worker's Secret (those files), then its NetworkPolicy (ingress from
   the orchestrator on 7443, no egress), then its Pod: the pod never runs
   without its policy;
3. the Secret and the NetworkPolicy made the pod's (``ownerReferences``), so
   the garbage collector removes them with it whatever becomes of mlbridge;
4. a watch on the pod until its container runs and it has an IP (or it
   cannot start: a bad image, a bad config; or it was deleted);
5. the handle's channel: :class:`~orchestrator.backends.tls.TcpMtlsChannel`
   to ``<pod IP>:7443``, checking that worker's certificate name.

Readiness (grpc health over that channel) stays the pool's job.

Tenants. A claimed worker is relabelled ``io.mlbridge.tenant=<tenant>`` (and
annotated with the exact name): :meth:`mark_tenant`. A tenant with an egress
allowlist gets its worker's NetworkPolicy patched to reach the egress proxy
(in the orchestrator's pods, on the port the proxy listens on) and nothing else.

Usage figures: :meth:`usage` and :meth:`stats` return {} (metrics.k8s.io is
not read; the kubelet's cAdvisor metrics cover workers in Prometheus).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.config import BridgeConfig, Config
from runtimes.wire.errors import ConfigError, MLBridgeError, Unavailable

from ..base import (
    LABEL_PREFIX,
    Backend,
    ExitInfo,
    SupportsEgress,
    SupportsGpus,
    WorkerHandle,
    WorkerSpec,
    remember,
)
from ..tls import WORKER_PORT, TcpMtlsChannel, WorkerCA
from .api import KubeApi, PodWatch
from .pss import violations
from .render import (
    SCOPE_LABEL,
    WorkerObjects,
    egress_patch,
    owner_patch,
    render_worker,
    tenant_patch,
)
from .settings import POD_IP_ENV, KubernetesSettings, load_settings
from .state import container_status, exit_info_from_pod, last_words, pod_ip, pod_row

__all__ = ["KubernetesBackend"]

log = logging.getLogger("mlbridge.backend.kubernetes")

T = TypeVar("T")

ORCHESTRATOR_LABEL = f"{LABEL_PREFIX}orchestrator"
#: Beyond a stop's grace period: how long the kubelet may take to report the container gone.
STOP_SLACK_S = 10.0


def _secret_name(name: str) -> str:
    return f"{name}-tls"


class KubernetesBackend(Backend, SupportsEgress, SupportsGpus):
    """Runs each worker as a hardened Pod in one namespace (see :mod:`.render`).

    Args:
        settings: ``backend_options``, checked (:class:`~.settings.KubernetesSettings`).
        ca_dir: where the orchestrator's worker and client CAs live (``<state_dir>/ca``).
        scope: the ``io.mlbridge.scope`` label of this deployment's workers; list and reap see only these.
        api_client: a ``kubernetes.client.ApiClient`` (tests pass one with a fake HTTP layer); by default
            one from ``settings`` (kubeconfig, or the in-cluster service account), made on first use.
        max_threads: threads for blocking API calls.
    """

    name = "kubernetes"
    enforces_limits = True

    def __init__(self, settings: KubernetesSettings, *, ca_dir: Path, scope: str | None = None,
                 api_client: Any = None, max_threads: int = 16) -> None:
        self.settings = settings
        self.api = KubeApi(settings, api_client)
        self.scope = scope
        self._ca_dir = Path(ca_dir)
        self._ca: WorkerCA | None = None
        self._executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="mlbridge-k8s")
        self._stopped: OrderedDict[str, str] = OrderedDict()  # pod name -> "stop" | "kill"
        self._final: OrderedDict[str, ExitInfo] = OrderedDict()
        self._proxy_port: int | None = None
        self._warned_pids = False

    @classmethod
    def from_config(cls, config: Config) -> KubernetesBackend:
        """Settings from ``config.backend_options``; the CA in ``<state_dir>/ca``. Orchestrators sharing a state
        dir are one deployment (the default scope): a new one reaps what the one before it left.

        Raises:
            ConfigError: a bad ``backend_options`` key or value, each named.
        """
        settings = load_settings(config.backend_options)
        scope = settings.scope or hashlib.sha256(str(Path(config.state_dir).resolve()).encode()).hexdigest()[:12]
        return cls(settings, ca_dir=Path(config.state_dir) / "ca", scope=scope)

    @property
    def ca(self) -> WorkerCA:
        """The orchestrator's CAs, loaded (or made) on first use."""
        if self._ca is None:
            self._ca = WorkerCA(self._ca_dir)
        return self._ca

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def _scope_selector(self) -> str:
        return f",{SCOPE_LABEL}={self.scope}" if self.scope else ""

    # -- settings ------------------------------------------------------------------------------
    def check_gpus(self, bridge: str, cfg: BridgeConfig) -> None:
        """Nothing to check here: the device plugin hands out ``len(limits.gpus)`` GPUs, the ids are not chosen."""

    async def prepare(self, config: Config) -> None:
        """Check every bridge's image and settings, and that the API server answers in the namespace.

        Raises:
            ConfigError: naming what is wrong and how to fix it.
        """
        problems = []
        for name, cfg in sorted(config.bridges.items()):
            try:
                self.settings.image_for(name, cfg.image)
            except ConfigError as err:
                problems.append(str(err))
            if cfg.network.strip() not in ("", "none"):
                problems.append(f"bridge {name!r}: network {cfg.network!r} is a docker setting; kubernetes workers "
                                "get a NetworkPolicy (no egress, or the egress proxy alone): leave network unset")
            if cfg.runtime_class != "runc" and not self.settings.runtime_class_name:
                problems.append(f"bridge {name!r}: runtime_class {cfg.runtime_class!r} is a docker OCI runtime; set "
                                "backend_options.runtime_class_name to the cluster's RuntimeClass (e.g. gvisor) "
                                "instead, so workers do not silently run without it")
        if problems:
            raise ConfigError("kubernetes backend cannot start:\n  " + "\n  ".join(problems))
        self._warn_pids(config)
        try:
            await self._run(functools.partial(self.api.list_pods, ORCHESTRATOR_LABEL, limit=1))
        except (ConfigError, Unavailable) as err:
            raise ConfigError(f"kubernetes backend cannot start: {err}", details=err.details) from None

    def _warn_pids(self, config: Config) -> None:
        if self._warned_pids:
            return
        self._warned_pids = True
        node = self.settings.node_pids_limit
        if node is None:
            log.warning("kubernetes backend: limits.pids is not enforced per pod (Kubernetes has no such field); "
                        "set the kubelet's podPidsLimit on the worker nodes (or use a runtime class that limits "
                        "pids) and declare it as backend_options.node_pids_limit")
            return
        loose = sorted(n for n, c in config.bridges.items() if c.limits.pids < node)
        if loose:
            log.warning("kubernetes backend: bridges %s ask for a pids limit below the nodes' podPidsLimit %d; "
                        "the node's limit is what holds", ", ".join(loose), node)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, spec: WorkerSpec) -> WorkerHandle:
        """Create the worker's Secret, NetworkPolicy and Pod; return once its container runs and has an IP.

        Raises:
            ConfigError: an unpinned or missing image, a setting the cluster refuses, missing rights.
            Unavailable: the pod could not start (image pull, scheduling, quota) within ``start_timeout_s``.
        """
        image = self.settings.image_for(spec.bridge, spec.config.image)
        ca = self.ca
        credentials = await self._run(ca.issue, spec.worker_id)
        objects = render_worker(spec, self.settings, image=image, credentials=credentials, scope=self.scope)
        broken = violations(objects.pod)
        if broken:
            raise ConfigError(f"worker pod for bridge {spec.bridge!r} would break the restricted Pod Security "
                              f"Standard: {'; '.join(broken)}")
        watch = PodWatch()
        fut = asyncio.ensure_future(self._run(self._start_sync, objects, spec.config.start_timeout_s, watch))
        try:
            ip = await asyncio.shield(fut)
        except asyncio.CancelledError:
            watch.stop()  # the thread's own cleanup then removes what it created
            raise
        log.debug("worker %s: pod %s runs at %s (%s)", spec.worker_id, objects.name, ip, image)
        channel = TcpMtlsChannel(host=ip, port=WORKER_PORT, server_name=credentials.server_name,
                                 credentials=ca.client_credentials())
        return WorkerHandle(worker_id=spec.worker_id, bridge=spec.bridge, channel=channel, ref=objects.name,
                            image_id=image, backend=self.name)

    def _start_sync(self, objects: WorkerObjects, timeout_s: float, watch: PodWatch) -> str:
        name = objects.name
        try:
            self.api.create(objects.secret)
            self.api.create(objects.network_policy)
            pod = self.api.create(objects.pod)
            owner = owner_patch(pod)
            self.api.patch("Secret", _secret_name(name), owner)
            self.api.patch("NetworkPolicy", name, owner)
            last: list[dict[str, Any]] = [pod]

            def running(kind: str, seen: dict[str, Any]) -> str | None:
                last[0] = seen
                if kind == "DELETED":
                    raise Unavailable(f"pod {name} was deleted before it started")
                info = exit_info_from_pod(seen)
                if info is not None:
                    words = last_words(seen)
                    raise Unavailable(f"pod {name} did not start: {info.describe()}"
                                      + (f"; its last output:\n{words}" if words else ""))
                ip = pod_ip(seen)
                if ip and "running" in (container_status(seen).get("state") or {}):
                    return ip
                return None

            ip = running("ADDED", pod) or self.api.wait_pod(name, pod["metadata"].get("resourceVersion"),
                                                            timeout_s, running, watch)
            if ip is None:
                if watch.stopped.is_set():
                    raise Unavailable(f"start of pod {name} was cancelled")
                raise Unavailable(f"pod {name} did not run within {timeout_s:g}s: {_pending(last[0])}")
            return ip
        except BaseException:
            self._remove_sync(name)
            raise

    def _remove_sync(self, name: str) -> None:
        """Delete a worker's pod at once, and its Secret and NetworkPolicy; quietly (cleanup path)."""
        for kind, obj, grace in (("Pod", name, 0), ("Secret", _secret_name(name), None),
                                 ("NetworkPolicy", name, None)):
            try:
                self.api.delete(kind, obj, grace_s=grace)
            except MLBridgeError as err:
                log.warning("could not delete %s %s: %s (its owner reference or the next reap removes it)",
                            kind, obj, err)

    def _stop_sync(self, name: str, kill: bool, timeout: float) -> None:
        pod = self.api.read_pod(name)
        info = None if pod is None else exit_info_from_pod(pod, self._stopped.get(name))
        if pod is not None and info is None:  # still running (or starting): mlbridge ends it
            mode = "kill" if kill else "stop"
            remember(self._stopped, name, mode)
            grace = 0 if kill else max(1, math.ceil(timeout))
            seen: list[dict[str, Any]] = [pod]

            def ended(kind: str, obj: dict[str, Any]) -> bool | None:
                seen[0] = obj
                terminated = "terminated" in (container_status(obj).get("state") or {})
                return True if kind == "DELETED" or terminated else None

            if self.api.delete("Pod", name, grace_s=grace):
                self.api.wait_pod(name, pod["metadata"].get("resourceVersion"), grace + STOP_SLACK_S, ended)
            info = exit_info_from_pod(seen[0], mode) or ExitInfo(
                exit_code=None, reason=f"{'killed' if kill else 'stopped'} by mlbridge")
            self.api.delete("Pod", name, grace_s=0)  # the kubelet reported it ended: no need to wait for more
        elif pod is not None:
            self.api.delete("Pod", name, grace_s=0)
        if info is None:
            info = self._final.get(name) or ExitInfo(exit_code=None, reason="pod was removed")
        remember(self._final, name, info)
        self.api.delete("Secret", _secret_name(name))
        self.api.delete("NetworkPolicy", name)

    async def stop(self, handle: WorkerHandle, *, kill: bool = False, timeout: float = 5.0) -> None:
        """Delete the pod with ``timeout`` seconds of grace (SIGTERM, then SIGKILL), or at once; then its Secret
        and NetworkPolicy. The exit info is read on the way, so :meth:`exit_info` still answers afterwards."""
        await self._run(self._stop_sync, str(handle.ref), kill, timeout)

    def _exit_info_sync(self, name: str) -> ExitInfo | None:
        pod = self.api.read_pod(name)
        if pod is None:
            return ExitInfo(exit_code=None, reason="pod was removed")
        return exit_info_from_pod(pod, self._stopped.get(name))

    async def exit_info(self, handle: WorkerHandle) -> ExitInfo | None:
        """None while the worker's container runs, else how it ended (``OOMKilled`` -> an OOM kill)."""
        name = str(handle.ref)
        if name in self._final:
            return self._final[name]
        return await self._run(self._exit_info_sync, name)

    async def mark_tenant(self, handle: WorkerHandle, tenant: str) -> None:
        """Label a claimed worker ``io.mlbridge.tenant=<tenant>`` (annotated with the exact name), so
        ``kubectl get pods -l io.mlbridge.tenant=<tenant>`` finds a tenant's workers."""
        name = str(handle.ref)
        if await self._run(self.api.patch, "Pod", name, tenant_patch(tenant)) is None:
            raise Unavailable(f"worker {handle.worker_id} is gone (pod {name})")

    def log_tail(self, handle: WorkerHandle, lines: int = 20) -> str:
        """Last ``lines`` of the runtime container's log (a blocking call: error paths only)."""
        try:
            return self.api.pod_log(str(handle.ref), lines)
        except MLBridgeError as err:
            return f"(log unavailable: {err})"

    # -- egress ---------------------------------------------------------------------------------
    async def open_egress(self) -> str:
        """The address the egress proxy listens on: the orchestrator pod's IP (the proxy runs in it).

        Raises:
            ConfigError: the pod IP is not known (``$MLBRIDGE_POD_IP`` unset, no ``proxy_host``).
        """
        address = self.settings.proxy_address()
        if not address:
            raise ConfigError(f"egress allowlists on kubernetes need the orchestrator pod's IP for the egress proxy: "
                              f"set {POD_IP_ENV} from the downward API (status.podIP; deploy/kubernetes/"
                              "deployment.yaml does) or backend_options.proxy_host")
        return address

    async def guard_egress(self, proxy_port: int) -> None:
        """Remember the proxy's port: a worker put behind the proxy may reach that port and nothing else."""
        self._proxy_port = int(proxy_port)

    async def connect_egress(self, handle: WorkerHandle) -> str:
        """Let a claimed worker reach the egress proxy alone (its NetworkPolicy's egress); return its pod IP."""
        if self._proxy_port is None:
            raise ConfigError("the egress proxy is not guarded yet (guard_egress first)")
        name = str(handle.ref)
        if await self._run(self.api.patch, "NetworkPolicy", name, egress_patch(self.settings, self._proxy_port)) \
                is None:
            raise Unavailable(f"worker {handle.worker_id} has no NetworkPolicy (pod {name} is gone)")
        channel = handle.channel
        assert isinstance(channel, TcpMtlsChannel)
        return channel.host

    async def close_egress(self) -> None:
        """Nothing to remove: each worker's policy goes with its pod."""
        self._proxy_port = None

    # -- inventory ------------------------------------------------------------------------------
    async def list(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        """mlbridge worker pods (running or not) of this scope whose labels include ``labels``."""
        selector = ORCHESTRATOR_LABEL + "".join(f",{k}={v}" for k, v in labels.items()) + self._scope_selector
        pods = await self._run(self.api.list_pods, selector)
        return [pod_row(p) for p in pods]

    def _reap_sync(self, keep: str) -> int:
        selector = f"{ORCHESTRATOR_LABEL},{ORCHESTRATOR_LABEL}!={keep}{self._scope_selector}"
        removed = 0
        for pod in self.api.list_pods(selector):
            meta = pod.get("metadata") or {}
            labels = meta.get("labels") or {}
            log.warning("reaping pod %s (bridge %s) left by orchestrator %s", meta.get("name"),
                        labels.get(f"{LABEL_PREFIX}bridge", "?"), labels.get(ORCHESTRATOR_LABEL, "?"))
            try:
                removed += self.api.delete("Pod", str(meta.get("name")), grace_s=0)
            except MLBridgeError as err:
                log.error("could not reap pod %s: %s", meta.get("name"), err)
        # Secrets and policies whose pod was never created (their owner reference would remove the rest).
        for kind in ("Secret", "NetworkPolicy"):
            try:
                self.api.delete_labelled(kind, selector)
            except MLBridgeError as err:
                log.error("could not reap %ss: %s", kind, err)
        return removed

    async def reap(self, keep_orchestrator_id: str) -> int:
        """Delete the pods (and Secrets and NetworkPolicies) of this scope whose orchestrator is not
        ``keep_orchestrator_id``: what a dead orchestrator left. Returns how many pods."""
        return await self._run(self._reap_sync, keep_orchestrator_id)

    async def close(self) -> None:
        self.api.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _pending(pod: dict[str, Any]) -> str:
    """Why a pod is not running yet, from its conditions and container state."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") == "False" and cond.get("reason"):
            return f"{cond.get('type')}: {cond.get('reason')}: {cond.get('message', '')}".rstrip(": ")
    waiting = (container_status(pod).get("state") or {}).get("waiting") or {}
    if waiting:
        return f"container waiting: {waiting.get('reason', '')} {waiting.get('message', '')}".strip()
    return f"phase {status.get('phase', 'unknown')}, pod IP {status.get('podIP') or 'not assigned'}"


