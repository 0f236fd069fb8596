"""mlbridge orchestrator: the host half, and the Python client.

``from orchestrator import MLBridge`` is all a Python user needs.
"""

from runtimes.wire.errors import (
    Cancelled,
    DeadlineExceeded,
    FrameworkError,
    InvalidArgument,
    MLBridgeError,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    Unauthenticated,
    Unavailable,
    UnknownCommand,
)
from runtimes.wire.version import __version__ as __version__

from .client import AsyncMLBridge, CallResult, Event, MLBridge

__all__ = [
    "AsyncMLBridge",
    "CallResult",
    "Cancelled",
    "DeadlineExceeded",
    "Event",
    "FrameworkError",
    "InvalidArgument",
    "MLBridge",
    "MLBridgeError",
    "NotFound",
    "PermissionDenied",
    "QuotaExceeded",
    "Unauthenticated",
    "Unavailable",
    "UnknownCommand",
]
