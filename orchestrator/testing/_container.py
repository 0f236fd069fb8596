"""``MLBridgeContainer``: the orchestrator in a container, for tests, on testcontainers.

One readable lifecycle (:meth:`MLBridgeContainer.start`): check the image
against mlbridge's record, compose the config, command, files and mounts
(:mod:`._settings`), create and start the container, wait until the gRPC
health service says SERVING (:mod:`._wait`). :meth:`~MLBridgeContainer.stop`
undoes all of it, and also runs after a failed start.

With ``backend="docker"`` the orchestrator starts its workers on the same
engine, through the engine's socket, mounted into its container. Workers
bind-mount paths the orchestrator creates (a socket directory per worker,
the model store), and the engine resolves those paths on *its* file system,
not in the orchestrator's container. So everything the orchestrator shares
with workers lives on a volume the engine holds, mounted into the
orchestrator's container at the volume's own mount point: the same path on
both sides. The volume is a tmpfs owned by the workers' uid 10001, which the
orchestrator's container runs as too, so it hands socket directories to
workers without root, and a worker cannot fill the host's disk through one.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tarfile
import uuid
from collections.abc import Iterable, Mapping
from os import PathLike
from typing import Any, Self

import docker
import docker.errors
import yaml
from testcontainers.core.config import testcontainers_config
from testcontainers.core.container import DockerContainer
from testcontainers.core.labels import LABEL_SESSION_ID, SESSION_ID

from orchestrator.client import MLBridge
from orchestrator.images import image_tag, recorded_image_id, verify_image
from runtimes.wire.errors import ConfigError

from ._settings import (
    AUDIT_LOG,
    BACKENDS,
    CONFIG_PATH,
    DEFAULT_BRIDGES,
    ENGINE_BACKENDS,
    ENGINE_SOCKET,
    GRPC_PORT,
    POLICY_PATH,
    RECORDS_PATH,
    ROLE_LABEL,
    RUN_LABEL,
    Backend,
    bridge_configs,
    default_image,
    deployment_scope,
    merge_config,
    policy_text,
    render_config,
    serve_command,
)
from ._wait import GrpcHealthWaitStrategy

__all__ = ["MLBridgeContainer"]

log = logging.getLogger("mlbridge.testing")

#: The workers' uid and gid (``backends/docker/render.py``), which the orchestrator image runs as.
_WORKER_UID = 10001
_SCOPE_LABEL = "io.mlbridge.scope"


class MLBridgeContainer(DockerContainer):
    """An mlbridge orchestrator in a container, serving its gRPC API on a mapped port.

    Use it as a context manager; builder methods return the container::

        with MLBridgeContainer(backend="process").with_bridges(["mock"]) as mb:
            with mb.get_client() as client:
                client.call("mock", "mock:echo", {"x": 1})

    Args:
        image: the orchestrator image; ``mlbridge/orchestrator:<version>`` by
            default, which must be the one ``mlbridge images build orchestrator``
            recorded (an ``mlbridge/`` image that differs is refused).
        backend: ``process`` (workers are processes in the container; only
            bridges whose frameworks the image holds, mock and custom) or
            ``docker`` (hardened worker containers on the same engine; mounts
            the engine's socket, see docs/ci.md).
        docker_socket: the engine's socket as the engine's host sees it
            (docker backend); testcontainers' own choice by default
            (``TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE``, else the client's socket).
        docker_socket_gid: the group that may use that socket; read from the
            socket when it is on this machine.
        shared_size: size of the tmpfs volume shared with workers (docker backend).
        stop_grace_s: how long :meth:`stop` lets the orchestrator stop its workers.
        **kwargs: passed to ``DockerContainer``.
    """

    def __init__(self, image: str | None = None, *, backend: Backend = "process",
                 docker_socket: str | None = None, docker_socket_gid: int | None = None,
                 shared_size: str = "256m", stop_grace_s: float = 30.0, **kwargs: Any) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"MLBridgeContainer backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        super().__init__(image or default_image(), **kwargs)
        self.backend: Backend = backend
        self.run_id = uuid.uuid4().hex[:12]
        self.stop_grace_s = stop_grace_s
        self._socket = docker_socket
        self._socket_gid = docker_socket_gid
        self._shared_size = shared_size
        self._bridges: Iterable[str] | Mapping[str, Mapping[str, Any]] | None = None
        self._overrides: dict[str, Any] = {}
        self._policy: str | None = None
        self._audit = False
        self._health = GrpcHealthWaitStrategy(GRPC_PORT)
        self._volume: Any = None
        #: The orchestrator's state dir on the shared volume, and its workers' scope label (docker backend).
        self.state_dir: str | None = None
        self.scope: str | None = None
        #: The config the orchestrator was started with (set by :meth:`start`).
        self.config: dict[str, Any] = {}
        self.with_exposed_ports(GRPC_PORT)

    # -- builders -------------------------------------------------------------------------------

    def with_bridges(self, bridges: Iterable[str] | Mapping[str, Mapping[str, Any]]) -> Self:
        """Serve these bridges: names (the shipped config's entries, one spare each, none held)
        or a mapping of name to a full config entry."""
        self._bridges = bridges if isinstance(bridges, Mapping) else list(bridges)
        return self

    def with_config(self, config: Mapping[str, Any]) -> Self:
        """Deep-merge ``config`` into the generated orchestrator config (docs/configuration.md)."""
        merge_config(self._overrides, config)
        return self

    def with_policy(self, policy: Mapping[str, Any] | str | PathLike[str]) -> Self:
        """Serve with this policy (a mapping or a policy file); clients then need tokens.

        Raises:
            ConfigError: a policy file cannot be read.
        """
        self._policy = policy_text(policy)
        return self

    def with_audit_log(self, enabled: bool = True) -> Self:
        """Write the hash-chained audit log in the container; read it with :meth:`get_audit_log`."""
        self._audit = enabled
        return self

    def with_startup_timeout(self, seconds: float) -> Self:
        """How long :meth:`start` waits for SERVING (120 s by default)."""
        self._health.with_startup_timeout(int(seconds))
        return self

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the orchestrator and wait until it and every bridge report SERVING.

        Raises:
            ConfigError: the image or a worker image is missing or not the one
                mlbridge recorded, or the docker socket's group is unknown.
            Unavailable: the orchestrator exited or did not serve in time
                (the message carries its logs).
        """
        try:
            return super().start()  # calls _configure() before creating the container
        except BaseException:
            self.stop()
            raise

    def _configure(self) -> None:
        client = self._engine()
        if self.image.startswith("mlbridge/"):
            verify_image(client, self.image)
        bridges = bridge_configs(self._bridges if self._bridges is not None else DEFAULT_BRIDGES[self.backend])
        self.config = render_config(self.backend, bridges, self._overrides)
        self._health.services = ["", *(f"mlbridge.bridge.{name}" for name in self.config["bridges"])]
        labels = {ROLE_LABEL: "orchestrator", RUN_LABEL: self.run_id}
        if self.backend in ENGINE_BACKENDS:
            self._share_with_workers(client, labels)
        self._kwargs = {**self._kwargs, "labels": {**self._kwargs.get("labels", {}), **labels}}
        self.with_copy_into_container(yaml.safe_dump(self.config, sort_keys=False).encode(), CONFIG_PATH)
        if self._policy is not None:
            self.with_copy_into_container(self._policy.encode(), POLICY_PATH)
        self.with_command(serve_command(self.backend, policy=self._policy is not None,
                                        audit_log=self._audit, state_dir=self.state_dir))
        self.waiting_for(self._health)

    def _share_with_workers(self, client: docker.DockerClient, labels: dict[str, str]) -> None:
        socket = self._socket or testcontainers_config.ryuk_docker_socket
        gid = self._socket_gid
        if gid is None:
            try:
                gid = os.stat(socket).st_gid
            except OSError as exc:
                raise ConfigError(f"cannot read the group of the docker socket {socket} ({exc.strerror}); "
                                  "pass docker_socket_gid= (the engine host's group of that socket)") from exc
        self.with_copy_into_container(self._worker_records(), RECORDS_PATH)
        self._volume = client.volumes.create(
            name=f"mlbridge-tc-{self.run_id}", driver="local",
            driver_opts={"type": "tmpfs", "device": "tmpfs",
                         "o": f"uid={_WORKER_UID},gid={_WORKER_UID},mode=0700,size={self._shared_size}"},
            labels={**labels, LABEL_SESSION_ID: SESSION_ID})
        shared = str(self._volume.attrs["Mountpoint"])
        self.state_dir = f"{shared}/state"
        self.scope = deployment_scope(self.state_dir)
        self.with_volume_mapping(self._volume.name, shared, "rw")
        self.with_volume_mapping(socket, ENGINE_SOCKET, "rw")
        # Socket directories go under TMPDIR (backends/unix.py): on the shared volume.
        self.with_env("TMPDIR", shared)
        self.with_env("DOCKER_HOST", f"unix://{ENGINE_SOCKET}")
        self._kwargs = {**self._kwargs, "group_add": [str(gid)]}

    def _worker_records(self) -> bytes:
        """The host's image records for the workers' images: the orchestrator checks each worker image against them."""
        wanted: dict[str, Any] = {}
        for name, entry in self.config["bridges"].items():
            tag = entry.get("image") or image_tag(name)
            if not tag.startswith("mlbridge/"):
                continue  # the backend checks only that such an image exists
            image_id = recorded_image_id(tag)
            if image_id is None:
                raise ConfigError(f"mlbridge has no record of image {tag} for bridge {name!r}; "
                                  f"run `mlbridge images build {name}`")
            wanted[tag] = {"image_id": image_id, "bridge": name}
        return json.dumps({"schema": 1, "images": wanted}, indent=2).encode()

    def stop(self, force: bool = True, delete_volume: bool = True) -> None:
        """Stop the orchestrator (SIGTERM: it removes its workers), then remove every worker
        still labelled with its scope, its container and the shared volume. Safe to call twice."""
        client = self._engine()
        container, self._container = self._container, None
        errors: list[docker.errors.DockerException] = []

        def attempt(step: Any, *args: Any, **kwargs: Any) -> None:
            try:
                step(*args, **kwargs)
            except docker.errors.NotFound:
                pass
            except docker.errors.DockerException as exc:
                errors.append(exc)

        if container is not None:
            attempt(container.stop, timeout=int(self.stop_grace_s))
        attempt(self._sweep, client)
        if container is not None:
            attempt(container.remove, force=force, v=delete_volume)
        attempt(self._remove_volume)
        super().stop(force, delete_volume)  # no container left: only closes the client
        if errors:
            raise errors[0]

    def _sweep(self, client: docker.DockerClient) -> None:
        """Remove this orchestrator's workers and networks that it did not remove itself."""
        if self.scope is None:
            return
        for worker in client.containers.list(all=True, filters={"label": f"{_SCOPE_LABEL}={self.scope}"}):
            log.warning("removing worker container %s that the orchestrator left behind", worker.name)
            with contextlib.suppress(docker.errors.NotFound):
                worker.remove(force=True)
        for network in client.networks.list(filters={"label": f"{_SCOPE_LABEL}={self.scope}"}):
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()

    def _remove_volume(self) -> None:
        volume, self._volume = self._volume, None
        if volume is not None:
            volume.remove(force=True)

    # -- use ------------------------------------------------------------------------------------

    def _engine(self) -> docker.DockerClient:
        return self.get_docker_client().client

    def get_address(self) -> str:
        """``host:port`` of the orchestrator's gRPC API on this machine."""
        host = self.get_container_host_ip()
        return f"{'127.0.0.1' if host == 'localhost' else host}:{self.get_exposed_port(GRPC_PORT)}"

    def get_client(self, token: str | None = None, *, timeout: float | None = None) -> MLBridge:
        """A Python client connected to the orchestrator; close it (or use ``with``).

        Args:
            token: bearer token of a tenant of the policy (none without a policy).
            timeout: default per-call timeout in seconds.
        """
        return MLBridge.connect(self.get_address(), token=token, timeout=timeout)

    @property
    def startup_seconds(self) -> float | None:
        """Seconds from the container's start to SERVING (None before)."""
        return self._health.seconds

    def worker_containers(self) -> list[Any]:
        """The worker containers on the engine (docker backend; none with the process backend)."""
        if self.scope is None:
            return []
        return list(self._engine().containers.list(all=True, filters={"label": f"{_SCOPE_LABEL}={self.scope}"}))

    def get_audit_log(self) -> str:
        """The audit log's text (after :meth:`with_audit_log`).

        Raises:
            ConfigError: the container has no audit log.
        """
        try:
            chunks, _ = self.get_wrapped_container().get_archive(AUDIT_LOG)
        except docker.errors.NotFound as exc:
            raise ConfigError("the mlbridge container has no audit log; use with_audit_log()") from exc
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
            member = tar.extractfile(tar.getmembers()[0])
            return member.read().decode() if member is not None else ""
