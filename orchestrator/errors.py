"""mlbridge errors as gRPC statuses, and back (the table itself is the wire kernel's).

Servers turn an :class:`MLBridgeError` into a gRPC status with a
``google.rpc.ErrorInfo`` detail (reason = mlbridge code, metadata = details)
so that any gRPC client sees a standard status and rich details; the Python
client turns that back into the most specific exception class.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from runtimes.wire.errors import (
    GRPC_STATUS,
    InternalError,
    MLBridgeError,
    error_class,
    public_details,
)

DOMAIN = "mlbridge.dev"

#: The kernel's code table (:data:`runtimes.wire.errors.GRPC_STATUS`) as gRPC status codes.
STATUS_BY_CODE: dict[str, grpc.StatusCode] = {code: grpc.StatusCode[name] for code, name in GRPC_STATUS.items()}


#: The longest error text (and detail value) a status carries. Both travel in the reply's trailers, which
#: gRPC caps at 16 KiB in all; a message echoing a 10,000-character id would otherwise turn the real error
#: into RESOURCE_EXHAUSTED at the client.
MAX_MESSAGE_CHARS = 2000
MAX_DETAIL_CHARS = 500


def clip(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters with a note of how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def grpc_code(err: MLBridgeError) -> grpc.StatusCode:
    return STATUS_BY_CODE.get(err.code, grpc.StatusCode.INTERNAL)


def wire_message(err: MLBridgeError) -> str:
    """The status message for ``err`` (its flat text, clipped to fit the trailers)."""
    return clip(err.flat(), MAX_MESSAGE_CHARS)


def to_rpc_status(err: MLBridgeError) -> status_pb2.Status:
    """A google.rpc.Status carrying the mlbridge code and details as ErrorInfo."""
    meta = {clip(str(k), 100): clip(v if isinstance(v, str) else json.dumps(v), MAX_DETAIL_CHARS)
            for k, v in list(public_details(err).items())[:20]}
    info = error_details_pb2.ErrorInfo(reason=err.code, domain=DOMAIN, metadata=meta)
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=grpc_code(err).value[0], message=wire_message(err), details=[detail])


def from_grpc_error(exc: grpc.RpcError) -> MLBridgeError:
    """Rebuild the typed error from a failed gRPC call (any server, any code)."""
    status = None
    try:
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    except (ValueError, AttributeError):
        status = None
    code_name = exc.code().name if hasattr(exc, "code") and exc.code() else "UNKNOWN"
    message = exc.details() if hasattr(exc, "details") else str(exc)
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                details: dict[str, Any] = {"_flattened": True}
                for k, v in info.metadata.items():
                    try:
                        details[k] = json.loads(v)
                    except ValueError:
                        details[k] = v
                return error_class(info.reason)(message or "", details=details)
    # A status from gRPC itself (deadline, unavailable, message too large, ...).
    fallback = {
        "DEADLINE_EXCEEDED": "DEADLINE_EXCEEDED",
        "CANCELLED": "CANCELLED",
        "UNAVAILABLE": "UNAVAILABLE",
        "RESOURCE_EXHAUSTED": "PAYLOAD_TOO_LARGE",
        "UNAUTHENTICATED": "UNAUTHENTICATED",
        "PERMISSION_DENIED": "PERMISSION_DENIED",
        "INVALID_ARGUMENT": "INVALID_ARGUMENT",
        "NOT_FOUND": "NOT_FOUND",
        "UNIMPLEMENTED": "INVALID_ARGUMENT",
    }.get(code_name)
    cls = error_class(fallback) if fallback else InternalError
    return cls(f"{code_name}: {message}", details={"_flattened": True, "grpc_status": code_name})
