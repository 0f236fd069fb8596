"""The worker backend contract: how a runtime process or container is run.

A backend starts a runtime serving one bridge, stops it, tells how it ended
(exit code, OOM kill), lists what it runs by label and removes leftovers of
an earlier, killed orchestrator. It hands back the worker's control channel
(:class:`ControlChannel`): how the orchestrator reaches the runtime, a unix
socket on this machine today, another transport tomorrow; the core only opens
it. Readiness (health over that channel) is the pool's job.

Backends are plug-ins, found by name in the ``mlbridge.backends`` entry point
group (:mod:`orchestrator.backends`). What not every engine can do is an
optional capability a backend declares by subclassing a Protocol below
(:class:`SupportsEgress`, :class:`SupportsGpus`); the core checks with
``isinstance``, never by name.
"""

from __future__ import annotations

import abc
import functools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import grpc

from orchestrator.config import BridgeConfig, Config, WorkerLimits
from runtimes.wire.names import BRIDGE_ENTRY_POINTS

LABEL_PREFIX = "io.mlbridge."

__all__ = [
    "LABEL_PREFIX",
    "Backend",
    "ControlChannel",
    "ExitInfo",
    "SupportsEgress",
    "SupportsGpus",
    "SupportsHold",
    "SupportsModels",
    "WorkerHandle",
    "WorkerLimits",
    "WorkerSpec",
    "remember",
    "resolve_runtime",
]


@functools.cache
def _installed_bridges() -> dict[str, str]:
    from importlib import metadata

    return {ep.name: ep.value for ep in metadata.entry_points(group=BRIDGE_ENTRY_POINTS)}


#: How many ended workers' exit infos (and stop modes) a backend keeps after removing them, for exit_info().
ENDED_MEMORY = 4096


def remember(memory: OrderedDict[str, Any], key: str, value: Any, limit: int = ENDED_MEMORY) -> None:
    """Put ``key`` in a bounded memory, newest last, forgetting the oldest beyond ``limit``."""
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > limit:
        memory.popitem(last=False)


def resolve_runtime(spec: str) -> str:
    """``mock`` -> ``runtimes.mock:MockBridge`` via the host's entry points; unknown names pass through."""
    if ":" in spec:
        return spec
    return _installed_bridges().get(spec, spec)


@dataclass
class WorkerSpec:
    """Everything a backend needs to start one worker."""

    worker_id: str
    bridge: str
    config: BridgeConfig
    orchestrator_id: str
    max_message_bytes: int
    #: Start the container but hold the runtime until :meth:`SupportsHold.release`.
    hold: bool = False
    #: CPU limit while the runtime starts (backends that can change it in place); 0 = limits.cpus.
    startup_cpus: float = 0.0

    @property
    def runtime(self) -> str:
        """The bridge as an import string when the host knows the name (saves the worker a metadata scan)."""
        return resolve_runtime(self.config.runtime)

    @property
    def labels(self) -> dict[str, str]:
        return {
            f"{LABEL_PREFIX}orchestrator": self.orchestrator_id,
            f"{LABEL_PREFIX}bridge": self.bridge,
            f"{LABEL_PREFIX}worker": self.worker_id,
        }


