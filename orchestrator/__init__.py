"""mlbridge orchestrator: the host half, and the Python client.

``from orchestrator import MLBridge`` is all a Python user needs.
"""

from runtimes.core.errors import (
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

from .client import AsyncMLBridge, CallResult, Event, MLBridge

__version__ = "0.1.0"

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
