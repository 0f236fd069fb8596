"""The worker backend contract: how a runtime process/container is run.

A backend starts a runtime serving one bridge on a unix socket inside a
per-worker host directory, stops it, tells how it ended (exit code, OOM
kill), lists what it runs by label and removes leftovers of an earlier,
killed orchestrator. Readiness (health over the socket) is the pool's job.
"""

from __future__ import annotations

import abc
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import BridgeConfig

LABEL_PREFIX = "io.mlbridge."
SOCKET_NAME = "runtime.sock"


@functools.cache
def resolve_runtime(spec: str) -> str:
    """``mock`` -> ``runtimes.mock:MockBridge`` via the host's entry points; unknown names pass through."""
    if ":" in spec:
        return spec
    from runtimes.core.loader import installed_bridges

    return installed_bridges().get(spec, spec)


@dataclass
class WorkerSpec:
    """Everything a backend needs to start one worker."""

    worker_id: str
    bridge: str
    config: BridgeConfig
    socket_dir: Path
    orchestrator_id: str
    max_message_bytes: int
    env: dict[str, str] = field(default_factory=dict)
    limits_override: dict[str, Any] = field(default_factory=dict)
    network: str | None = None

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


@dataclass
class WorkerHandle:
    """A started worker, as its backend knows it."""

    worker_id: str
    bridge: str
    address: str  # gRPC target, "unix:///.../runtime.sock"
    socket_dir: Path
    ref: Any = None  # backend-specific: a process, a container id
    image_id: str = ""
    backend: str = ""


@dataclass
class ExitInfo:
    """How a worker ended."""

    exit_code: int | None
    oom_killed: bool = False
    reason: str = ""
    memory_limit: int | None = None

    def describe(self) -> str:
        if self.oom_killed:
            lim = f" (limit {self.memory_limit // (1024 * 1024)} MiB)" if self.memory_limit else ""
            return f"killed for running out of memory{lim}"
        if self.reason:
            return self.reason
        return f"exited with code {self.exit_code}"


class Backend(abc.ABC):
    """Runs workers. Implementations: ``process`` (no isolation), ``docker``."""

    name: str = ""

    async def prepare(self, bridges: dict[str, BridgeConfig]) -> None:
        """Check images/packages before any worker starts; raise ConfigError."""

    @abc.abstractmethod
    async def start(self, spec: WorkerSpec) -> WorkerHandle:
        """Start a worker; return once it is launched (not necessarily ready)."""

    @abc.abstractmethod
    async def stop(self, handle: WorkerHandle, *, kill: bool = False, timeout: float = 5.0) -> None:
        """Stop gracefully (SIGTERM, then SIGKILL after timeout), or kill at once."""

    @abc.abstractmethod
    async def exit_info(self, handle: WorkerHandle) -> ExitInfo | None:
        """None while running, else how it ended."""

    async def mark_tenant(self, handle: WorkerHandle, tenant: str) -> None:
        """Make a claimed worker's tenant visible to the engine's own tools (no-op by default)."""

    async def apply_limits(self, handle: WorkerHandle, limits: dict[str, Any]) -> bool:
        """Lower a running worker's limits (``cpus``, ``memory_bytes``, ``pids``); False if unsupported."""
        return False

    async def stats(self, handle: WorkerHandle) -> dict[str, Any]:
        """Resource usage (memory bytes, cpu) when known."""
        return {}

    def usage(self, handle: WorkerHandle) -> dict[str, int]:
        """Cheap totals for the audit log while the worker still runs (peak memory, CPU time), {} when unknown."""
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
        """Release backend resources (clients, connections)."""