class ControlChannel(abc.ABC):
    """How the orchestrator reaches one worker's runtime, as its backend set it up."""

    @property
    @abc.abstractmethod
    def target(self) -> str:
        """The gRPC target (``unix:///...``, ``host:port``), for channels and messages."""

    def present(self) -> bool:
        """Whether the endpoint exists yet; dialling one that does not would start gRPC's reconnect backoff."""
        return True

    def check(self) -> None:
        """Refuse an endpoint the worker could have tampered with.

        Raises:
            Unavailable: the endpoint is not what the backend set up.
        """

    def open(self, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        """A new channel to the runtime."""
        return grpc.aio.insecure_channel(self.target, options=list(options))


@dataclass
class WorkerHandle:
    """A started worker, as its backend knows it."""

    worker_id: str
    bridge: str
    channel: ControlChannel
    ref: Any = None  # backend-specific: a process, a container id
    image_id: str = ""
    backend: str = ""
    #: Started with ``startup_cpus``: the pool lowers the CPU limit to the bridge's once it is ready.
    boosted: bool = False
    #: Waiting for :meth:`SupportsHold.release`.
    held: bool = False

    @property
    def address(self) -> str:
        """The control channel's gRPC target."""
        return self.channel.target


@dataclass
class ExitInfo:
    """How a worker ended."""

    exit_code: int | None
    oom_killed: bool = False
    reason: str = ""
    memory_limit: int | None = None

    @property
    def cause(self) -> str:
        """For metrics: ``oom``, ``killed`` (by a signal) or ``exited`` (on its own, or could not run)."""
        if self.oom_killed:
            return "oom"
        code = self.exit_code
        if self.reason.startswith("killed") or (isinstance(code, int) and (code < 0 or code > 128)):
            return "killed"
        return "exited"

    def describe(self) -> str:
        if self.oom_killed:
            lim = f" (limit {self.memory_limit // (1024 * 1024)} MiB)" if self.memory_limit else ""
            return f"killed for running out of memory{lim}"
        if self.reason:
            return self.reason
        return f"exited with code {self.exit_code}"


class Backend(abc.ABC):
    """Runs workers. Implementations: ``process`` (no isolation), ``docker``; more by entry point.

    Class attributes:
        name: the name the backend is configured by.
        enforces_limits: whether a worker's cgroup limits (``BridgeConfig.limits``) hold;
            an OOM kill then names the configured memory limit.
    """

    name: ClassVar[str] = ""
    enforces_limits: ClassVar[bool] = False

    @classmethod
    def from_config(cls, config: Config) -> Backend:
        """The backend for an orchestrator configuration (override to read settings from it)."""
        return cls()

    async def prepare(self, config: Config) -> None:
        """Check images, packages and settings before any worker starts.

        Raises:
            ConfigError: naming what is missing and how to fix it.
        """

    @abc.abstractmethod
    async def start(self, spec: WorkerSpec) -> WorkerHandle:
        """Start a worker; return once it is launched (not necessarily ready)."""

    @abc.abstractmethod
    async def stop(self, handle: WorkerHandle, *, kill: bool = False, timeout: float = 5.0) -> None:
        """Stop gracefully (SIGTERM, then SIGKILL after timeout), or kill at once; release its channel."""

    @abc.abstractmethod
    async def exit_info(self, handle: WorkerHandle) -> ExitInfo | None:
        """None while running, else how it ended."""

    async def mark_tenant(self, handle: WorkerHandle, tenant: str) -> None:
        """Make a claimed worker's tenant visible to the engine's own tools (no-op by default)."""

    async def apply_limits(self, handle: WorkerHandle, limits: WorkerLimits) -> bool:
        """Lower a running worker's limits; False when this backend cannot."""
        return False

    async def stats(self, handle: WorkerHandle) -> dict[str, Any]:
        """Resource usage (memory bytes, cpu) when known."""
        return {}

    def usage(self, handle: WorkerHandle) -> dict[str, int]:
        """Cheap figures read while the worker runs, {} when unknown; any of ``memory_bytes``,
        ``memory_peak_bytes``, ``memory_limit_bytes``, ``cpu_ns`` (total CPU time) and ``pids``.
        The audit log keeps them at a worker's end; metrics and usage accounting sample them."""
        return {}

    async def list(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Workers this backend runs whose labels include ``labels``."""
        return []

    async def reap(self, keep_orchestrator_id: str) -> int:
        """Remove workers left by other (dead) orchestrators; return how many."""
        return 0

    def log_tail(self, handle: WorkerHandle, lines: int = 20) -> str:
        """Last lines of the worker's log, for error messages."""
        return ""

    async def close(self) -> None:
        """Release backend resources (clients, connections, socket directories)."""


@runtime_checkable
class SupportsEgress(Protocol):
    """A backend that can put a claimed worker behind the egress proxy.

    The backend opens one network whose only way out is the proxy on its
    gateway, firewalls it, and moves a claimed worker onto it.
    """

    async def open_egress(self) -> str:
        """Open the egress network; return the gateway address the proxy listens on."""
        ...

    async def guard_egress(self, proxy_port: int) -> None:
        """Confine the egress network to the gateway's ``proxy_port``."""
        ...

    async def connect_egress(self, handle: WorkerHandle) -> str:
        """Move a worker onto the egress network; return its address there."""
        ...

    async def close_egress(self) -> None:
        """Remove the egress network and its firewall."""
        ...


@runtime_checkable
class SupportsGpus(Protocol):
    """A backend that can give workers GPUs by device id (``limits.gpus``)."""

    def check_gpus(self, bridge: str, cfg: BridgeConfig) -> None:
        """Refuse GPU ids the host does not have.

        Raises:
            ConfigError: naming the unknown ids and the inventory.
        """
        ...


@runtime_checkable
class SupportsModels(Protocol):
    """A backend that can give a claimed worker models of the model store, read-only, and an export directory.

    Only workers of bridges configured with ``models: true`` get them.
    """

    async def grant_models(self, handle: WorkerHandle, objects: Path, hashes: list[str]) -> dict[str, str]:
        """Make the store objects ``hashes`` (under ``objects``) readable by the worker.

        Returns:
            hash -> the model directory's path as the worker sees it.
        """
        ...

    def export_dir(self, handle: WorkerHandle) -> tuple[str, Path] | None:
        """(the path the worker writes exports to, the same directory on the host); None when it has none."""
        ...


@runtime_checkable
class SupportsHold(Protocol):
    """A backend that can start a worker ahead of need and hold its runtime until asked.

    ``start`` with ``WorkerSpec.hold`` pays for everything but the runtime's own
    start (for docker: creating and starting the container); the handle it returns
    is ``held``. ``release`` lets the runtime start; the caller then waits for it
    to become ready as after any start. A held worker whose orchestrator goes away
    exits without starting its runtime. Stopping a held worker is ``stop``.
    """

    async def release(self, handle: WorkerHandle) -> None:
        """Let a held worker's runtime start.

        Raises:
            Unavailable: the worker is gone (its hold can no longer be released).
        """
        ...
