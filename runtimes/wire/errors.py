"""One error hierarchy for mlbridge, shared by runtime, orchestrator and client.

Every error has a stable string ``code``. Errors cross process boundaries
flattened to that code plus a message string (never pickled):
``"CODE: message"`` for errors mlbridge raises itself, and
``"module.Class: message"`` for a foreign (framework or user code) exception
wrapped in :class:`FrameworkError`. :func:`error_from_wire` rebuilds the most
specific class on the other side. :data:`GRPC_STATUS` is the one table from
codes to gRPC status names.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

__all__ = [
    "AlreadyExists",
    "BridgeNotFound",
    "Cancelled",
    "ClientAnswerError",
    "ConfigError",
    "DeadlineExceeded",
    "FrameworkError",
    "ImageMismatch",
    "InternalError",
    "InvalidArgument",
    "InvalidResult",
    "MLBridgeError",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "QuotaExceeded",
    "Unauthenticated",
    "Unavailable",
    "UnknownCommand",
    "WorkerDied",
    "OutOfMemory",
    "GRPC_STATUS",
    "error_class",
    "clip_message",
    "error_from_wire",
    "exception_chain",
    "flatten_exception",
    "public_details",
]


class MLBridgeError(Exception):
    """Root of every error mlbridge raises. Catch this to catch them all.

    Attributes:
        code: stable machine-readable code, e.g. ``"UNKNOWN_COMMAND"``.
        message: human-readable text; for errors that came over the wire this
            is the flattened ``"module.Class: message"`` form.
        details: JSON-serialisable extra facts (never secrets or payloads).
    """

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str = "", *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def flat(self) -> str:
        """The form used on the wire: ``"CODE: message"``, or the text as received for a flattened error."""
        if ": " in self.message and self.details.get("_flattened"):
            return self.message
        return f"{self.code}: {self.message}"

    def __str__(self) -> str:
        return self.message


class InvalidArgument(MLBridgeError):
    """A malformed or invalid request: bad JSON, wrong type, missing field."""

    code = "INVALID_ARGUMENT"


class UnknownCommand(InvalidArgument):
    """The command's namespace or operation does not exist."""

    code = "UNKNOWN_COMMAND"


class NotFound(MLBridgeError):
    """A resource (or another tenant's resource) does not exist."""

    code = "NOT_FOUND"


class BridgeNotFound(NotFound):
    """No bridge of that name is configured or installed."""

    code = "UNKNOWN_BRIDGE"


class AlreadyExists(MLBridgeError):
    code = "ALREADY_EXISTS"


class FrameworkError(MLBridgeError):
    """An exception raised by the framework (DSPy, LangChain, ...) or user code."""

    code = "FRAMEWORK_ERROR"


class ClientAnswerError(FrameworkError):
    """The client answered a request of a running call (a client tool, say) with an error."""

    code = "FRAMEWORK_ERROR"


class InvalidResult(MLBridgeError):
    """A handler returned something that cannot be serialised to JSON."""

    code = "INVALID_RESULT"


class PayloadTooLarge(MLBridgeError):
    """A request or reply exceeds the configured size cap."""

    code = "PAYLOAD_TOO_LARGE"


class Cancelled(MLBridgeError):
    code = "CANCELLED"


class DeadlineExceeded(MLBridgeError):
    code = "DEADLINE_EXCEEDED"


class QuotaExceeded(MLBridgeError):
    """A tenant quota was hit; ``details["quota"]`` names it."""

    code = "RESOURCE_EXHAUSTED"


class Unauthenticated(MLBridgeError):
    code = "UNAUTHENTICATED"


class PermissionDenied(MLBridgeError):
    """Denied by policy; ``details["rule"]`` names the rule."""

    code = "PERMISSION_DENIED"


class Unavailable(MLBridgeError):
    """No worker could serve the call (pool empty, starting, or stopping)."""

    code = "UNAVAILABLE"


