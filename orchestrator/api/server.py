"""The public gRPC server: MLBridge service, grpc health, server reflection."""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from orchestrator.proto import mlbridge_pb2, mlbridge_pb2_grpc
from orchestrator.service import Orchestrator

from .servicer import Authenticator, MLBridgeServicer, anonymous

log = logging.getLogger("mlbridge.server")


class PublicServer:
    """Owns the grpc.aio server in front of an :class:`Orchestrator`."""

    def __init__(self, orch: Orchestrator, address: str, authenticator: Authenticator = anonymous) -> None:
        self.orch = orch
        self.address = address
        max_bytes = orch.config.max_message_bytes
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.so_reuseport", 0),
        ])
        mlbridge_pb2_grpc.add_MLBridgeServicer_to_server(MLBridgeServicer(orch, authenticator), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (
            mlbridge_pb2.DESCRIPTOR.services_by_name["MLBridge"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self.server)
        self.port = self.server.add_insecure_port(address)
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
        log.info("mlbridge serving on %s (backend %s)", self.target, self.orch.backend.name)

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
