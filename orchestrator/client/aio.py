"""The asyncio Python client; same methods as :class:`MLBridge`, awaitable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from orchestrator.proto import mlbridge_pb2 as pb
from orchestrator.proto import mlbridge_pb2_grpc as pb_grpc

from . import _common as c


class AsyncMLBridge:
    """``async with AsyncMLBridge.connect(addr) as mb: await mb.call(...)``."""

    def __init__(self, channel: grpc.aio.Channel, token: str | None = None, timeout: float | None = None) -> None:
        self._channel = channel
        self._stub = pb_grpc.MLBridgeStub(channel)
        self._md = c.metadata(token)
        self.timeout = timeout

    @classmethod
    def connect(cls, address: str = c.DEFAULT_ADDRESS, token: str | None = None, *, timeout: float | None = None,
                max_message_bytes: int = c.DEFAULT_MAX_MESSAGE_BYTES, tls_ca: str | None = None,
                tls_cert: str | None = None, tls_key: str | None = None) -> AsyncMLBridge:
        return cls(c.open_channel(grpc.aio, address, max_message_bytes, tls_ca, tls_cert, tls_key), token,
                   timeout)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncMLBridge:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return await method(request, metadata=c.call_metadata(self._md),
                              timeout=c.transport_deadline(request, timeout or self.timeout))
        except grpc.RpcError as exc:
            raise c.translate(exc) from None

    async def _stream(self, method: Any, request: Any, timeout: float | None) -> AsyncIterator[c.Event]:
        try:
            async for ev in method(request, metadata=c.call_metadata(self._md),
                                  timeout=c.transport_deadline(request, timeout or self.timeout)):
                yield c.event(ev)
        except grpc.RpcError as exc:
            raise c.translate(exc) from None

    async def list_bridges(self) -> list[dict[str, Any]]:
        return c.bridge_dicts(await self._unary(self._stub.ListBridges, pb.ListBridgesRequest()))

    async def describe(self, bridge: str = "") -> dict[str, Any]:
        return c.describe_dict(await self._unary(self._stub.DescribeBridge, pb.DescribeBridgeRequest(bridge=bridge)))

    async def create_resource(self, bridge: str, type: str, config: dict[str, Any] | None = None, *,
                              resource_id: str | None = None, attachments: dict[str, bytes] | None = None,
                              timeout: float | None = None) -> str:
        req = pb.CreateResourceRequest(bridge=bridge, type=type, config_json=c.dumps(config, "config"),
                                       attachments=attachments or {}, resource_id=resource_id or "",
                                       timeout_ms=c.timeout_ms(timeout))
        return str((await self._unary(self._stub.CreateResource, req, timeout)).resource_id)

    async def execute_resource(self, resource_id: str, inputs: dict[str, Any] | None = None, *,
                               attachments: dict[str, bytes] | None = None, call_id: str | None = None,
                               timeout: float | None = None) -> Any:
        req = pb.ExecuteResourceRequest(resource_id=resource_id, inputs_json=c.dumps(inputs, "inputs"),
                                        attachments=attachments or {}, call_id=c.call_id(call_id),
                                        timeout_ms=c.timeout_ms(timeout))
        return c.result(await self._unary(self._stub.ExecuteResource, req, timeout)).result

    def stream_resource(self, resource_id: str, inputs: dict[str, Any] | None = None, *,
                        attachments: dict[str, bytes] | None = None, call_id: str | None = None,
                        timeout: float | None = None) -> AsyncIterator[c.Event]:
        req = pb.ExecuteResourceRequest(resource_id=resource_id, inputs_json=c.dumps(inputs, "inputs"),
                                        attachments=attachments or {}, call_id=c.call_id(call_id),
                                        timeout_ms=c.timeout_ms(timeout))
        return self._stream(self._stub.ExecuteResourceStream, req, timeout)

    async def list_resources(self, bridge: str | None = None, type: str | None = None) -> list[dict[str, Any]]:
        reply = await self._unary(self._stub.ListResources,
                                  pb.ListResourcesRequest(bridge=bridge or "", type=type or ""))
        return [c.resource_dict(r) for r in reply.resources]

    async def delete_resource(self, resource_id: str) -> bool:
        return bool((await self._unary(self._stub.DeleteResource,
                                       pb.DeleteResourceRequest(resource_id=resource_id))).deleted)

    async def call(self, bridge: str, command: str, args: dict[str, Any] | None = None, *,
                   attachments: dict[str, bytes] | None = None, call_id: str | None = None,
                   timeout: float | None = None) -> Any:
        req = pb.CallRequest(bridge=bridge, command=command, args_json=c.dumps(args, "args"),
                             attachments=attachments or {}, call_id=c.call_id(call_id),
                             timeout_ms=c.timeout_ms(timeout))
        return c.result(await self._unary(self._stub.Call, req, timeout)).result

    def call_stream(self, bridge: str, command: str, args: dict[str, Any] | None = None, *,
                    attachments: dict[str, bytes] | None = None, call_id: str | None = None,
                    timeout: float | None = None) -> AsyncIterator[c.Event]:
        req = pb.CallRequest(bridge=bridge, command=command, args_json=c.dumps(args, "args"),
                             attachments=attachments or {}, call_id=c.call_id(call_id),
                             timeout_ms=c.timeout_ms(timeout))
        return self._stream(self._stub.CallStream, req, timeout)

    async def cancel(self, call_id: str) -> bool:
        return bool((await self._unary(self._stub.Cancel, pb.CancelRequest(call_id=call_id))).found)

    async def answer(self, call_id: str, request_id: str, result: Any = None, *, error: str | None = None) -> bool:
        """Answer a ``request`` event of a streaming call; whether the call was still waiting for it."""
        req = c.answer_request(call_id, request_id, result, error)
        return bool((await self._unary(self._stub.Answer, req)).found)

    async def stats(self, usage_tenant: str = "", usage_since: float | None = None) -> dict[str, Any]:
        """Orchestrator stats; ``stats["usage"]`` holds ``usage_tenant``'s usage ("": every tenant you may
        see) since Unix time ``usage_since`` (None: since records began), from servers that keep it."""
        return c.stats_dict(await self._unary(self._stub.GetStats, c.stats_request(usage_tenant, usage_since)))