class WorkerDied(Unavailable):
    """The worker serving the call died or was killed; it is being replaced."""

    code = "WORKER_DIED"


class OutOfMemory(WorkerDied):
    """The worker was killed by the kernel for exceeding its memory limit."""

    code = "OUT_OF_MEMORY"


class ConfigError(MLBridgeError):
    """Configuration or environment is wrong; the message says how to fix it."""

    code = "FAILED_PRECONDITION"


class ImageMismatch(ConfigError):
    """A worker image's id differs from the one mlbridge built and recorded."""

    code = "IMAGE_MISMATCH"


class ArtifactMismatch(ConfigError):
    """A model's files differ from the sha256 the model store recorded; it is not loaded."""

    code = "ARTIFACT_MISMATCH"


class InternalError(MLBridgeError):
    code = "INTERNAL"


def _all_subclasses(cls: type[MLBridgeError]) -> list[type[MLBridgeError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _all_subclasses(sub)
    return out


_BY_CODE: dict[str, type[MLBridgeError]] = {}
for _cls in _all_subclasses(MLBridgeError):
    _BY_CODE.setdefault(_cls.code, _cls)
_BY_CODE["INTERNAL"] = InternalError


# The one table from mlbridge codes to gRPC status names (``grpc.StatusCode[name]``).
GRPC_STATUS: dict[str, str] = {
    "INVALID_ARGUMENT": "INVALID_ARGUMENT",
    "UNKNOWN_COMMAND": "INVALID_ARGUMENT",
    "INVALID_RESULT": "INTERNAL",
    "NOT_FOUND": "NOT_FOUND",
    "UNKNOWN_BRIDGE": "NOT_FOUND",
    "ALREADY_EXISTS": "ALREADY_EXISTS",
    "FRAMEWORK_ERROR": "ABORTED",
    "PAYLOAD_TOO_LARGE": "RESOURCE_EXHAUSTED",
    "RESOURCE_EXHAUSTED": "RESOURCE_EXHAUSTED",
    "CANCELLED": "CANCELLED",
    "DEADLINE_EXCEEDED": "DEADLINE_EXCEEDED",
    "UNAUTHENTICATED": "UNAUTHENTICATED",
    "PERMISSION_DENIED": "PERMISSION_DENIED",
    "UNAVAILABLE": "UNAVAILABLE",
    "WORKER_DIED": "UNAVAILABLE",
    "OUT_OF_MEMORY": "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION": "FAILED_PRECONDITION",
    "IMAGE_MISMATCH": "FAILED_PRECONDITION",
    "ARTIFACT_MISMATCH": "FAILED_PRECONDITION",
    "INTERNAL": "INTERNAL",
}
assert set(GRPC_STATUS) == set(_BY_CODE), "every error code needs a gRPC status"


def error_class(code: str) -> type[MLBridgeError]:
    """The most specific class for a wire code; unknown codes map to InternalError."""
    return _BY_CODE.get(code, InternalError)


def error_from_wire(code: str, message: str, details_json: bytes | str = b"") -> MLBridgeError:
    """Rebuild an error received from another process."""
    try:
        details = json.loads(details_json) if details_json else {}
        if not isinstance(details, dict):
            details = {}
    except ValueError:
        details = {}
    details["_flattened"] = True
    return error_class(code)(message, details=details)


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes (``__cause__``, else ``__context__``), outermost first; cycles cut."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def clip_message(text: str, limit: int) -> str:
    """A framework's message, cut to ``limit`` characters and marked ``[truncated]``."""
    return text if len(text) <= limit else text[:limit] + " [truncated]"


def flatten_exception(exc: BaseException) -> str:
    """``"module.Class: message"`` for any exception."""
    if isinstance(exc, MLBridgeError):
        return exc.flat()
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}: {exc}"


def public_details(err: MLBridgeError) -> dict[str, Any]:
    """Details safe to put on the wire (drops private markers)."""
    return {k: v for k, v in err.details.items() if not k.startswith("_")}
