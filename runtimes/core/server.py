"""The gRPC face of a runtime: ``mlbridge.runtime.v1.Runtime`` plus health.

Thin by design: messages are converted and handed to :class:`Dispatcher`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..wire.caps import DEFAULT_MAX_MESSAGE_BYTES, MAX_PROGRESS_MESSAGE_CHARS
from ..wire.errors import ConfigError, MLBridgeError, public_details
from ..wire.payload import dumps, encode_capped
from ..wire.proto import common_pb2 as common
from ..wire.proto import runtime_pb2 as pb
from ..wire.proto import runtime_pb2_grpc as pb_grpc
from .bridge import Bridge
from .dispatch import Dispatcher, Outcome
from .grants import ModelGrant
from .loader import load_bridge_class
from .watchdog import Watchdog, grace_from_env

log = logging.getLogger("mlbridge.runtime")


def _error(err: MLBridgeError, handler_stopped: bool = True) -> pb.Error:
    details = public_details(err)
    if not handler_stopped:
        details["handler_stopped"] = False
    return pb.Error(code=err.code, message=err.flat(), details_json=dumps(details) if details else "")


def _reply(call_id: str, out: Outcome) -> pb.CallReply:
    if out.error is not None:
        return pb.CallReply(call_id=call_id, ok=False, error=_error(out.error, out.handler_stopped),
                            metadata=out.metadata)
    return pb.CallReply(call_id=call_id, ok=True, result_json=out.result, attachments=out.attachments,
                        metadata=out.metadata)


def _ctx_fields(req: pb.CallRequest) -> dict[str, Any]:
    fields = {
        "call_id": req.call_id or uuid.uuid4().hex,
        "command": req.command,
        "tenant": req.tenant,
        "resource_id": req.resource_id,
        "resource_type": req.resource_type,
        "attachments": dict(req.attachments),
        "deadline_unix_ms": req.deadline_unix_ms,
        "resource_state_json": req.resource_state_json,
    }
    traceparent = req.traceparent
    if traceparent:  # W3C trace context: make_context makes the call a traced one (when sampled)
        fields["traceparent"] = traceparent
    return fields


class RuntimeServicer(pb_grpc.RuntimeServicer):
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher

    async def Describe(self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.DescribeReply:
        info = self.d.describe()
        return pb.DescribeReply(
            bridge=info["bridge"],
            framework=info["framework"],
            framework_version=info["framework_version"],
            commands=[
                common.CommandInfo(name=c["name"], description=c["description"],
                                   args_schema_json=dumps(c["schema"]), streaming=c["streaming"],
                                   retry_safe=c["retry_safe"])
                for c in info["commands"]
            ],
            resource_types=[
                common.ResourceTypeInfo(name=t["name"], description=t["description"],
                                        config_schema_json=dumps(t["schema"]), streaming=t["streaming"],
                                        retry_safe=t["retry_safe"], keeps_state=t["keeps_state"])
                for t in info["resource_types"]
            ],
            packages=info["packages"],
            runtime_version=info["runtime_version"],
            python_version=info["python_version"],
            required_secrets=info["required_secrets"],
        )

    async def Call(self, request: pb.CallRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.CallReply:
        fields = _ctx_fields(request)
        ctx = self.d.make_context(**fields)
        return _reply(fields["call_id"], await self.d.run(ctx, request.args_json))

    async def CallStream(self, request: pb.CallRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[pb.StreamEvent]:
        fields = _ctx_fields(request)
        cid = fields["call_id"]
        async for kind, payload in self.d.stream(fields, request.args_json):
            if kind == "chunk":
                try:
                    data = encode_capped(payload, self.d.max_reply_bytes, f"chunk of {request.command}")
                except MLBridgeError as err:
                    self.d.cancel(cid)
                    yield pb.StreamEvent(call_id=cid, final=_reply(cid, Outcome(error=err)))
                    return
                yield pb.StreamEvent(call_id=cid, chunk=common.Chunk(data_json=data))
            elif kind == "request":
                try:
                    data = encode_capped(payload["data"], self.d.max_reply_bytes, f"a {payload['kind']} request")
                except MLBridgeError as err:
                    self.d.cancel(cid)
                    yield pb.StreamEvent(call_id=cid, final=_reply(cid, Outcome(error=err)))
                    return
                yield pb.StreamEvent(call_id=cid, request=common.ClientRequest(
                    request_id=payload["request_id"], kind=payload["kind"], data_json=data))
            elif kind == "progress":
                step, total, message = payload
                yield pb.StreamEvent(call_id=cid, progress=common.Progress(
                    step=step, total=total, message=message[:MAX_PROGRESS_MESSAGE_CHARS]))
            else:
                yield pb.StreamEvent(call_id=cid, final=_reply(cid, payload))

    async def Session(self, request_iterator: AsyncIterator[pb.CallBatch],
                      context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Unary calls over one stream; replies that finish while one is being written go out together."""
        tasks: set[asyncio.Task[None]] = set()
        outbox: list[pb.CallReply] = []
        writing = False

        async def send(reply: pb.CallReply) -> None:
            nonlocal writing
            outbox.append(reply)
            if writing:
                return  # the writer in progress takes it with the next message
            writing = True
            try:
                while outbox:
                    batch = pb.ReplyBatch(replies=outbox[:])
                    outbox.clear()
                    await context.write(batch)
            finally:
                writing = False

        async def handle(req: pb.CallRequest) -> None:
            fields = _ctx_fields(req)
            outcome = await self.d.run(self.d.make_context(**fields), req.args_json)
            await send(_reply(fields["call_id"], outcome))

        try:
            async for batch in request_iterator:
                for req in batch.calls:
                    if self.d.is_inline(req.command):
                        await handle(req)  # never blocks: no task needed
                        continue
                    task = asyncio.ensure_future(handle(req))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()

    async def Cancel(self, request: pb.CancelRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.CancelReply:
        return pb.CancelReply(found=self.d.cancel(request.call_id))

    async def Answer(self, request: common.AnswerRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> common.AnswerReply:
        try:
            found = self.d.answer(request.call_id, request.request_id, request.result_json, request.error)
        except MLBridgeError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, err.flat())
        return common.AnswerReply(found=found)

    async def Configure(self, request: pb.ConfigureRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.ConfigureReply:
        try:
            models = [ModelGrant(m.name, m.hash, Path(m.path), dict(m.files), m.size_bytes) for m in request.models]
            self.d.configure(request.tenant, dict(request.secrets), dict(request.env), models, request.export_dir)
        except MLBridgeError as err:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, err.message)
        return pb.ConfigureReply()


def message_options(max_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
    ]


def tls_server_credentials(tls_dir: str) -> grpc.ServerCredentials:
    """Server credentials from a tcp-mtls worker directory: this worker's pair, clients from the client CA.

    Raises:
        ConfigError: a file is missing or unreadable.
    """
    files = {}
    for name in ("worker.crt", "worker.key", "client-ca.crt"):
        try:
            with open(os.path.join(tls_dir, name), "rb") as fh:
                files[name] = fh.read()
        except OSError as exc:
            raise ConfigError(f"tls directory {tls_dir}: cannot read {name} ({exc.strerror})") from None
    return grpc.ssl_server_credentials([(files["worker.key"], files["worker.crt"])],
                                       root_certificates=files["client-ca.crt"], require_client_auth=True)


async def serve(bridge_spec: str | type[Bridge], address: str, *, max_message_bytes: int | None = None,
                threads: int | None = None, ready: asyncio.Event | None = None, tls_dir: str | None = None) -> None:
    """Load a bridge and serve it on ``address`` (``unix:///path`` or ``host:port``) until SIGTERM.

    With ``tls_dir`` it serves TLS with ``worker.crt``/``worker.key`` there and requires a client
    certificate from ``client-ca.crt`` (the orchestrator's tcp-mtls channel).
    """
    max_bytes = max_message_bytes or int(os.environ.get("MLBRIDGE_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES))
    cls = load_bridge_class(bridge_spec) if isinstance(bridge_spec, str) else bridge_spec
    bridge = cls()
    bridge.setup()
    # What setup imported (a framework: hundreds of thousands of objects) lives as long as the
    # worker: move it out of the collector's view, so no collection pauses a call to scan it.
    gc.collect()
    gc.freeze()
    dispatcher = Dispatcher(bridge, max_message_bytes=max_bytes,
                            threads=threads or int(os.environ.get("MLBRIDGE_RUNTIME_THREADS", "8")))
    watchdog = Watchdog(grace_from_env())
    server = grpc.aio.server(options=message_options(max_bytes), interceptors=[watchdog])
    pb_grpc.add_RuntimeServicer_to_server(RuntimeServicer(dispatcher), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if tls_dir:
        bound = server.add_secure_port(address, tls_server_credentials(tls_dir))
    else:
        bound = server.add_insecure_port(address)
    if bound == 0 and not address.startswith("unix"):
        raise OSError(f"cannot listen on {address}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(bridge.name, health_pb2.HealthCheckResponse.SERVING)
    log.info("runtime for bridge %r serving on %s", bridge.name, address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    if ready is not None:
        ready.set()
    watch = loop.create_task(watchdog.run(stop))
    try:
        await stop.wait()
    finally:
        watch.cancel()
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace=2.0)
        dispatcher.executor.shutdown(wait=False, cancel_futures=True)
