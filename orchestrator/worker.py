"""One running runtime as the orchestrator sees it: a gRPC channel plus state."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtimes.wire.errors import DeadlineExceeded, Unavailable, error_from_wire
from runtimes.wire.proto import runtime_pb2 as rpb
from runtimes.wire.proto import runtime_pb2_grpc as rpb_grpc

from .backends.base import Backend, WorkerHandle
from .session import SessionGroup

#: While waiting for a worker to become ready, how often the backend is asked whether it died.
ALIVE_CHECK_S = 0.1


def channel_options(max_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.enable_retries", 0),
        # A worker's socket appears within milliseconds of its start; gRPC's
        # default reconnect backoff (about 1 s) would idle the readiness probe.
        ("grpc.initial_reconnect_backoff_ms", 20),
        ("grpc.min_reconnect_backoff_ms", 20),
        ("grpc.max_reconnect_backoff_ms", 250),
    ]


@dataclass
class Worker:
    """A worker of one bridge; tenant-neutral until claimed, then that tenant's for life."""

    handle: WorkerHandle
    max_message_bytes: int
    #: starting, ready, draining (no new calls; recycled or stopping), failing (a call saw it break: no new
    #: calls while the backend says how it ended), dead
    state: str = "starting"
    tenant: str = ""
    calls: int = 0
    errors: int = 0
    in_flight: int = 0
    started_at: float = field(default_factory=time.monotonic)
    ready_after_s: float = 0.0
    #: How it was started: "cold" (from nothing) or "held" (a held worker released); "spare" once
    #: a claim found it ready.
    origin: str = ""
    last_used: float = field(default_factory=time.monotonic)
    channel: grpc.aio.Channel | None = None
    stub: rpb_grpc.RuntimeStub | None = None
    death: str = ""
    session: SessionGroup | None = None
    #: Whether the tenant's lost resources were re-created here (done once, on its first use).
    restored: bool = False
    restore_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: How it ended, looked up once however many of its calls failed (:mod:`orchestrator.calls`).
    ending: asyncio.Future[Any] | None = None
    #: Told the reply metadata of the orchestrator's own calls (:meth:`call`): the bridge's metrics.
    on_metadata: Callable[[Worker, Mapping[str, str]], None] | None = None
    #: Usage figures already accounted (observability keeps them here between samples).
    accounted: dict[str, int] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.handle.worker_id

    @property
    def bridge(self) -> str:
        return self.handle.bridge

    def connect(self) -> None:
        self.channel = self.handle.channel.open(channel_options(self.max_message_bytes))
        self.stub = rpb_grpc.RuntimeStub(self.channel)

    async def wait_ready(self, backend: Backend, timeout: float) -> None:
        """Wait strategy: poll grpc health over the control channel until SERVING.

        Looks for the socket every few milliseconds (backing off to 10 ms),
        then asks grpc health; gives up at ``timeout`` or as soon as the
        backend reports the worker exited (asked every ``ALIVE_CHECK_S``).

        Raises:
            Unavailable: the worker exited or did not become ready in time;
                the message carries the tail of its log.
        """
        deadline = time.monotonic() + timeout
        # The socket file appears when the runtime's server binds, moments before it serves: a
        # stat every few milliseconds sees it at once; asking the backend whether the worker
        # died (an engine round trip for docker) is kept to every ALIVE_CHECK_S.
        delay = 0.002
        alive_check = time.monotonic() + ALIVE_CHECK_S
        # First wait for the endpoint itself (a unix socket's file): dialling a
        # missing one would put the channel into reconnect backoff.
        while not self.handle.channel.present():
            if time.monotonic() >= alive_check:
                await self._check_alive(backend, deadline, timeout)
                alive_check = time.monotonic() + ALIVE_CHECK_S
            await asyncio.sleep(delay)
            delay = min(delay * 1.2, 0.01)
        if self.channel is None:
            self.connect()
        assert self.channel is not None
        health: Any = health_pb2_grpc.HealthStub(self.channel)
        delay = 0.002
        while True:
            self.handle.channel.check()
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=max(0.05, min(1.0, deadline - time.monotonic())))
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    assert self.stub is not None
                    self.session = SessionGroup(self.stub)
                    self.state = "ready"
                    self.ready_after_s = time.monotonic() - self.started_at
                    return
            except grpc.aio.AioRpcError:
                pass
            await self._check_alive(backend, deadline, timeout)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.05)

    async def _check_alive(self, backend: Backend, deadline: float, timeout: float) -> None:
        info = await backend.exit_info(self.handle)
        if info is not None:
            self.state = "dead"
            raise Unavailable(
                f"worker {self.id} of bridge {self.bridge!r} exited before it was ready: "
                f"{info.describe()}\n{backend.log_tail(self.handle)}"
            )
        if time.monotonic() >= deadline:
            raise Unavailable(
                f"worker {self.id} of bridge {self.bridge!r} was not ready within {timeout:.0f}s\n"
                f"{backend.log_tail(self.handle)}"
            )

    async def healthy(self, timeout: float) -> bool:
        """One grpc health probe over the control channel."""
        if self.channel is None:
            return False
        try:
            health: Any = health_pb2_grpc.HealthStub(self.channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def configure(self, tenant: str, secrets: dict[str, str], env: dict[str, str] | None = None,
                        models: Sequence[rpb.ModelGrant] = (), export_dir: str = "") -> None:
        """Hand the worker to ``tenant`` with its secrets, proxy ``env`` (HTTPS_PROXY and the like) and models."""
        assert self.stub is not None
        await self.stub.Configure(rpb.ConfigureRequest(tenant=tenant, secrets=secrets, env=env or {},
                                                       models=list(models), export_dir=export_dir), timeout=10)
        self.tenant = tenant

    async def call(self, command: str, args: dict[str, Any], timeout: float = 120.0) -> Any:
        """One housekeeping call of the orchestrator's own (no tenant): its decoded result.

        Raises:
            MLBridgeError: the runtime's error, typed; DeadlineExceeded after ``timeout``.
        """
        assert self.session is not None
        req = rpb.CallRequest(call_id=uuid.uuid4().hex, command=command, args_json=json.dumps(args),
                              deadline_unix_ms=int((time.time() + timeout) * 1000))
        try:
            reply = await asyncio.wait_for(self.session.request(req), timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"{command} on worker {self.id} took over {timeout:g}s") from None
        if reply.metadata and self.on_metadata is not None:
            self.on_metadata(self, reply.metadata)
        if not reply.ok:
            raise error_from_wire(reply.error.code, reply.error.message, reply.error.details_json)
        return json.loads(reply.result_json) if reply.result_json else None

    async def describe(self) -> rpb.DescribeReply:
        assert self.stub is not None
        reply: rpb.DescribeReply = await self.stub.Describe(rpb.DescribeRequest(), timeout=30)
        return reply

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "worker_id": self.id,
            "bridge": self.bridge,
            "state": self.state,
            "tenant": self.tenant,
            "calls": self.calls,
            "errors": self.errors,
            "in_flight": self.in_flight,
            "backend": self.handle.backend,
            "image_id": self.handle.image_id,
            "ready_after_ms": round(self.ready_after_s * 1000, 1),
            "origin": self.origin,
        }
