"""Orchestrator configuration: pydantic models, YAML, ``MLBRIDGE_*`` overrides.

Shape (see ``default_config.yaml``)::

    default_bridge: mock
    backend: process
    bridges:
      mock:
        runtime: mock            # entry point name or "package.module:Class"
        pool_size: 2
        required_env: []
        required_packages: []
        limits: {cpus: 1.0, memory: 512m, pids: 256}

Environment overrides: ``MLBRIDGE_<FIELD>`` for top-level fields and
``MLBRIDGE_BRIDGES__<NAME>__<FIELD>[__<SUBFIELD>]`` for nested ones, e.g.
``MLBRIDGE_BRIDGES__MOCK__POOL_SIZE=4``. Values are parsed as YAML scalars.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runtimes.wire.caps import DEFAULT_MAX_MESSAGE_BYTES
from runtimes.wire.errors import ConfigError

ENV_PREFIX = "MLBRIDGE_"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.I)


def parse_size(value: str | int) -> int:
    """``"512m"`` -> bytes. Plain integers are bytes."""
    if isinstance(value, int):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"not a size: {value!r} (use e.g. 512m, 2g, 65536)")
    mult = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


class Limits(BaseModel):
    """Per-worker cgroup and sandbox limits (docker backend)."""

    model_config = ConfigDict(extra="forbid")

    cpus: float = Field(1.0, gt=0, description="CPU quota in cores")
    memory: str = Field("512m", description="memory limit; swap is set equal (no swap)")
    pids: int = Field(256, gt=0, description="max processes/threads in the worker")
    nofile: int = Field(1024, gt=0, description="open file descriptor limit")
    tmpfs_size: str = Field("64m", description="size cap of the writable /tmp (noexec)")
    gpus: list[str] = Field(default_factory=list, description="GPU device ids from the inventory; never 'all'")

    @field_validator("memory", "tmpfs_size")
    @classmethod
    def _size(cls, v: str) -> str:
        parse_size(v)
        return v

    @field_validator("gpus")
    @classmethod
    def _no_all(cls, v: list[str]) -> list[str]:
        if any(g.strip().lower() == "all" for g in v):
            raise ValueError("GPUs are given by device id; 'all' is not allowed")
        return v

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory)


@dataclass(frozen=True)
class WorkerLimits:
    """Limits of one running worker that can be changed in place; None leaves one as it is."""

    cpus: float | None = None
    memory_bytes: int | None = None
    pids: int | None = None

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def below(self, ceiling: Limits) -> WorkerLimits:
        """Only the values lower than the operator's ``ceiling``: a tenant may lower limits, never raise them."""
        return WorkerLimits(
            cpus=self.cpus if self.cpus and self.cpus < ceiling.cpus else None,
            memory_bytes=self.memory_bytes if self.memory_bytes and self.memory_bytes < ceiling.memory_bytes
            else None,
            pids=self.pids if self.pids and self.pids < ceiling.pids else None,
        )


class TLSConfig(BaseModel):
    """TLS for the public API; with ``client_ca`` set, clients must present a certificate it signed (mTLS)."""

    model_config = ConfigDict(extra="forbid")

    cert: Path = Field(description="server certificate chain (PEM)")
    key: Path = Field(description="server private key (PEM)")
    client_ca: Path | None = Field(None, description="CA bundle for client certificates; set it to require mTLS")


class TracingConfig(BaseModel):
    """OpenTelemetry traces of public calls, exported over OTLP/gRPC (off unless configured)."""

    model_config = ConfigDict(extra="forbid")

    otlp_endpoint: str = Field(description="the collector's OTLP/gRPC address, host:port")
    sample_ratio: float = Field(1.0, ge=0, le=1, description=(
        "share of calls traced when the client sent no sampling decision (a client's traceparent wins)"))
    insecure: bool = Field(True, description="plain gRPC to the collector (false: TLS)")


class CircuitConfig(BaseModel):
    """A circuit breaker per tenant of a bridge (see orchestrator/circuit.py)."""

    model_config = ConfigDict(extra="forbid")

    failures: int = Field(3, ge=0, le=1000, description=(
        "consecutive worker deaths or failed starts of one tenant that open its circuit (0: never)"))
    open_s: float = Field(5.0, gt=0, le=3600, description="how long an open circuit refuses before one probe call")
    max_open_s: float = Field(60.0, gt=0, le=86400, description="the longest it stays open (it doubles each time)")


