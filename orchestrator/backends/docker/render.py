"""Pure rendering of a worker's container settings: ``WorkerSpec`` -> docker SDK kwargs.

No Docker calls here, so every hardening setting is unit-tested without an
engine. :func:`render_run_kwargs` returns ``containers.run``-style keyword
arguments; :func:`split_run_kwargs` splits them into what the low-level
``APIClient.create_container`` and ``create_host_config`` take (the backend
uses the low-level API to skip the inspect round trip ``containers.run`` makes).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from docker.models.containers import RUN_CREATE_KWARGS, RUN_HOST_CONFIG_KWARGS
from docker.types import DeviceRequest, Mount, Ulimit

from orchestrator.config import parse_size
from runtimes.wire.errors import ConfigError

from ..base import WorkerSpec
from ..gpus import GpuInventory, detect_gpus
from ..mounts import EXPORT_MOUNT, MODELS_MOUNT

__all__ = [
    "CONTAINER_GID",
    "CONTAINER_UID",
    "SOCKET_MOUNT",
    "check_network_mode",
    "container_name",
    "render_run_kwargs",
    "split_run_kwargs",
]

#: The runtime's numeric uid/gid inside every image (never root).
CONTAINER_UID = 10001
CONTAINER_GID = 10001
#: Where the worker's socket directory appears inside the container.
SOCKET_MOUNT = "/run/mlbridge"
#: Same for every worker: tells a sandboxed program nothing about the host or its tenant.
HOSTNAME = "worker"
#: json-file log caps: a chatty or hostile worker cannot fill the host disk.
LOG_MAX_SIZE = "10m"
LOG_MAX_FILE = "3"
#: Variables the backend sets last, so config and spec cannot override them.
RESERVED_ENV = ("MLBRIDGE_BRIDGE", "MLBRIDGE_MAX_MESSAGE_BYTES", "TINI_SUBREAPER")
#: The control channel's variables: the backend's alone (set for tcp-mtls workers), never a bridge's env.
CHANNEL_ENV = ("MLBRIDGE_LISTEN", "MLBRIDGE_TLS_DIR")
#: Network modes that would join a namespace shared with the host or another container.
_SHARED_NETWORKS = ("host",)
_SHARED_PREFIXES = ("container:", "service:")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_.-]+")


def check_network_mode(mode: str, bridge: str) -> str:
    """``mode`` stripped (``none`` when empty).

    Raises:
        ConfigError: the mode would share the host's or another container's
            network namespace (``host``, ``container:<id>``).
    """
    mode = mode.strip() or "none"
    if mode in _SHARED_NETWORKS or mode.startswith(_SHARED_PREFIXES):
        raise ConfigError(
            f"network {mode!r} for bridge {bridge!r} would share another network namespace; "
            "use 'none' or a dedicated docker network (e.g. an internal one behind an egress proxy)"
        )
    return mode


def container_name(spec: WorkerSpec) -> str:
    """A readable, unique-per-orchestrator name: ``mlbridge-<bridge>-<worker id>``."""
    raw = f"mlbridge-{spec.bridge}-{spec.worker_id}"
    return _NAME_BAD.sub("-", raw).strip("-.")[:120]


def _environment(spec: WorkerSpec) -> dict[str, str]:
    env: dict[str, str] = {}
    for key, value in spec.config.env.items():
        if not _ENV_NAME.match(key) or "\0" in str(value):
            raise ConfigError(f"invalid environment variable {key!r} for bridge {spec.bridge!r}")
        env[key] = str(value)
    for key in CHANNEL_ENV:
        env.pop(key, None)
    env["MLBRIDGE_BRIDGE"] = spec.runtime
    env["MLBRIDGE_MAX_MESSAGE_BYTES"] = str(spec.max_message_bytes)
    # docker-init is PID 1; the image's tini below it must be a subreaper to reap orphans.
    env["TINI_SUBREAPER"] = "1"
    return env


def _device_requests(gpu_ids: list[str], inventory: GpuInventory | None) -> list[DeviceRequest]:
    if not gpu_ids:
        return []
    inv = inventory if inventory is not None else detect_gpus()
    ids = inv.resolve(gpu_ids)
    # Exactly these ids: never count=-1 ("all").
    return [DeviceRequest(driver="nvidia", device_ids=ids, capabilities=[["gpu"]])]


def render_run_kwargs(spec: WorkerSpec, image: str, socket_dir: Path, *, gpu_inventory: GpuInventory | None = None,
                      extra_labels: dict[str, str] | None = None, log_max_size: str = LOG_MAX_SIZE,
                      log_max_file: str = LOG_MAX_FILE,
                      model_dirs: tuple[Path, Path, bool] | None = None) -> dict[str, Any]:
    """The hardened ``containers.run`` kwargs for one worker.

    Args:
        spec: the worker to start.
        image: image reference to run (the backend passes the verified image id).
        socket_dir: the worker's socket directory on the host: the only mount, except
        model_dirs: for a bridge with ``models: true``, (models source, export directory,
            propagate): the models directory is mounted read-only at ``/models`` (with
            slave propagation when ``propagate``, so models mounted into it at claim
            appear inside) and the export directory read-write at ``/export``.
        gpu_inventory: GPUs to check ``limits.gpus`` against; detected on the
            host when None and GPUs are requested.
        extra_labels: added to ``spec.labels`` (the backend's scope label);
            they cannot replace a spec label.
        log_max_size: json-file ``max-size`` cap.
        log_max_file: json-file ``max-file`` cap.

    Raises:
        ConfigError: bad limits, a GPU id not in the inventory, a shared
            network namespace, or an invalid environment variable name.
    """
    limits = spec.config.limits
    memory = limits.memory_bytes
    tmpfs_bytes = parse_size(limits.tmpfs_size)
    kwargs: dict[str, Any] = {
        "image": image,
        "name": container_name(spec),
        "hostname": HOSTNAME,
        "user": f"{CONTAINER_UID}:{CONTAINER_GID}",
        "environment": _environment(spec),
        "labels": {**(extra_labels or {}), **spec.labels},
        "detach": True,
        "stop_signal": "SIGTERM",
        # Proxy settings from ~/.docker/config.json must not leak into workers.
        "use_config_proxy": False,
        # Host config: the sandbox.
        "privileged": False,
        "cap_drop": ["ALL"],
        # Default seccomp (and AppArmor, where enabled) stay on: nothing here turns them off.
        "security_opt": ["no-new-privileges:true"],
        "read_only": True,
        # nr_inodes bounds file count too: empty files cost kernel memory, not tmpfs bytes.
        "tmpfs": {"/tmp": f"rw,noexec,nosuid,nodev,size={tmpfs_bytes},nr_inodes={max(64, tmpfs_bytes // 4096)}"},
        "mounts": [Mount(target=SOCKET_MOUNT, source=str(Path(socket_dir).absolute()), type="bind", read_only=False)],
        "pids_limit": limits.pids,
        "mem_limit": memory,
        "memswap_limit": memory,  # equal to the memory limit: no swap
        # A boost while the runtime starts (no tenant code yet); the pool lowers it once ready.
        "nano_cpus": int(round(max(limits.cpus, min(spec.startup_cpus, float(os.cpu_count() or 1))) * 1e9)),
        "ulimits": [Ulimit(name="nofile", soft=limits.nofile, hard=limits.nofile)],
        "ipc_mode": "private",
        "cgroupns": "private",
        "network_mode": check_network_mode(spec.config.network, spec.bridge),
        "log_config": {"type": "json-file", "config": {"max-size": log_max_size, "max-file": str(log_max_file)}},
        "init": True,
        "runtime": spec.config.runtime_class,
        # Exit code and OOM flag must outlive the process; stop() removes the container.
        "auto_remove": False,
    }
    if model_dirs is not None:
        models, export, propagate = model_dirs
        kwargs["mounts"] += [
            Mount(target=MODELS_MOUNT, source=str(models.absolute()), type="bind", read_only=True,
                  propagation="rslave" if propagate else None),
            Mount(target=EXPORT_MOUNT, source=str(export.absolute()), type="bind", read_only=False),
        ]
    requests = _device_requests(list(limits.gpus), gpu_inventory)
    if requests:
        kwargs["device_requests"] = requests
    return kwargs


def split_run_kwargs(run_kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``containers.run`` kwargs into (``create_container`` kwargs, ``create_host_config`` kwargs).

    Raises:
        ValueError: a key belongs to neither (a bug in :func:`render_run_kwargs`).
    """
    create: dict[str, Any] = {}
    host: dict[str, Any] = {}
    for key, value in run_kwargs.items():
        if key in RUN_CREATE_KWARGS:
            create[key] = value
        elif key in RUN_HOST_CONFIG_KWARGS:
            host[key] = value
        else:
            raise ValueError(f"unknown container setting {key!r}")
    return create, host
