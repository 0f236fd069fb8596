"""Finding a running orchestrator's workers from outside it: containers on the engine, or processes.

Docker backend: every worker container carries ``io.mlbridge.orchestrator=<id>``,
``io.mlbridge.bridge``, ``io.mlbridge.worker`` and, for a deployment with a
state dir, ``io.mlbridge.scope=<sha256(state dir)[:12]>``; a claimed container
is renamed ``<name>.<tenant>``. Process backend: each worker is
``python -m runtimes.start --bridge ... --socket <root>/<worker id>/runtime.sock``
with ``MLBRIDGE_LABEL_ORCHESTRATOR`` / ``_BRIDGE`` / ``_WORKER`` in its
environment. In both, a worker whose ``runtime.sock`` does not exist yet is
held or starting (not serving) and is left alone.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.base import LABEL_PREFIX
from ..backends.unix import SOCKET_NAME

__all__ = [
    "ChaosRefused",
    "DockerWorkers",
    "ProcessWorkers",
    "WorkerTarget",
    "docker_client",
    "scope_of_state_dir",
]

ORCHESTRATOR_LABEL = f"{LABEL_PREFIX}orchestrator"
SCOPE_LABEL = f"{LABEL_PREFIX}scope"
BRIDGE_LABEL = f"{LABEL_PREFIX}bridge"
WORKER_LABEL = f"{LABEL_PREFIX}worker"
#: Where a worker container sees its socket directory (the docker backend's bind mount).
SOCKET_MOUNT = "/run/mlbridge"
_ENV_PREFIX = "MLBRIDGE_LABEL_"


class ChaosRefused(Exception):
    """A chaos run (or one fault) refused before it touched anything; the message says why."""


@dataclass(frozen=True)
class WorkerTarget:
    """One serving worker a fault can hit.

    Attributes:
        worker_id: the orchestrator's id of the worker (``io.mlbridge.worker``).
        bridge: its bridge.
        backend: ``docker`` or ``process``.
        ref: the container id, or the process id as text.
        name: the container's name, or ``pid N``.
        tenant: the tenant that claimed it; "" for a spare; None when unknown.
        socket_path: the host path of its ``runtime.sock``, when visible here.
        pid: the host pid of its runtime process, when known.
    """

    worker_id: str
    bridge: str
    backend: str
    ref: str
    name: str
    tenant: str | None = None
    socket_path: str | None = None
    pid: int | None = None

    def describe(self) -> str:
        who = "spare" if self.tenant == "" else (f"tenant {self.tenant}" if self.tenant else "tenant ?")
        return f"{self.worker_id} ({self.bridge}, {who}, {self.name})"

    def to_dict(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "bridge": self.bridge, "backend": self.backend, "ref": self.ref,
                "name": self.name, "tenant": self.tenant, "socket_path": self.socket_path, "pid": self.pid}


def scope_of_state_dir(state_dir: str | os.PathLike[str]) -> str:
    """The docker backend's scope label for orchestrators sharing ``state_dir`` (sha256 of its resolved path, 12 hex)."""
    return hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:12]


def docker_client() -> Any:
    """A docker SDK client from the environment, checked with a ping.

    Raises:
        ChaosRefused: the engine is unreachable or this user may not use it.
    """
    try:
        import docker
        from docker import errors as derr
    except ImportError:  # pragma: no cover - docker is a dependency
        raise ChaosRefused("the docker SDK is not installed (pip install docker)") from None
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env()
        client.ping()
    except (derr.DockerException, OSError) as exc:
        text = str(exc)
        if isinstance(exc, PermissionError) or "Permission denied" in text or "EACCES" in text:
            raise ChaosRefused(f"no permission to the Docker engine at {host}: {text} (run as root or as a "
                               "member of the docker group)") from None
        raise ChaosRefused(f"cannot reach the Docker engine at {host}: {text}") from None
    return client


def _tenant_from_name(name: str, bridge: str, worker_id: str) -> str | None:
    """``mlbridge-<bridge>-<worker>.<tenant>`` -> tenant; "" for a name without a tenant; None when unsure."""
    marker = f"{worker_id}."
    at = name.find(marker)
    if at >= 0:
        return name[at + len(marker):]
    return "" if name.endswith(worker_id) else None


