"""What an :class:`~orchestrator.testing.MLBridgeContainer` asks of the engine, as plain data.

No Docker here, so the config, the command line and the labels are
unit-tested without an engine (as ``backends/docker/render.py`` is for
workers). The container module does the side effects.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import yaml

from orchestrator.images import image_tag
from runtimes.wire.errors import ConfigError

__all__ = [
    "AUDIT_LOG",
    "BACKENDS",
    "CI_BRIDGE_DEFAULTS",
    "CONFIG_PATH",
    "DEFAULT_BRIDGES",
    "ENGINE_BACKENDS",
    "ENGINE_SOCKET",
    "GRPC_PORT",
    "IMAGE_STATE_DIR",
    "POLICY_PATH",
    "RECORDS_PATH",
    "ROLE_LABEL",
    "RUN_LABEL",
    "Backend",
    "bridge_configs",
    "default_image",
    "deployment_scope",
    "merge_config",
    "policy_text",
    "render_config",
    "serve_command",
]

Backend = Literal["process", "docker"]
BACKENDS: tuple[Backend, ...] = ("process", "docker")
#: Backends whose workers are containers on the engine the orchestrator's container runs on:
#: they get the engine's socket and a volume shared with the workers.
ENGINE_BACKENDS: frozenset[Backend] = frozenset({"docker"})
#: The port the orchestrator listens on inside its container.
GRPC_PORT = 50051
#: Files the container class copies into the orchestrator's container.
CONFIG_PATH = "/etc/mlbridge/testcontainer.yaml"
POLICY_PATH = "/etc/mlbridge/policy.yaml"
#: The image's state dir (``MLBRIDGE_STATE_DIR``): image records, and the registry with the process backend.
IMAGE_STATE_DIR = "/var/lib/mlbridge"
RECORDS_PATH = f"{IMAGE_STATE_DIR}/images.json"
AUDIT_LOG = f"{IMAGE_STATE_DIR}/audit/audit.jsonl"
#: Where the engine's socket appears in the orchestrator's container (the docker SDK's default).
ENGINE_SOCKET = "/var/run/docker.sock"
#: Labels on the orchestrator's container and its shared volume (workers carry the backend's own).
ROLE_LABEL = "io.mlbridge.role"
RUN_LABEL = "io.mlbridge.testing-run"
#: Bridges served when none are named: those whose frameworks the orchestrator image holds
#: (process backend), and the cheapest image (docker backend).
DEFAULT_BRIDGES: dict[Backend, tuple[str, ...]] = {"process": ("mock", "custom"), "docker": ("mock",)}
#: Applied to every bridge named by name: one ready spare, none held, so a test
#: session starts few workers (with_config or a mapping entry overrides them).
CI_BRIDGE_DEFAULTS: dict[str, Any] = {"pool_size": 1, "held": 0}


def default_image() -> str:
    """``mlbridge/orchestrator:<version>``: what ``mlbridge images build orchestrator`` tags."""
    return image_tag("orchestrator")


def _shipped_bridges() -> dict[str, Any]:
    text = resources.files("orchestrator").joinpath("default_config.yaml").read_text()
    bridges = (yaml.safe_load(text) or {}).get("bridges") or {}
    return dict(bridges)


def merge_config(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``over`` into ``base`` (mappings merge, anything else replaces); return ``base``."""
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge_config(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def bridge_configs(bridges: Iterable[str] | Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-bridge config entries for ``bridges``.

    Args:
        bridges: names, each taking the shipped default config's entry (or
            ``runtime: <name>`` for a bridge it does not know) with
            :data:`CI_BRIDGE_DEFAULTS` on top; or a mapping of name to a full
            entry, used as given.

    Raises:
        ConfigError: no bridge at all.
    """
    if isinstance(bridges, Mapping):
        out = {str(name): copy.deepcopy(dict(entry)) for name, entry in bridges.items()}
    else:
        shipped = _shipped_bridges()
        out = {}
        for name in bridges:
            entry = copy.deepcopy(shipped.get(name) or {"runtime": name})
            out[name] = merge_config(entry, CI_BRIDGE_DEFAULTS)
    if not out:
        raise ConfigError("MLBridgeContainer needs at least one bridge to serve")
    return out


def render_config(backend: Backend, bridges: Mapping[str, Mapping[str, Any]],
                  overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The orchestrator's config file, as a mapping.

    ``listen``, ``backend``, ``policy``, ``audit_log`` and ``state_dir`` are
    given on the command line (:func:`serve_command`), which wins over the file.

    Args:
        backend: ``process`` or ``docker``.
        bridges: from :func:`bridge_configs`.
        overrides: deep-merged last (``{"bridges": {"mock": {"pool_size": 2}}}``).

    Raises:
        ConfigError: an unknown backend, or ``default_bridge`` not among the bridges.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"MLBridgeContainer backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    config: dict[str, Any] = {
        "default_bridge": "mock" if "mock" in bridges else next(iter(bridges)),
        "backend": backend,
        "bridges": {name: dict(entry) for name, entry in bridges.items()},
    }
    merge_config(config, overrides or {})
    if config["default_bridge"] not in config["bridges"]:
        raise ConfigError(f"default_bridge {config['default_bridge']!r} is not among the bridges "
                          f"({', '.join(sorted(config['bridges']))})")
    return config


def policy_text(policy: Mapping[str, Any] | str | PathLike[str]) -> str:
    """A policy as YAML text: a mapping is dumped, a path is read.

    Raises:
        ConfigError: the path cannot be read.
    """
    if isinstance(policy, Mapping):
        return yaml.safe_dump(dict(policy), sort_keys=False)
    path = Path(policy)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read policy {path}: {exc.strerror}") from exc


def deployment_scope(state_dir: str) -> str:
    """The ``io.mlbridge.scope`` label value the docker backend gives workers of ``state_dir``.

    Mirrors ``DockerBackend.from_config`` (a unit test holds the two together):
    the orchestrator resolves the same path in its container, where it is
    not a symlink.
    """
    return hashlib.sha256(state_dir.encode()).hexdigest()[:12]


def serve_command(backend: Backend, *, policy: bool, audit_log: bool, state_dir: str | None) -> list[str]:
    """``mlbridge`` arguments for the orchestrator's container (the image's entry point adds ``mlbridge``)."""
    command = ["serve", "--config", CONFIG_PATH, "--listen", f"0.0.0.0:{GRPC_PORT}", "--backend", backend]
    if policy:
        command += ["--policy", POLICY_PATH]
    if audit_log:
        command += ["--audit-log", AUDIT_LOG]
    if state_dir:
        command += ["--state-dir", state_dir]
    return command
