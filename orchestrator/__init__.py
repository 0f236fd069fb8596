"""mlbridge orchestrator: the host half, and the Python client.

``from orchestrator import MLBridge`` is all a Python user needs.
"""

import os

# gRPC's fork handlers run in every child the orchestrator forks while its gRPC threads are busy (the process
# backend's workers, a probe's subprocess) and can abort that child before it execs ("Other threads are
# currently calling into gRPC, skipping fork() handlers", then SIGABRT or SIGSEGV). Nothing here forks to keep
# using gRPC in the child, so they are off unless the environment says otherwise. Set before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from runtimes.wire.errors import (  # noqa: E402
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
from runtimes.wire.version import __version__ as __version__  # noqa: E402

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
