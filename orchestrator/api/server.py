"""The public gRPC server: MLBridge service, grpc health (overall and per bridge), server reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection

from orchestrator.app import App
from orchestrator.config import TLSConfig
from orchestrator.proto import mlbridge_pb2
from runtimes.wire.errors import ConfigError

from .decode import add_service
from .servicer import MLBridgeServicer

log = logging.getLogger("mlbridge.server")

#: How often the per-bridge health statuses are brought up to date.
HEALTH_EVERY_S = 1.0
#: The health service name of bridge ``name``.
BRIDGE_HEALTH = "mlbridge.bridge.{}"


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    """TLS credentials; with a client CA, a client without a certificate it signed is refused in the handshake."""
    try:
        key, cert = tls.key.read_bytes(), tls.cert.read_bytes()
        ca = tls.client_ca.read_bytes() if tls.client_ca else None
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


class PublicServer:
    """Owns the grpc.aio server in front of an :class:`~orchestrator.app.App`.

    The standard health service answers ``""`` and ``mlbridge.v1.MLBridge``
    (the orchestrator serves) and ``mlbridge.bridge.<name>`` per bridge: the
    pool's :meth:`~orchestrator.pool.Pool.health` (its workers start, its
    health hook passes), brought up to date every ``HEALTH_EVERY_S``.
    """

    def __init__(self, app: App, address: str) -> None:
        self.app = app
        self.address = address
        max_bytes = app.config.max_message_bytes
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.so_reuseport", 0),
        ])
        # With metrics on, every service is registered through a stand-in that measures its methods.
        grpc_metrics = app.observability.grpc
        services: Any = grpc_metrics.registrar(self.server) if grpc_metrics is not None else self.server
        self._health_task: asyncio.Task[None] | None = None
        self._bridge_status: dict[str, int] = {}
        servicer = MLBridgeServicer(app.gateway, app.authenticate, app.dspex)
        self.refused = add_service(servicer, services, mlbridge_pb2.DESCRIPTOR.services_by_name["MLBridge"],
                                   mlbridge_pb2)
        self.health = health.aio.HealthServicer()
        # Through the same tolerant decoding: garbage to the health service is INVALID_ARGUMENT, counted, no traceback.
        health_service: Any = health_pb2.DESCRIPTOR.services_by_name["Health"]
        add_service(self.health, services, health_service, health_pb2,
                    self.refused, guard=True)
        names = (
            mlbridge_pb2.DESCRIPTOR.services_by_name["MLBridge"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, services)
        tls = app.config.tls
        if tls is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, server_credentials(tls))
        if self.port == 0 and not address.startswith("unix"):
            raise OSError(f"cannot listen on {address}")

    @property
    def target(self) -> str:
        """The address a client dials (with the real port when 0 was asked)."""
        if self.address.startswith("unix"):
            return self.address
        host = self.address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("mlbridge.v1.MLBridge", health_pb2.HealthCheckResponse.SERVING)
        await self.update_bridge_health()
        self._health_task = asyncio.get_running_loop().create_task(self._watch_bridges())
        log.info("mlbridge serving on %s (backend %s)", self.target, self.app.backend.name)

    async def update_bridge_health(self) -> None:
        """Set each bridge's health status from its pool; a change is logged with the reason."""
        for name, pool in self.app.service.pools.items():
            serving, why = pool.health()
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            if self._bridge_status.get(name) != status:
                if name in self._bridge_status or not serving:
                    log.warning("bridge %s is %s%s", name, "serving" if serving else "NOT serving",
                                f": {why}" if why else "")
                self._bridge_status[name] = status
                await self.health.set(BRIDGE_HEALTH.format(name), status)

    async def _watch_bridges(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_EVERY_S)
            try:
                await self.update_bridge_health()
            except Exception as exc:  # noqa: BLE001 - health reporting must go on
                log.warning("bridge health update failed: %s", exc)

    async def stop(self, grace: float = 5.0) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.refused.flush()  # the last window's count of requests that did not parse