class DockerWorkers:
    """Worker containers of one orchestrator (by id) or one deployment (by scope), on the local engine.

    Args:
        orchestrator_id: select by ``io.mlbridge.orchestrator``.
        scope: select by ``io.mlbridge.scope`` (see :func:`scope_of_state_dir`).
        client: a docker SDK client (default: :func:`docker_client`).
    """

    backend = "docker"

    def __init__(self, *, orchestrator_id: str | None = None, scope: str | None = None,
                 client: Any = None) -> None:
        if not orchestrator_id and not scope:
            raise ChaosRefused("say whose workers to hit: an orchestrator id, a state dir or a scope label")
        self.orchestrator_id = orchestrator_id
        self.scope = scope
        self.client = client if client is not None else docker_client()

    def selector(self) -> str:
        parts = [f"{ORCHESTRATOR_LABEL}={self.orchestrator_id}"] if self.orchestrator_id else []
        if self.scope:
            parts.append(f"{SCOPE_LABEL}={self.scope}")
        return ", ".join(parts)

    def _filters(self) -> list[str]:
        labels = [ORCHESTRATOR_LABEL, WORKER_LABEL]
        if self.orchestrator_id:
            labels.append(f"{ORCHESTRATOR_LABEL}={self.orchestrator_id}")
        if self.scope:
            labels.append(f"{SCOPE_LABEL}={self.scope}")
        return labels

    def list(self, *, serving_only: bool = True) -> list[WorkerTarget]:
        """Running worker containers (paused ones too), by the selector's labels.

        Raises:
            ChaosRefused: the engine refused the listing.
        """
        from docker import errors as derr

        try:
            rows = self.client.api.containers(filters={"label": self._filters(), "status": ["running", "paused"]})
        except (derr.DockerException, OSError) as exc:
            raise ChaosRefused(f"cannot list containers on the Docker engine: {exc}") from None
        out = []
        for row in rows:
            labels = row.get("Labels") or {}
            wid, bridge = labels.get(WORKER_LABEL, ""), labels.get(BRIDGE_LABEL, "")
            name = (row.get("Names") or [""])[0].lstrip("/")
            sock = None
            for m in row.get("Mounts") or ():
                if m.get("Destination") == SOCKET_MOUNT and m.get("Source"):
                    sock = os.path.join(m["Source"], SOCKET_NAME)
            if serving_only and sock is not None and os.path.isdir(os.path.dirname(sock)) \
                    and not os.path.lexists(sock):
                continue  # held or still starting: its runtime does not serve yet
            out.append(WorkerTarget(worker_id=wid, bridge=bridge, backend=self.backend, ref=str(row["Id"]),
                                    name=name, tenant=_tenant_from_name(name, bridge, wid), socket_path=sock))
        return out

    def runtime_pid(self, target: WorkerTarget) -> int | None:
        """The host pid of the container's runtime (``python3 -m runtimes.start``), via ``docker top``."""
        from docker import errors as derr

        try:
            top = self.client.api.top(target.ref, ps_args="-eo pid,args")
        except (derr.DockerException, OSError):
            return None
        titles = [t.upper() for t in top.get("Titles") or ()]
        pid_at = titles.index("PID") if "PID" in titles else 0
        for proc in top.get("Processes") or ():
            cmd = " ".join(proc[pid_at + 1:]) if len(proc) > pid_at + 1 else ""
            if cmd.startswith("python") and " -m runtimes.start" in cmd:
                try:
                    return int(proc[pid_at])
                except (ValueError, IndexError):
                    return None
        return None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def runtime_argv(cmdline: bytes) -> dict[str, str] | None:
    """``--bridge`` and ``--socket`` of a ``python -m runtimes.start`` command line (NUL-separated); else None."""
    argv = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
    if len(argv) < 3 or "python" not in os.path.basename(argv[0]):
        return None
    try:
        at = argv.index("-m")
    except ValueError:
        return None
    if at + 1 >= len(argv) or argv[at + 1] != "runtimes.start":
        return None
    out = {}
    rest = argv[at + 2:]
    for i, arg in enumerate(rest):
        for key in ("bridge", "socket"):
            if arg == f"--{key}" and i + 1 < len(rest):
                out[key] = rest[i + 1]
            elif arg.startswith(f"--{key}="):
                out[key] = arg.split("=", 1)[1]
    return out if "socket" in out else None