class RecycleConfig(BaseModel):
    """When a claimed worker is replaced by a fresh one, after its calls in flight finish."""

    model_config = ConfigDict(extra="forbid")

    max_age_s: float | None = Field(None, gt=0, description="recycle a worker this many seconds after it started")
    max_calls: int | None = Field(None, gt=0, description="recycle a worker after this many calls")
    max_memory: str | None = Field(None, description="recycle a worker whose memory high-water mark passes this")

    @property
    def max_memory_bytes(self) -> int | None:
        return parse_size(self.max_memory) if self.max_memory else None

    @field_validator("max_memory")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None:
            parse_size(v)
        return v


class BridgeConfig(BaseModel):
    """One bridge: where its runtime comes from and how its workers run."""

    model_config = ConfigDict(extra="forbid")

    runtime: str = Field(description="entry point name in mlbridge.bridges, or 'module:Class'")
    image: str | None = Field(None, description="docker image; default mlbridge/<bridge>:<version>")
    pool_size: int = Field(1, ge=0, le=64, description=(
        "ready spares kept at least; the pool keeps more while demand asks for them, up to max_spares"))
    max_spares: int = Field(32, ge=0, le=256, description=(
        "most ready spares kept when demand is high (never fewer than pool_size; also bounded by host memory)"))
    spare_window_s: float = Field(600.0, gt=0, description=(
        "how long the busiest burst of claims is remembered when sizing the spares"))
    held: int = Field(2, ge=0, le=64, description=(
        "containers started ahead whose runtime waits to be released (an idle interpreter each, a few MB): "
        "a worker that has to be started takes one instead of paying for a container start"))
    startup_cpus: float = Field(1.0, ge=0, le=1024, description=(
        "CPU limit while a worker's runtime starts, before any tenant code runs; limits.cpus applies once it "
        "is ready (never lower than limits.cpus; 0 turns the boost off)"))
    max_workers: int = Field(8, ge=1, le=256, description="upper bound on workers for this bridge")
    workers_per_tenant: int = Field(1, ge=1, le=64, description=(
        "workers one tenant may claim; with 1, all of a tenant's resources of this bridge share a worker "
        "and may refer to each other"))
    secrets: list[str] = Field(default_factory=list, description=(
        "secret names this bridge's workers receive from the tenant's policy (besides those the bridge declares)"))
    required_env: list[str] = Field(default_factory=list, description="host env vars that must be set")
    required_packages: list[str] = Field(default_factory=list, description="distributions the runtime needs")
    env: dict[str, str] = Field(default_factory=dict, description="extra env for the worker (no secrets)")
    limits: Limits = Field(default_factory=Limits)
    network: str = Field("none", description="docker network mode; 'none' unless policy allows egress")
    runtime_class: str = Field("runc", description="OCI runtime: runc or runsc (gVisor)")
    call_timeout_s: float = Field(300.0, gt=0, description="default per-call deadline")
    start_timeout_s: float = Field(60.0, gt=0, description="how long a worker may take to become ready")
    cancel_grace_s: float = Field(3.0, gt=0, description="after cancel/deadline, time before the worker is killed")
    release_idle_s: float = Field(900.0, gt=0, description=(
        "a claimed worker unused this long is released (destroyed); its tenant's resources are "
        "re-created from their specs on next use"))
    circuit: CircuitConfig = Field(default_factory=CircuitConfig)
    recycle: RecycleConfig = Field(default_factory=RecycleConfig)
    adapter: str | None = Field(None, description="client adapter import string (module:Class)")
    models: bool = Field(False, description=(
        "give claimed workers the model-store models their tenant may load (read-only) and an export directory"))
    export_size: str = Field("512m", description="size cap of a worker's export directory (models: true)")
    preload_models: list[str] = Field(default_factory=list, description=(
        "operator models of the model store that every spare of this bridge loads before it is claimed "
        "(models: true); each must be one every tenant of the policy may load"))

    @field_validator("export_size")
    @classmethod
    def _export_size(cls, v: str) -> str:
        parse_size(v)
        return v

    @model_validator(mode="after")
    def _preloads_need_models(self) -> BridgeConfig:
        if self.preload_models and not self.models:
            raise ValueError("preload_models needs models: true (the spares load them from the model store)")
        return self


