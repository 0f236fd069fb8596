"""The public gRPC server: MLBridge service, grpc health, server reflection."""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from orchestrator.app import App
from orchestrator.config import TLSConfig
from orchestrator.proto import mlbridge_pb2
from runtimes.wire.errors import ConfigError

from .decode import add_service
from .servicer import MLBridgeServicer

log = logging.getLogger("mlbridge.server")


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    """TLS credentials; with a client CA, a client without a certificate it signed is refused in the handshake."""
    try:
        key, cert = tls.key.read_bytes(), tls.cert.read_bytes()
        ca = tls.client_ca.read_bytes() if tls.client_ca else None
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


class PublicServer:
    """Owns the grpc.aio server in front of an :class:`~orchestrator.app.App`."""

    def __init__(self, app: App, address: str) -> None:
        self.app = app
        self.address = address
        max_bytes = app.config.max_message_bytes
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.so_reuseport", 0),
        ])
        servicer = MLBridgeServicer(app.gateway, app.authenticate, app.dspex)
        add_service(servicer, self.server, mlbridge_pb2.DESCRIPTOR.services_by_name["MLBridge"], mlbridge_pb2)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (
            mlbridge_pb2.DESCRIPTOR.services_by_name["MLBridge"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self.server)
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
        log.info("mlbridge serving on %s (backend %s)", self.target, self.app.backend.name)

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