class ProcessWorkers:
    """The process backend's workers: this host's ``runtimes.start`` processes of one orchestrator.

    Args:
        orchestrator_id: select by the worker's ``MLBRIDGE_LABEL_ORCHESTRATOR``.
        socket_root: select by where its socket lives (``<socket_root>/<worker id>/runtime.sock``).
        proc: the proc filesystem (tests).

    Tenants are not visible from outside: :class:`~orchestrator.chaos.Chaos` asks the API (GetStats).
    """

    backend = "process"

    def __init__(self, *, orchestrator_id: str | None = None, socket_root: str | os.PathLike[str] | None = None,
                 proc: Path = Path("/proc")) -> None:
        if not orchestrator_id and not socket_root:
            raise ChaosRefused("say whose workers to hit: an orchestrator id or the workers' socket root")
        self.orchestrator_id = orchestrator_id
        self.socket_root = Path(socket_root).resolve() if socket_root else None
        self.proc = proc
        #: Processes that looked like workers but whose environment this user may not read.
        self.unreadable = 0

    def selector(self) -> str:
        parts = [f"orchestrator {self.orchestrator_id}"] if self.orchestrator_id else []
        if self.socket_root:
            parts.append(f"socket root {self.socket_root}")
        return ", ".join(parts)

    def _entries(self) -> Iterable[Path]:
        try:
            return [p for p in self.proc.iterdir() if p.name.isdigit()]
        except OSError:
            return []

    def list(self, *, serving_only: bool = True) -> list[WorkerTarget]:
        out = []
        self.unreadable = 0
        for entry in self._entries():
            cmd = _read(entry / "cmdline")
            args = runtime_argv(cmd) if cmd else None
            if args is None:
                continue
            stat = _read(entry / "stat")
            if stat is None or stat.rsplit(b")", 1)[-1].split()[:1] in ([b"Z"], [b"X"]):
                continue  # gone, or a zombie its orchestrator has not reaped yet
            sock = Path(args["socket"])
            if self.socket_root is not None and sock.parent.parent.resolve() != self.socket_root:
                continue
            raw_env = _read(entry / "environ")
            env: dict[str, str] = {}
            if raw_env is None:
                self.unreadable += 1
                if self.orchestrator_id:
                    continue  # cannot tell whose it is
            else:
                for item in raw_env.split(b"\0"):
                    key, sep, value = item.decode(errors="replace").partition("=")
                    if sep and key.startswith(_ENV_PREFIX):
                        env[key[len(_ENV_PREFIX):]] = value
            if self.orchestrator_id and env.get("ORCHESTRATOR") != self.orchestrator_id:
                continue
            if serving_only and not os.path.lexists(sock):
                continue  # held or still starting
            pid = int(entry.name)
            out.append(WorkerTarget(worker_id=env.get("WORKER") or sock.parent.name,
                                    bridge=env.get("BRIDGE") or args.get("bridge", ""), backend=self.backend,
                                    ref=str(pid), name=f"pid {pid}", socket_path=str(sock), pid=pid))
        return out


@dataclass
class Selection:
    """Which workers a fault may hit.

    Attributes:
        bridges: only these bridges (empty: every bridge).
        tenant: only workers claimed by this tenant (None: any worker).
        claimed_only: only workers some tenant claimed (not spares).
    """

    bridges: tuple[str, ...] = ()
    tenant: str | None = None
    claimed_only: bool = False

    def pick(self, workers: Iterable[WorkerTarget]) -> list[WorkerTarget]:
        out = []
        for w in workers:
            if self.bridges and w.bridge not in self.bridges:
                continue
            if self.tenant is not None and w.tenant != self.tenant:
                continue
            if self.claimed_only and not w.tenant:
                continue
            out.append(w)
        return out


def with_tenants(workers: Iterable[WorkerTarget], tenants: Callable[[], dict[str, str]] | None) -> list[WorkerTarget]:
    """``workers`` with their tenant filled in from ``tenants()`` (worker id -> tenant) where it knows."""
    items = list(workers)
    if tenants is None:
        return items
    known = tenants()
    out = []
    for w in items:
        if w.worker_id in known:
            w = WorkerTarget(w.worker_id, w.bridge, w.backend, w.ref, w.name, known[w.worker_id], w.socket_path,
                             w.pid)
        out.append(w)
    return out
