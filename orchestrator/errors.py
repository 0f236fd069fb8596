"""mlbridge errors as gRPC statuses, and back (the table itself is the wire kernel's).

Servers turn an :class:`MLBridgeError` into a gRPC status with a
``google.rpc.ErrorInfo`` detail (reason = mlbridge code, metadata = details)
so that any gRPC client sees a standard status and rich details; the Python
client turns that back into the most specific exception class.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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


#: The most bytes an error's text takes in the reply's trailers, and the most its details take. Both travel
#: there (``grpc-message``, and ``grpc-status-details-bin`` in base64, which holds the text again), and a
#: client refuses trailers over 8 KiB (``grpc.max_metadata_size``): a message echoing a 10,000-character id
#: would otherwise turn the real error into RESOURCE_EXHAUSTED at the client. ``grpc-message`` is
#: percent-encoded outside printable ASCII, so one character may take 9 bytes there: the caps are in bytes
#: as sent, not characters. Worst case: 2,000 + 4/3 * (2,000 + 1,200 + framing) < 8 KiB.
MAX_MESSAGE_CHARS = 2000
MAX_DETAIL_CHARS = 500
MAX_DETAILS_TOTAL = 1200
_NOTE = 40  # room for the "... (N more characters)" note


def _utf8_size(ch: str) -> int:
    """Bytes ``ch`` takes in UTF-8."""
    return 1 if ch < "\x80" else len(ch.encode("utf-8", "replace"))


def _trailer_size(ch: str) -> int:
    """Bytes ``ch`` takes in ``grpc-message``: printable ASCII but ``%`` as is, other bytes as ``%XX``."""
    return 1 if " " <= ch <= "~" and ch != "%" else 3 * _utf8_size(ch)


def clip(text: str, limit: int, size: Callable[[str], int] = _utf8_size) -> str:
    """``text`` in at most ``limit`` bytes (each character's by ``size``; UTF-8 by default), cut with a note
    of how many characters were cut; a lone surrogate (not text, so not UTF-8) becomes ``?``."""
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) <= limit and sum(map(size, text)) <= limit:  # every character takes a byte at least
        return text
    used = 0
    for cut, ch in enumerate(text):
        used += size(ch)
        if used > limit:
            return f"{text[:cut]}... ({len(text) - cut} more characters)"
    return text


def grpc_code(err: MLBridgeError) -> grpc.StatusCode:
    return STATUS_BY_CODE.get(err.code, grpc.StatusCode.INTERNAL)


def wire_message(err: MLBridgeError) -> str:
    """The status message for ``err`` (its flat text, clipped to fit the trailers as percent-encoded)."""
    return clip(err.flat(), MAX_MESSAGE_CHARS, _trailer_size)


def _details(err: MLBridgeError) -> dict[str, str]:
    """``err``'s public details as ErrorInfo metadata: each value and all of them together capped in bytes."""
    meta: dict[str, str] = {}
    budget = MAX_DETAILS_TOTAL
    for k, v in list(public_details(err).items())[:20]:
        key = clip(str(k), 100)
        try:
            text = v if isinstance(v, str) else json.dumps(v, default=str)
        except (TypeError, ValueError):  # a cycle, NaN in strict mode: say what it was, not what it held
            text = type(v).__name__
        value = clip(text, max(0, min(MAX_DETAIL_CHARS, budget - len(key.encode()) - _NOTE)))
        budget -= len(key.encode()) + len(value.encode())
        if budget < 0:
            break
        meta[key] = value
    return meta


def to_rpc_status(err: MLBridgeError) -> status_pb2.Status:
    """A google.rpc.Status carrying the mlbridge code and details as ErrorInfo."""
    info = error_details_pb2.ErrorInfo(reason=clip(err.code, 100), domain=DOMAIN, metadata=_details(err))
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
