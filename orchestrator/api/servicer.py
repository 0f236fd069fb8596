"""``mlbridge.v1.MLBridge`` servicer: authenticate, convert, delegate, map errors.

Thin by design: a request is decoded (:mod:`.decode`), its caller
authenticated, its fields handed to the :class:`~orchestrator.edge.Gateway`
(or, for an un-namespaced legacy command, the DSPex facade), and the result
converted back (:mod:`.convert`). An :class:`MLBridgeError` becomes its gRPC
status with an ``ErrorInfo`` detail; anything else becomes INTERNAL with a
reference to the log line.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from orchestrator.compat.dspex import DSPexFacade
from orchestrator.edge import Gateway
from orchestrator.errors import grpc_code, to_rpc_status, wire_message
from orchestrator.observe.tracing import incoming_traceparent
from orchestrator.proto import mlbridge_pb2 as pb
from orchestrator.proto import mlbridge_pb2_grpc as pb_grpc
from orchestrator.service import Caller, new_call_id
from runtimes.wire.errors import InternalError, InvalidArgument, MLBridgeError
from runtimes.wire.metadata import AUTHORIZATION, TRACEPARENT

from . import convert
from .decode import Unparseable

log = logging.getLogger("mlbridge.api")

Authenticator = Callable[[str | None, str], Caller]


def anonymous(token: str | None, source: str) -> Caller:
    return Caller(source=source)


def _bearer(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The bearer token; the W3C ``traceparent`` the client sent goes to the call's trace on the way."""
    token = None
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION:
            scheme, _, rest = str(value).partition(" ")
            token = rest.strip() if scheme.lower() == "bearer" else None
        elif key == TRACEPARENT:
            incoming_traceparent.set(str(value)[:128])
    return token


async def _abort(context: grpc.aio.ServicerContext[Any, Any], err: MLBridgeError) -> None:
    status = to_rpc_status(err)
    await context.abort(grpc_code(err), wire_message(err),
                        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),))


def _internal(exc: BaseException) -> MLBridgeError:
    ref = uuid.uuid4().hex[:12]
    log.exception("internal error %s", ref, exc_info=exc)
    return InternalError(f"internal error (reference {ref}); see the orchestrator log")


