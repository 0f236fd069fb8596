"""Readiness of an orchestrator's container: the gRPC health service says SERVING.

Not a sleep and not a log line: the standard ``grpc.health.v1`` service the
orchestrator serves answers ``""`` SERVING once its pools have started, and
``mlbridge.bridge.<name>`` per bridge. A container that exits while we wait
fails at once; one that never answers fails at the timeout. Either way the
error carries the container's logs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from testcontainers.core.waiting_utils import WaitStrategy, WaitStrategyTarget

from runtimes.wire.errors import Unavailable

__all__ = ["GrpcHealthWaitStrategy", "LOG_TAIL_CHARS"]

#: How much of the container's output a startup error carries.
LOG_TAIL_CHARS = 6000
_SERVING = health_pb2.HealthCheckResponse.ServingStatus.Name(health_pb2.HealthCheckResponse.SERVING)


def _logs(container: WaitStrategyTarget) -> str:
    try:
        out, err = container.get_logs()
    except Exception as exc:  # noqa: BLE001 - the error being reported matters more
        return f"(logs unavailable: {exc})"
    text = (out + err).decode(errors="replace")
    return text[-LOG_TAIL_CHARS:] or "(no output)"


class GrpcHealthWaitStrategy(WaitStrategy):
    """Wait until the health service reports SERVING for ``""`` and every named service.

    Args:
        port: the container port the gRPC server listens on.
        services: further health service names that must be SERVING
            (``mlbridge.bridge.mock`` and so on).
    """

    def __init__(self, port: int, services: Sequence[str] = ()) -> None:
        super().__init__()
        self.port = port
        self.services = ["", *services]
        self._poll_interval = 0.2
        self._startup_timeout = 120.0
        #: Seconds from the first poll to SERVING, once ready.
        self.seconds: float | None = None

    def _status(self, address: str) -> dict[str, str]:
        out: dict[str, str] = {}
        with grpc.insecure_channel(address) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            for service in self.services:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2.0)
                    out[service] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.RpcError as exc:
                    out[service] = exc.code().name if isinstance(exc, grpc.Call) else "UNAVAILABLE"
        return out

    def wait_until_ready(self, container: WaitStrategyTarget) -> None:
        """Poll the health service until every service is SERVING.

        Raises:
            Unavailable: the container exited, or did not become SERVING within
                the startup timeout; the message ends with its logs.
        """
        started = time.monotonic()
        deadline = started + self._startup_timeout
        last: dict[str, str] = {}
        while True:
            container.reload()
            if container.status in ("exited", "dead"):
                code = container.get_wrapped_container().attrs.get("State", {}).get("ExitCode")
                raise Unavailable(f"the mlbridge container exited (status {code}) before serving; its logs:\n"
                                  f"{_logs(container)}", details={"exit_code": code})
            if container.status == "running":
                try:
                    address = f"{container.get_container_host_ip()}:{container.get_exposed_port(self.port)}"
                    last = self._status(address)
                except Exception as exc:  # noqa: BLE001 - port not mapped yet and the like: poll again
                    last = {"": f"no answer ({exc})"}
                if all(last.get(s) == _SERVING for s in self.services):
                    self.seconds = time.monotonic() - started
                    return
            if time.monotonic() >= deadline:
                states = ", ".join(f"{s or '(overall)'}: {v}" for s, v in last.items()) or "no answer"
                raise Unavailable(f"the mlbridge container did not report SERVING within "
                                  f"{self._startup_timeout:.0f} s ({states}); its logs:\n{_logs(container)}",
                                  details={"health": last})
            time.sleep(self._poll_interval)
