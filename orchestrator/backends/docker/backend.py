"""The ``docker`` backend: each worker is one hardened container.

Settings come from :mod:`.render` (pure, unit-tested); what the engine's
answers mean from :mod:`.state`; every engine call sits in :mod:`.engine`,
which translates docker SDK errors at the boundary (:mod:`.errors`). The SDK
blocks, so every engine call runs in this backend's thread pool.

Control channel: a unix socket in a per-worker host directory (its own tiny
tmpfs, owned by the container's uid), bind-mounted into that container and
nowhere else (:mod:`orchestrator.backends.unix`).

Tenant labels. Docker cannot relabel a running container, so a warm spare
claimed by a tenant keeps the labels it was started with; the pool tracks
tenancy, and the container is renamed ``<name>.<tenant>`` (:meth:`mark_tenant`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import math
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import docker

from orchestrator.config import BridgeConfig, Config, parse_size
from orchestrator.images import check_image_id, image_tag
from runtimes.wire.errors import ConfigError, MLBridgeError, Unavailable

from ..base import (
    LABEL_PREFIX,
    Backend,
    ControlChannel,
    ExitInfo,
    SupportsEgress,
    SupportsGpus,
    SupportsHold,
    WorkerHandle,
    WorkerLimits,
    WorkerSpec,
    remember,
)
from ..gpus import GpuInventory, detect_gpus
from ..hold import Holds
from ..mounts import EXPORT_MOUNT, MODELS_MOUNT, ModelMounts
from ..tls import WORKER_PORT, TcpMtlsChannel, WorkerCA, write_worker_files
from ..unix import SocketRoot, UnixSocketChannel, mount_tmpfs, worker_tmpfs_options
from .egress import ChannelNetwork, EgressNetwork
from .engine import Engine
from .errors import EngineUnreachable
from .kmsg import KernelOomLog
from .render import (
    CONTAINER_GID,
    CONTAINER_UID,
    SOCKET_MOUNT,
    check_network_mode,
    render_run_kwargs,
    split_run_kwargs,
)
from .state import cgroup_oom_kills, cgroup_usage, exit_info_from_state, memory_stats

__all__ = ["DockerBackend", "default_image"]

log = logging.getLogger("mlbridge.backend.docker")

T = TypeVar("T")

ORCHESTRATOR_LABEL = f"{LABEL_PREFIX}orchestrator"
#: Another orchestrator's container that ended this long ago is an orphan: its owner would have removed it.
STALE_ORPHAN_S = 120.0
SCOPE_LABEL = f"{LABEL_PREFIX}scope"
# How long a SIGKILL exit that mlbridge did not cause may take to show the engine's OOM flag.
OOM_SETTLE_S = 1.5


def default_image(bridge: str) -> str:
    """``mlbridge/<bridge>:<version>``: the tag ``mlbridge images build <bridge>`` gives."""
    return image_tag(bridge)


def prepare_socket_dir(channel: UnixSocketChannel) -> None:
    """Hand a fresh socket directory to the container's uid, on its own tiny tmpfs when running as root.

    Raises:
        ConfigError: not root and not the container's uid (the runtime could not create its socket).
    """
    path = channel.socket_dir
    euid = os.geteuid()
    if euid == 0:
        # Its own tiny tmpfs: a worker cannot exhaust space or inodes other workers need.
        if not os.path.ismount(path):
            mount_tmpfs(path, worker_tmpfs_options(CONTAINER_UID, CONTAINER_GID))
        os.chown(path, CONTAINER_UID, CONTAINER_GID)
    elif euid != CONTAINER_UID:
        raise ConfigError(
            f"the docker backend must hand {path} to the container's uid {CONTAINER_UID} so the runtime "
            "can create its socket there, which needs root: run the orchestrator as root "
            f"(or as uid {CONTAINER_UID})"
        )
    os.chmod(path, 0o700)


class DockerBackend(Backend, SupportsEgress, SupportsGpus, SupportsHold):
    """Runs each worker in its own hardened container (see :mod:`.render`).

    Args:
        client: a ``docker.DockerClient``; by default one from the environment
            (``DOCKER_HOST`` etc.), created on first use.
        gpu_inventory: GPUs that ``limits.gpus`` may name; detected when needed.
        stats_ttl_s: how long :meth:`stats` reuses a reading (a reading costs
            a round trip to the engine).
        max_threads: threads for blocking engine calls.
        scope: when set, every container gets the label ``io.mlbridge.scope=<scope>``
            and :meth:`list` / :meth:`reap` see only containers of that scope, so
            separate deployments (or test sessions) on one engine never reap
            each other. Unset, they see every mlbridge container on the engine.
        socket_root: where worker socket directories go (a new temp dir by default).
        worker_channel: ``unix`` (the runtime's socket in the worker's mount) or ``tcp-mtls``
            (:mod:`..tls`: workers on an internal channel network, icc off, firewalled; each with
            its own certificate in its mount, issued by the CA kept in ``ca_dir``).
        ca_dir: where the tcp-mtls CAs live (``<state_dir>/ca``).
    """

    name = "docker"
    enforces_limits = True

    def __init__(self, *, client: docker.DockerClient | None = None,
                 gpu_inventory: GpuInventory | None = None, stats_ttl_s: float = 2.0,
                 max_threads: int = 16, scope: str | None = None, socket_root: Path | None = None,
                 model_store: Path | None = None, worker_channel: str = "unix",
                 ca_dir: Path | None = None) -> None:
        self.engine = Engine(client)
        self._scope_labels = {SCOPE_LABEL: scope} if scope else {}
        self._gpus = gpu_inventory
        self._stats_ttl = stats_ttl_s
        self._executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="mlbridge-docker")
        self._images: dict[str, str] = {}  # image reference -> verified image id
        self._image_locks: dict[str, asyncio.Lock] = {}
        # Bounded memory of containers mlbridge ended, and of exit infos read before removal.
        self._stopped: OrderedDict[str, str] = OrderedDict()  # container id -> "stop" | "kill"
        self._final: OrderedDict[str, ExitInfo] = OrderedDict()
        self._kernel_oom = KernelOomLog()
        self._holds = Holds()
        self._stats: dict[str, tuple[float, dict[str, Any]]] = {}
        self._scope = scope
        self._egress: EgressNetwork | None = None
        self.sockets = SocketRoot(socket_root)
        self.model_objects = (model_store or Path(tempfile.gettempdir()) / "mlbridge-models") / "objects"
        self._mounts: ModelMounts | None = None
        if worker_channel not in ("unix", "tcp-mtls"):
            raise ConfigError(f"worker_channel {worker_channel!r}: the docker backend has unix and tcp-mtls")
        self.worker_channel = worker_channel
        self._ca_dir = ca_dir or self.sockets.root / "ca"
        self._ca: WorkerCA | None = None
        self._channel_net: ChannelNetwork | None = None
        self._mounts_of: dict[str, UnixSocketChannel] = {}  # worker id -> its mount (tcp-mtls workers)
        self._channel_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config) -> DockerBackend:
        """Orchestrators sharing a state dir are one deployment: the reaper removes
        what an earlier one of them left, never another deployment's workers."""
        scope = hashlib.sha256(str(Path(config.state_dir).resolve()).encode()).hexdigest()[:12]
        return cls(scope=scope, model_store=config.model_store_path, worker_channel=config.worker_channel,
                   ca_dir=Path(config.state_dir) / "ca")

    @property
    def mounts(self) -> ModelMounts:
        if self._mounts is None:
            self._mounts = ModelMounts(self.sockets.root, CONTAINER_UID, CONTAINER_GID)
        return self._mounts

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- images -----------------------------------------------------------------------------

    def _verify_sync(self, bridge: str, cfg: BridgeConfig) -> str:
        ref = cfg.image or default_image(bridge)
        current = self.engine.image_id(ref)
        if cfg.image is None or ref.startswith("mlbridge/"):
            return check_image_id(ref, current)
        if current is None:
            raise ConfigError(f"image {ref!r} for bridge {bridge!r} is not present in the Docker engine: "
                              f"pull or build it, or unset bridges.{bridge}.image to use "
                              f"`mlbridge images build {bridge}`")
        return current

    async def image_id(self, bridge: str, cfg: BridgeConfig, *, refresh: bool = False) -> str:
        """The verified id of ``bridge``'s image (checked once, then cached).

        Raises:
            ConfigError: the image is missing; ImageMismatch: it is not the one mlbridge built.
        """
        ref = cfg.image or default_image(bridge)
        if not refresh and ref in self._images:
            return self._images[ref]
        lock = self._image_locks.setdefault(ref, asyncio.Lock())
        async with lock:
            if refresh or ref not in self._images:
                self._images[ref] = await self._run(self._verify_sync, bridge, cfg)
        return self._images[ref]

    def _inventory(self) -> GpuInventory:
        if self._gpus is None:
            self._gpus = detect_gpus()
        return self._gpus

    def check_gpus(self, bridge: str, cfg: BridgeConfig) -> None:
        """Refuse ``limits.gpus`` ids this host does not have (never "all")."""
        if cfg.limits.gpus:
            self._inventory().resolve(cfg.limits.gpus)

    async def prepare(self, config: Config) -> None:
        """Check the engine, OCI runtimes, networks and every bridge's image before any worker starts.

        Raises:
            ConfigError: naming what is missing and how to fix it.
        """
        bridges = config.bridges
        info = await self._run(self.engine.info)
        runtimes_known = set((info.get("Runtimes") or {}).keys())
        problems = []
        for name, cfg in sorted(bridges.items()):
            if runtimes_known and cfg.runtime_class not in runtimes_known:
                problems.append(f"bridge {name!r}: OCI runtime {cfg.runtime_class!r} is not registered with "
                                f"the Docker engine (it has {', '.join(sorted(runtimes_known))}); install it "
                                "and add it to daemon.json `runtimes`, or set runtime_class: runc")
            try:
                mode = check_network_mode(cfg.network, name)
            except ConfigError as err:
                problems.append(str(err))
                continue
            if mode not in ("none", "bridge", "default") and await self._run(self.engine.inspect_network, mode) is None:
                problems.append(f"bridge {name!r}: docker network {mode!r} does not exist")
            if self.worker_channel == "tcp-mtls" and mode != "none":
                problems.append(f"bridge {name!r}: with worker_channel tcp-mtls its workers join the channel "
                                f"network, so network must be 'none' (not {mode!r}); egress goes through the "
                                f"policy's allowlists")
        if problems:
            raise ConfigError("docker backend cannot start:\n  " + "\n  ".join(problems))
        if self.worker_channel == "tcp-mtls":
            await self._run(self._open_channel)
        for name, cfg in sorted(bridges.items()):
            await self.image_id(name, cfg)

    # -- lifecycle --------------------------------------------------------------------------

    async def _start_container(self, worker_id: str, create: dict[str, Any], host: dict[str, Any]) -> str:
        fut = asyncio.ensure_future(self._run(self.engine.create_and_start, create, host,
                                              f"start a container for worker {worker_id}"))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            # The engine call cannot be interrupted: remove what it creates once it returns.
            def orphan(done: asyncio.Future[str]) -> None:
                if not done.cancelled() and done.exception() is None:
                    log.info("worker %s: start was cancelled; removing its container", worker_id)
                    with contextlib.suppress(RuntimeError):  # executor already shut down
                        self._executor.submit(self._remove_quietly, done.result())

            fut.add_done_callback(orphan)
            raise

    def _remove_quietly(self, cid: str) -> None:
        with contextlib.suppress(Exception):
            self.engine.remove(cid)

    async def start(self, spec: WorkerSpec) -> WorkerHandle:
        """Create and start the worker's container; return once it is launched (not ready).

        Raises:
            ConfigError: image missing, bad limits or GPU ids.
            ImageMismatch: the image is not the one mlbridge built.
            Unavailable: the engine refused to create or start the container, or does not answer (it
                answered when the backend was prepared: a restart, say; callers retry).
        """
        try:
            return await self._start(spec)
        except EngineUnreachable as err:
            raise Unavailable(err.message, details={"engine": "unreachable"}) from err

    async def _start(self, spec: WorkerSpec) -> WorkerHandle:
        image = await self.image_id(spec.bridge, spec.config)
        channel = self.sockets.channel(spec.worker_id)
        try:
            model_dirs = None
            if spec.config.models:
                models, export = self.mounts.prepare(spec.worker_id, parse_size(spec.config.export_size),
                                                     self.model_objects)
                model_dirs = (models, export, self.mounts.can_mount)
            kwargs = render_run_kwargs(spec, image, channel.socket_dir, gpu_inventory=self._gpus,
                                       extra_labels=self._scope_labels, model_dirs=model_dirs)
            if self._egress is not None:
                # Its DNS forwards (should it join the egress network) then go nowhere: see .egress.
                kwargs["dns"] = [self._egress.gateway]
            prepare_socket_dir(channel)
            tls = None
            if self.worker_channel == "tcp-mtls":
                tls = await self._run(self._tls_worker, spec.worker_id, channel.socket_dir, kwargs)
            if spec.hold:
                self._holds.hold(spec.worker_id, channel.socket_dir, (CONTAINER_UID, CONTAINER_GID))
            for attempt in (1, 2):
                create, host = split_run_kwargs(kwargs)
                try:
                    cid = await self._start_container(spec.worker_id, create, host)
                    break
                except Unavailable as err:
                    # The verified image was removed since it was cached: verify again, once.
                    if attempt == 1 and err.details.get("http_status") == 404 and "image" in str(err).lower():
                        image = kwargs["image"] = await self.image_id(spec.bridge, spec.config, refresh=True)
                        continue
                    raise
        except BaseException:
            self._holds.drop(spec.worker_id)
            self.sockets.release(channel)
            if spec.config.models:
                self.mounts.release(spec.worker_id)
            raise
        log.debug("worker %s: container %s started from %s", spec.worker_id, cid[:12], image)
        boosted = kwargs["nano_cpus"] > int(round(spec.config.limits.cpus * 1e9))
        control: ControlChannel = channel
        if tls is not None:
            try:
                control = await self._run(self._tcp_channel, cid, tls)
            except BaseException:
                self._holds.drop(spec.worker_id)
                await self._run(self._remove_quietly, cid)
                self.sockets.release(channel)
                raise
            self._mounts_of[spec.worker_id] = channel
        return WorkerHandle(worker_id=spec.worker_id, bridge=spec.bridge, channel=control, ref=cid,
                            image_id=image, backend=self.name, boosted=boosted, held=spec.hold)

    # -- the tcp-mtls channel -----------------------------------------------------------------
    def _open_channel(self) -> ChannelNetwork:
        """The CAs and the firewalled channel network (created or adopted once)."""
        with self._channel_lock:  # workers start on several executor threads at once
            return self._open_channel_locked()

    def _open_channel_locked(self) -> ChannelNetwork:
        if self._channel_net is None:
            self._ca = WorkerCA(self._ca_dir)
            net = ChannelNetwork(self.engine, self._scope, labels=self._scope_labels)
            net.open()
            net.protect()
            self._channel_net = net
        return self._channel_net

    def _tls_worker(self, worker_id: str, mount: Path, kwargs: dict[str, Any]) -> str:
        """Put the worker on the channel network with its own certificate in its mount; return the name
        its certificate carries."""
        net = self._open_channel()
        assert self._ca is not None
        creds = self._ca.issue(worker_id)
        write_worker_files(mount, creds, uid=CONTAINER_UID, gid=CONTAINER_GID)
        kwargs["network_mode"] = net.names.network
        kwargs["environment"].update(MLBRIDGE_LISTEN=f"0.0.0.0:{WORKER_PORT}",
                                     MLBRIDGE_TLS_DIR=f"{SOCKET_MOUNT}/tls")
        kwargs.setdefault("dns", [net.gateway])  # docker's resolver then forwards into the firewall's DROP
        return creds.server_name

    def _tcp_channel(self, cid: str, server_name: str) -> TcpMtlsChannel:
        net = self._channel_net
        assert net is not None and self._ca is not None
        attrs = self.engine.inspect(cid) or {}
        ip = (((attrs.get("NetworkSettings") or {}).get("Networks") or {}).get(net.names.network) or {}).get(
            "IPAddress")
        if not ip:
            raise Unavailable(f"container {cid[:12]} got no address on the channel network {net.names.network}")
        return TcpMtlsChannel(str(ip), WORKER_PORT, server_name, self._ca.client_credentials())

    async def release(self, handle: WorkerHandle) -> None:
        """Let a held worker's runtime start (see :mod:`runtimes.start`)."""
        self._holds.release(handle.worker_id)
        handle.held = False

    def _final_info(self, cid: str) -> ExitInfo | None:
        # The engine may handle a container's exit before the kernel's OOM notice, or
        # miss it (containerd drops an OOM event whose cgroup is already gone), so a
        # SIGKILL exit mlbridge did not cause is checked against the kernel's log
        # and gets a moment to gain the engine's OOM flag.
        settle = time.monotonic() + OOM_SETTLE_S
        while True:
            attrs = self.engine.inspect(cid)
            if attrs is None:
                return ExitInfo(exit_code=None, reason="container was removed")
            state = attrs.get("State") or {}
            memory = (attrs.get("HostConfig") or {}).get("Memory")
            info = exit_info_from_state(state, memory, self._stopped.get(cid))
            unexplained_kill = (info is not None and info.exit_code == 137 and not info.oom_killed
                                and cid not in self._stopped)
            kernel = self._kernel_oom.saw_oom(cid) if unexplained_kill else None
            if kernel:
                return exit_info_from_state(state, memory, None, kernel_oom=True)
            # The kernel logs an OOM kill before the victim dies: where its log is readable and has
            # none for this container, the kill was not for memory and there is nothing to wait for.
            if not unexplained_kill or kernel is False or time.monotonic() >= settle:
                return info
            time.sleep(0.1)

    def _stop_sync(self, cid: str, kill: bool, timeout: float) -> None:
        before = self._final_info(cid)
        if before is None:  # still running: mlbridge ends it
            remember(self._stopped, cid, "kill" if kill else "stop")
            self.engine.stop(cid, kill=kill, timeout=max(0, math.ceil(timeout)))
            before = self._final_info(cid)
        if before is not None:
            remember(self._final, cid, before)
        if not self.engine.remove(cid) and cid not in self._final:
            remember(self._final, cid, ExitInfo(exit_code=None, reason="container was removed"))

    async def stop(self, handle: WorkerHandle, *, kill: bool = False, timeout: float = 5.0) -> None:
        """Stop (SIGTERM, SIGKILL after ``timeout``) or kill the container, then remove it.

        The exit info is read before removal, so :meth:`exit_info` still answers afterwards.
        """
        cid = str(handle.ref)
        try:
            await self._run(self._stop_sync, cid, kill, timeout)
        finally:
            self._stats.pop(cid, None)
            self._holds.drop(handle.worker_id)
            mount = self._mounts_of.pop(handle.worker_id, None) or handle.channel
            assert isinstance(mount, UnixSocketChannel)
            self.sockets.release(mount)
            if self._mounts is not None:
                self._mounts.release(handle.worker_id)

    async def grant_models(self, handle: WorkerHandle, objects: Path, hashes: list[str]) -> dict[str, str]:
        """Mount the store objects ``hashes`` into the claimed worker, read-only: ``/models/<hash>``."""
        if not self.mounts.models_dir(handle.worker_id).exists():
            raise ConfigError(f"worker {handle.worker_id} was not started with a models mount "
                              f"(set models: true on bridge {handle.bridge!r})")
        await self._run(self.mounts.grant, handle.worker_id, objects, hashes)
        return {h: f"{MODELS_MOUNT}/{h}" for h in hashes}

    def export_dir(self, handle: WorkerHandle) -> tuple[str, Path] | None:
        host = self.mounts.export_dir(handle.worker_id)
        return (EXPORT_MOUNT, host) if host.is_dir() else None

    async def exit_info(self, handle: WorkerHandle) -> ExitInfo | None:
        """None while the container runs, else how it ended (OOM kill included)."""
        cid = str(handle.ref)
        if cid in self._final:
            return self._final[cid]
        return await self._run(self._final_info, cid)

    async def mark_tenant(self, handle: WorkerHandle, tenant: str) -> None:
        """Rename a claimed container to ``<name>.<tenant>``: labels cannot change on a running
        container, names can, so ``docker ps --filter name=.<tenant>`` finds a tenant's workers."""
        cid = str(handle.ref)

        def rename() -> None:
            attrs = self.engine.inspect(cid)
            if attrs is None:
                raise Unavailable(f"worker {handle.worker_id} is gone")
            self.engine.rename(cid, f"{str(attrs['Name']).lstrip('/')}.{tenant}")

        await self._run(rename)

    def usage(self, handle: WorkerHandle) -> dict[str, int]:
        return cgroup_usage(str(handle.ref))

    async def apply_limits(self, handle: WorkerHandle, limits: WorkerLimits) -> bool:
        """Lower a running worker's cgroup limits in place.

        Memory and memory+swap move together, so the worker still gets no swap.
        """
        body: dict[str, Any] = {}
        if limits.cpus:
            body["NanoCpus"] = int(limits.cpus * 1e9)
        if limits.memory_bytes:
            body["Memory"] = body["MemorySwap"] = int(limits.memory_bytes)
        if limits.pids:
            body["PidsLimit"] = int(limits.pids)
        if not body:
            return False
        await self._run(self.engine.update_resources, str(handle.ref), body)
        return True

    async def stats(self, handle: WorkerHandle, *, max_age_s: float | None = None) -> dict[str, Any]:
        """Memory (bytes, as `docker stats` counts it), limit, cumulative CPU ns, pids, and
        ``oom_kills`` (processes the kernel OOM-killed in the container so far) when the
        host's cgroup files are readable.

        One engine round trip (a one-shot sample); reused for ``stats_ttl_s``
        unless ``max_age_s`` asks for something fresher.
        """
        cid = str(handle.ref)
        ttl = self._stats_ttl if max_age_s is None else max_age_s
        hit = self._stats.get(cid)
        if hit is not None and time.monotonic() - hit[0] < ttl:
            return hit[1]
        try:
            raw = await self._run(self.engine.stats, cid)
        except Unavailable:
            return {}
        out = memory_stats(raw)
        kills = cgroup_oom_kills(cid)
        if kills is not None:
            out["oom_kills"] = kills
        self._stats[cid] = (time.monotonic(), out)
        return out

    # -- egress ------------------------------------------------------------------------------

    async def open_egress(self) -> str:
        """Create (or adopt) the internal egress network; return its gateway IP for the proxy.

        Workers started from now on use the gateway as DNS server (see :mod:`.egress`).

        Raises:
            ConfigError: iptables is unusable (allowlists are refused, never run unprotected),
                or a foreign network has the egress network's name.
        """
        if self._egress is None:
            net = EgressNetwork(self.engine, self._scope, self._scope_labels)
            await self._run(net.open)
            self._egress = net
        return self._egress.gateway

    async def guard_egress(self, proxy_port: int) -> None:
        """Firewall the egress network: its workers reach the gateway's ``proxy_port`` and nothing else."""
        if self._egress is None:
            raise ConfigError("open_egress() first")
        await self._run(self._egress.protect, proxy_port)

    async def connect_egress(self, handle: WorkerHandle) -> str:
        """Move a worker from network ``none`` (or the channel network) onto the egress network; return its IP."""
        if self._egress is None:
            raise ConfigError("the egress network is not open")
        if self._channel_net is not None:
            self._egress.also_allowed.add(self._channel_net.names.network)
        return await self._run(self._egress.connect, str(handle.ref))

    @property
    def egress(self) -> EgressNetwork | None:
        """The open egress network, if any."""
        return self._egress

    async def close_egress(self) -> None:
        """Remove the egress network and its firewall rules (workers are gone by now)."""
        net, self._egress = self._egress, None
        if net is not None:
            await self._run(net.close)

    # -- inventory --------------------------------------------------------------------------

    def _containers(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        wanted = {**labels, **self._scope_labels}
        rows = self.engine.containers([ORCHESTRATOR_LABEL] + [f"{k}={v}" for k, v in wanted.items()])
        return [{
            "id": r["Id"],
            "name": (r.get("Names") or [""])[0].lstrip("/"),
            "labels": r.get("Labels") or {},
            "state": r.get("State", ""),
            "status": r.get("Status", ""),
            "image": r.get("ImageID") or r.get("Image", ""),
        } for r in rows]

    async def list(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        """mlbridge containers (running or not) whose labels include ``labels``."""
        return await self._run(self._containers, labels)

    def _reap_sync(self, keep: str, stale_s: float = STALE_ORPHAN_S) -> int:
        removed = 0
        if self._scope_labels:
            removed += self._reap_stale_elsewhere(keep, stale_s)
        for row in self._containers({}):
            owner = row["labels"].get(ORCHESTRATOR_LABEL, "")
            if owner == keep:
                continue
            log.warning("reaping container %s (%s, bridge %s) left by orchestrator %s",
                        row["id"][:12], row["name"], row["labels"].get(f"{LABEL_PREFIX}bridge", "?"), owner)
            try:
                removed += self.engine.remove(row["id"])
            except Unavailable as exc:
                log.error("could not reap container %s: %s", row["id"][:12], exc)
        return removed

    def _reap_stale_elsewhere(self, keep: str, stale_s: float) -> int:
        """Remove other scopes' mlbridge containers that ended over ``stale_s`` ago: their owner is gone
        (a live orchestrator removes its workers as they end), whichever state directory it used."""
        removed = 0
        now = time.time()
        for r in self.engine.containers([ORCHESTRATOR_LABEL]):
            labels = r.get("Labels") or {}
            if labels.get(ORCHESTRATOR_LABEL) == keep or r.get("State") not in ("exited", "dead", "created"):
                continue
            info = self.engine.inspect(r["Id"]) or {}
            state = info.get("State") or {}
            ended = _parse_time(str(state.get("FinishedAt") or "")) or _parse_time(str(info.get("Created") or ""))
            if ended is None or now - ended < stale_s:
                continue
            log.warning("reaping container %s (bridge %s) of orchestrator %s: it ended %.0f s ago and nobody "
                        "removed it", r["Id"][:12], labels.get(f"{LABEL_PREFIX}bridge", "?"),
                        labels.get(ORCHESTRATOR_LABEL, "?"), now - ended)
            try:
                removed += self.engine.remove(r["Id"])
            except Unavailable as exc:
                log.error("could not reap container %s: %s", r["Id"][:12], exc)
        return removed

    async def reap(self, keep_orchestrator_id: str, *, stale_s: float = STALE_ORPHAN_S) -> int:
        """Remove every mlbridge container (of this scope) whose orchestrator is not ``keep_orchestrator_id``,
        and any other scope's that ended over ``stale_s`` seconds ago (its owner is dead).

        Meant for start-up, after an earlier orchestrator was killed: without a
        ``scope`` it also removes the containers of any other orchestrator
        running on the same engine.
        """
        return await self._run(self._reap_sync, keep_orchestrator_id, stale_s)

    def log_tail(self, handle: WorkerHandle, lines: int = 20) -> str:
        """Last ``lines`` of the container's output (a blocking call: error paths only)."""
        return self.engine.logs(str(handle.ref), lines)

    async def close(self) -> None:
        with contextlib.suppress(MLBridgeError):
            await self.close_egress()
        net, self._channel_net = self._channel_net, None
        if net is not None:
            with contextlib.suppress(MLBridgeError):
                await self._run(net.close)
        await self._run(self.engine.close)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._kernel_oom.close()
        self._holds.close()
        if self._mounts is not None:
            self._mounts.close()
        self.sockets.close()  # also directories of workers removed behind the backend's back


def _parse_time(text: str) -> float | None:
    """Unix time of the engine's RFC 3339 timestamp (nanoseconds cut); None for none or the zero time."""
    if not text or text.startswith("0001-"):
        return None
    base = text.rstrip("Z").split(".")[0]
    try:
        return float(datetime.datetime.fromisoformat(base).replace(tzinfo=datetime.UTC).timestamp())
    except ValueError:
        return None