def _begin(self: MLBridgeServicer, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
    caller = self.authenticate(context)
    if isinstance(request, Unparseable):
        raise InvalidArgument(request.reason)
    return caller


def unary(func: Callable[..., Any]) -> Callable[..., Any]:
    """Map MLBridgeError to its gRPC status; anything unknown becomes INTERNAL."""

    @functools.wraps(func)
    async def wrapper(self: MLBridgeServicer, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await func(self, request, context, _begin(self, request, context))
        except MLBridgeError as err:
            await _abort(context, err)
        except Exception as exc:  # noqa: BLE001
            await _abort(context, _internal(exc))

    return wrapper


def streaming(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(self: MLBridgeServicer, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            async for item in func(self, request, context, _begin(self, request, context)):
                yield item
        except MLBridgeError as err:
            await _abort(context, err)
        except Exception as exc:  # noqa: BLE001
            await _abort(context, _internal(exc))

    return wrapper


class MLBridgeServicer(pb_grpc.MLBridgeServicer):
    """The public API over a gateway.

    Args:
        gateway: the public operations.
        authenticator: bearer token and peer -> caller.
        dspex: serves the DSPex legacy commands; None refuses them like any unknown command.
    """

    def __init__(self, gateway: Gateway, authenticator: Authenticator = anonymous,
                 dspex: DSPexFacade | None = None) -> None:
        self.gateway = gateway
        self.authenticator = authenticator
        self.dspex = dspex

    def authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        return self.authenticator(_bearer(context), context.peer() or "")

    @unary
    async def ListBridges(self, request: pb.ListBridgesRequest, context: Any, caller: Caller) -> pb.ListBridgesReply:
        return convert.bridges(self.gateway.list_bridges(caller), self.gateway.default_bridge)

    @unary
    async def DescribeBridge(self, request: pb.DescribeBridgeRequest, context: Any, caller: Caller) -> pb.DescribeBridgeReply:
        return convert.describe(await self.gateway.describe(caller, request.bridge))

    @unary
    async def CreateResource(self, request: pb.CreateResourceRequest, context: Any, caller: Caller) -> pb.CreateResourceReply:
        rid, info = await self.gateway.create_resource(
            caller, request.bridge, request.type, request.config_json, dict(request.attachments),
            request.resource_id, request.call_id, convert.timeout_s(request.timeout_ms, context.time_remaining()))
        return pb.CreateResourceReply(resource_id=rid, info_json=info)

    @unary
    async def ExecuteResource(self, request: pb.ExecuteResourceRequest, context: Any, caller: Caller) -> pb.CallReply:
        reply = await self.gateway.execute_resource(
            caller, request.resource_id, request.inputs_json, dict(request.attachments), request.call_id,
            convert.timeout_s(request.timeout_ms, context.time_remaining()))
        return convert.call_reply(reply)

    @streaming
    async def ExecuteResourceStream(self, request: pb.ExecuteResourceRequest, context: Any,
                                    caller: Caller) -> AsyncIterator[pb.StreamEvent]:
        call_id = request.call_id or new_call_id()
        async for kind, payload in self.gateway.execute_resource_stream(
                caller, request.resource_id, request.inputs_json, dict(request.attachments), call_id,
                convert.timeout_s(request.timeout_ms, context.time_remaining())):
            yield convert.stream_event(call_id, kind, payload)

    @unary
    async def ListResources(self, request: pb.ListResourcesRequest, context: Any, caller: Caller) -> pb.ListResourcesReply:
        recs = self.gateway.list_resources(caller, request.bridge, request.type)
        return pb.ListResourcesReply(resources=[convert.resource(r) for r in recs])

    @unary
    async def DeleteResource(self, request: pb.DeleteResourceRequest, context: Any, caller: Caller) -> pb.DeleteResourceReply:
        return pb.DeleteResourceReply(deleted=await self.gateway.delete_resource(caller, request.resource_id))

    @unary
    async def Call(self, request: pb.CallRequest, context: Any, caller: Caller) -> pb.CallReply:
        timeout = convert.timeout_s(request.timeout_ms, context.time_remaining())
        if self.dspex is not None and self.dspex.handles(request.command):
            reply = await self.dspex.handle(caller, request.command, request.args_json,
                                            request.call_id or new_call_id(), timeout)
        else:
            reply = await self.gateway.call(caller, request.bridge, request.command, request.args_json,
                                            dict(request.attachments), request.call_id, timeout)
        return convert.call_reply(reply)

    @streaming
    async def CallStream(self, request: pb.CallRequest, context: Any, caller: Caller) -> AsyncIterator[pb.StreamEvent]:
        call_id = request.call_id or new_call_id()
        async for kind, payload in self.gateway.call_stream(
                caller, request.bridge, request.command, request.args_json, dict(request.attachments), call_id,
                convert.timeout_s(request.timeout_ms, context.time_remaining())):
            yield convert.stream_event(call_id, kind, payload)

    @unary
    async def Cancel(self, request: pb.CancelRequest, context: Any, caller: Caller) -> pb.CancelReply:
        return pb.CancelReply(found=await self.gateway.cancel(caller, request.call_id))

    @unary
    async def Answer(self, request: pb.AnswerRequest, context: Any, caller: Caller) -> pb.AnswerReply:
        return pb.AnswerReply(found=await self.gateway.answer(caller, request.call_id, request.request_id,
                                                              request.result_json, request.error))

    @unary
    async def GetStats(self, request: pb.GetStatsRequest, context: Any, caller: Caller) -> pb.GetStatsReply:
        since = request.usage_since_unix_ms / 1000 if request.usage_since_unix_ms > 0 else None
        return convert.stats(self.gateway.stats(caller, request.usage_tenant, since))
