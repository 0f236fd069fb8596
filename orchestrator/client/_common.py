"""What the sync and async clients share: requests, decoding, errors."""

from __future__ import annotations

import json
import math
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.trace import get_current_span as _current_span

from orchestrator.errors import from_grpc_error
from orchestrator.proto import mlbridge_pb2 as pb
from runtimes.wire.caps import DEFAULT_MAX_MESSAGE_BYTES
from runtimes.wire.errors import InvalidArgument, MLBridgeError
from runtimes.wire.metadata import AUTHORIZATION, TRACEPARENT
from runtimes.wire.metadata import DEPRECATED as DEPRECATED_KEY
from runtimes.wire.payload import dumps as _dumps

__all__ = ["DEFAULT_ADDRESS", "DEFAULT_MAX_MESSAGE_BYTES", "CallResult", "Event"]

DEFAULT_ADDRESS = "127.0.0.1:50051"


@dataclass
class CallResult:
    """A reply with everything it carries."""

    call_id: str
    result: Any
    attachments: dict[str, bytes] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Event:
    """One event of a stream: ``kind`` is "chunk", "progress", "request" or "result".

    A "request" is a question the running call puts to the client (a client
    tool to run): ``data`` is ``{"request_id", "kind", "data"}``; answer it with
    ``answer(call_id, request_id, result=...)`` while the stream goes on.
    """

    kind: str
    call_id: str
    data: Any = None
    step: int = 0
    total: int = 0
    message: str = ""
    attachments: dict[str, bytes] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def credentials(ca: str | None, cert: str | None, key: str | None) -> grpc.ChannelCredentials | None:
    """TLS channel credentials from PEM files (None: plaintext). cert and key together make it mTLS."""
    if not (ca or cert or key):
        return None
    if bool(cert) != bool(key):
        raise InvalidArgument("tls_cert and tls_key go together")

    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None

    return grpc.ssl_channel_credentials(root_certificates=read(ca), private_key=read(key),
                                        certificate_chain=read(cert))


def open_channel(module: Any, address: str, max_bytes: int, tls_ca: str | None, tls_cert: str | None,
                 tls_key: str | None) -> Any:
    """A plaintext or TLS channel from ``module`` (``grpc`` or ``grpc.aio``)."""
    options = channel_options(max_bytes)
    creds = credentials(tls_ca, tls_cert, tls_key)
    if creds is None:
        return module.insecure_channel(address, options=options)
    return module.secure_channel(address, creds, options=options)


#: Reconnect backoff bounds (ms): gRPC's default grows to 120 s, so a client (a long-lived port) that saw its
#: orchestrator down would go on answering UNAVAILABLE for up to two minutes after it came back.
RECONNECT_BACKOFF_MS = (100, 2000)


def channel_options(max_bytes: int) -> list[tuple[str, Any]]:
    first, most = RECONNECT_BACKOFF_MS
    return [("grpc.max_receive_message_length", max_bytes), ("grpc.max_send_message_length", max_bytes),
            ("grpc.initial_reconnect_backoff_ms", first), ("grpc.min_reconnect_backoff_ms", first),
            ("grpc.max_reconnect_backoff_ms", most)]


def metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return ((AUTHORIZATION, f"Bearer {token}"),) if token else None


def call_metadata(fixed: tuple[tuple[str, str], ...] | None) -> tuple[tuple[str, str], ...] | None:
    """``fixed`` (the token), plus the W3C ``traceparent`` of the caller's current OpenTelemetry span, if
    any: the call's trace in the orchestrator then joins the caller's."""
    span = _current_span().get_span_context()
    if not span.is_valid:
        return fixed
    parent = (TRACEPARENT, f"00-{span.trace_id:032x}-{span.span_id:016x}-{int(span.trace_flags) & 0xFF:02x}")
    return (*(fixed or ()), parent)


def dumps(value: Any, what: str) -> str:
    """A dict as JSON text for a request ("" for None).

    Raises:
        InvalidArgument: not a dict, or not JSON-serialisable.
    """
    if value is None:
        return ""
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a dict, got {type(value).__name__}")
    try:
        return _dumps(value)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{what} is {exc}") from None


def loads(data: str) -> Any:
    """JSON text from a reply; None when empty."""
    return json.loads(data) if data else None


def answer_request(call_id: str, request_id: str, result: Any, error: str | None) -> pb.AnswerRequest:
    """The answer to a request event: ``result`` as JSON, or ``error`` (a message) when it could not be answered.

    Raises:
        InvalidArgument: ``result`` is not JSON-serialisable.
    """
    if error:
        return pb.AnswerRequest(call_id=call_id, request_id=request_id, error=str(error))
    try:
        text = _dumps(result)
    except InvalidArgument as exc:
        raise InvalidArgument(f"the answer to request {request_id} is {exc}") from None
    return pb.AnswerRequest(call_id=call_id, request_id=request_id, result_json=text)