class Config(BaseModel):
    """The whole orchestrator configuration."""

    model_config = ConfigDict(extra="forbid")

    default_bridge: str = Field("mock", description="bridge used when a call names none")
    backend: str = Field("process", description=(
        "worker backend: an entry point name in mlbridge.backends (process, docker) or 'module:Class'"))
    listen: str = Field("127.0.0.1:50051", description="host:port or unix:///path")
    state_dir: Path = Field(default_factory=lambda: default_state_dir(), description="sqlite, sockets, images.json")
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, gt=1024, le=512 * 1024 * 1024,
                                   description="gRPC message cap, both directions, both hops")
    max_stream_buffer: int = Field(256, gt=0, description="events buffered per stream before backpressure")
    policy: Path | None = Field(None, description="policy file; none means single-tenant, all allowed")
    audit_log: Path | None = Field(None, description="append-only audit log (JSON lines)")
    tls: TLSConfig | None = Field(None, description="serve the public API over TLS (and mTLS with client_ca)")
    model_store: Path | None = Field(None, description="the model store's directory; default <state_dir>/models")
    metrics_listen: str | None = Field(None, description=(
        "serve Prometheus metrics on host:port (path /metrics); off when unset"))
    tracing: TracingConfig | None = Field(None, description="OpenTelemetry traces over OTLP; off when unset")
    strict_bridges: bool = Field(False, description=(
        "refuse to start when a bridge's framework is missing where the backend needs it (process backend: "
        "this Python); false serves the other bridges and says which it skipped and why"))
    worker_channel: Literal["unix", "tcp-mtls"] = Field("unix", description=(
        "how the orchestrator reaches a worker's runtime: unix (a socket in a per-worker mount, one machine) or "
        "tcp-mtls (TCP with a per-worker certificate from the orchestrator's own CA; docker: an internal "
        "network, icc off; kubernetes always)"))
    backend_options: dict[str, Any] = Field(default_factory=dict, description=(
        "settings of the chosen backend, read and checked by it (a third-party backend's, or kubernetes': "
        "namespace, kubeconfig, ...)"))
    bridges: dict[str, BridgeConfig] = Field(default_factory=dict)

    def bridge(self, name: str) -> BridgeConfig:
        return self.bridges[name]

    @property
    def model_store_path(self) -> Path:
        return self.model_store if self.model_store is not None else self.state_dir / "models"


def default_state_dir() -> Path:
    if os.environ.get("MLBRIDGE_STATE_DIR"):
        return Path(os.environ["MLBRIDGE_STATE_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/mlbridge")
    return Path.home() / ".local" / "state" / "mlbridge"


def _default_yaml() -> str:
    return resources.files("orchestrator").joinpath("default_config.yaml").read_text()


def _env_overrides(env: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fields = set(Config.model_fields)
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX):].split("__")]
        if path[0] not in fields:
            continue
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None,
                **overrides: Any) -> Config:
    """Load YAML (the shipped default when ``path`` is None), apply env and overrides.

    Raises:
        ConfigError: unreadable file or invalid values; the message names each field.
    """
    env = dict(os.environ if env is None else env)
    source = str(path) if path else "default config"
    try:
        text = Path(path).read_text() if path else _default_yaml()
        data = yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {source}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {source} must be a mapping at top level")
    data = _merge(data, _env_overrides(env))
    data.update({k: v for k, v in overrides.items() if v is not None})  # flags replace whole keys
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"invalid config {source}:\n" + "\n".join(lines)) from None
    if cfg.default_bridge not in cfg.bridges:
        raise ConfigError(
            f"config {source}: default_bridge {cfg.default_bridge!r} is not among bridges "
            f"({', '.join(sorted(cfg.bridges)) or 'none'})"
        )
    return cfg


def missing_packages(bridge: BridgeConfig) -> list[str]:
    """The bridge's ``required_packages`` that are not installed in this Python."""
    missing = []
    for pkg in bridge.required_packages:
        try:
            metadata.version(pkg)
        except metadata.PackageNotFoundError:
            missing.append(pkg)
    return missing


def skip_reason(missing: list[str]) -> str:
    """Why a bridge whose framework packages are ``missing`` is not served, and what to do."""
    names = ", ".join(repr(p) for p in missing)
    what = f"package {names} is" if len(missing) == 1 else f"packages {names} are"
    return (f"its framework is not installed ({what} not installed here); "
            f"pip install {' '.join(missing)} (the shipped bridges: pip install 'mlbridge[frameworks]') "
            "or use --backend docker")


def check_environment(cfg: Config, env: dict[str, str] | None = None) -> None:
    """Startup check: every bridge's required environment variables are set (backends check the rest).

    Raises:
        ConfigError: naming each missing variable and how to fix it.
    """
    env = dict(os.environ if env is None else env)
    problems: list[str] = []
    for name, b in sorted(cfg.bridges.items()):
        for var in b.required_env:
            if not env.get(var):
                problems.append(
                    f"bridge {name!r} needs environment variable {var}: export {var}=... "
                    f"before `mlbridge serve`, or remove it from bridges.{name}.required_env"
                )
    if problems:
        raise ConfigError("mlbridge cannot start:\n  " + "\n  ".join(problems))