def call_id(given: str | None) -> str:
    return given or uuid.uuid4().hex


# The server enforces a call's deadline (sent as timeout_ms) and answers with
# the specific error; the transport deadline only guards against a server
# that never answers, so it runs this much longer.
TRANSPORT_SLACK_S = 5.0


def transport_deadline(request: Any, timeout: float | None) -> float | None:
    """Put ``timeout`` in the request (when it has a timeout_ms field) and return the transport deadline."""
    if not timeout:
        return None
    if hasattr(request, "timeout_ms") and not request.timeout_ms:
        request.timeout_ms = int(timeout * 1000)
    return timeout + TRANSPORT_SLACK_S


def timeout_ms(timeout: float | None) -> int:
    return int(timeout * 1000) if timeout else 0


def result(reply: pb.CallReply, stacklevel: int = 3) -> CallResult:
    """Decode a reply; a deprecated command's reply also raises a DeprecationWarning."""
    if reply.metadata.get(DEPRECATED_KEY):
        warnings.warn(reply.metadata[DEPRECATED_KEY], DeprecationWarning, stacklevel=stacklevel)
    return CallResult(reply.call_id, loads(reply.result_json), dict(reply.attachments), dict(reply.metadata))


def event(ev: pb.StreamEvent) -> Event:
    kind = ev.WhichOneof("event")
    if kind == "chunk":
        return Event("chunk", ev.call_id, loads(ev.chunk.data_json))
    if kind == "progress":
        p = ev.progress
        return Event("progress", ev.call_id, None, p.step, p.total, p.message)
    if kind == "request":
        r = ev.request
        return Event("request", ev.call_id, {"request_id": r.request_id, "kind": r.kind, "data": loads(r.data_json)})
    f = ev.final
    return Event("result", ev.call_id, loads(f.result_json), attachments=dict(f.attachments),
                 metadata=dict(f.metadata))


def resource_dict(r: pb.Resource) -> dict[str, Any]:
    return {"resource_id": r.resource_id, "bridge": r.bridge, "type": r.type,
            "created_unix_ms": r.created_unix_ms, "info": loads(r.info_json) or {}}


def describe_dict(d: pb.DescribeBridgeReply) -> dict[str, Any]:
    return {
        "bridge": d.bridge, "framework": d.framework, "framework_version": d.framework_version,
        "commands": [{"name": c.name, "description": c.description, "schema": loads(c.args_schema_json) or {},
                      "streaming": c.streaming, "retry_safe": c.retry_safe} for c in d.commands],
        "resource_types": [{"name": t.name, "description": t.description,
                            "schema": loads(t.config_schema_json) or {}, "streaming": t.streaming,
                            "retry_safe": t.retry_safe, "keeps_state": t.keeps_state}
                           for t in d.resource_types],
        "packages": dict(d.packages), "runtime_version": d.runtime_version, "python_version": d.python_version,
    }


def bridge_dicts(reply: pb.ListBridgesReply) -> list[dict[str, Any]]:
    return [{"name": b.name, "framework": b.framework, "image": b.image, "pool_size": b.pool_size,
             "workers_ready": b.workers_ready, "is_default": b.is_default, "backend": b.backend}
            for b in reply.bridges]


def stats_request(usage_tenant: str = "", usage_since: float | None = None) -> pb.GetStatsRequest:
    """A GetStats request asking for ``usage_tenant``'s usage ("" for every tenant the caller may see)
    since Unix time ``usage_since`` (None: since records began).

    Raises:
        InvalidArgument: ``usage_since`` is not a finite number >= 0, or ``usage_tenant`` is not a string.
    """
    if not isinstance(usage_tenant, str):
        raise InvalidArgument(f"usage_tenant must be a string, got {type(usage_tenant).__name__}")
    since_ms = 0
    if usage_since is not None:
        if (isinstance(usage_since, bool) or not isinstance(usage_since, int | float)
                or not math.isfinite(usage_since) or usage_since < 0):
            raise InvalidArgument(f"usage_since must be Unix seconds (a finite number >= 0), got {usage_since!r}")
        since_ms = math.floor(usage_since * 1000)
    return pb.GetStatsRequest(usage_tenant=usage_tenant, usage_since_unix_ms=since_ms)


def stats_dict(reply: pb.GetStatsReply) -> dict[str, Any]:
    return loads(reply.stats_json) or {}


def translate(exc: grpc.RpcError) -> MLBridgeError:
    return from_grpc_error(exc)
