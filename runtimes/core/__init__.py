"""mlbridge runtime SDK: what a bridge needs to serve a framework.

Public names: :class:`Bridge`, :func:`command`, :class:`Resource`,
:class:`ResourceStore`, :class:`CallContext`, :class:`BridgeMetrics` (what
``Bridge.metrics`` is), and the error hierarchy rooted at
:class:`MLBridgeError` (from the wire kernel, :mod:`runtimes.wire.errors`,
where the rest of it lives).
"""

from ..wire.errors import (
    Cancelled,
    DeadlineExceeded,
    FrameworkError,
    InvalidArgument,
    MLBridgeError,
    NotFound,
    UnknownCommand,
)
from .bridge import Bridge, CommandSpec, Resource, command
from .context import CallContext
from .grants import ModelGrant, export_model, find_model
from .loader import ENTRY_POINT_GROUP, load_bridge_class
from .store import ResourceStore
from .telemetry import BridgeMetrics

__all__ = [
    "ENTRY_POINT_GROUP",
    "Bridge",
    "BridgeMetrics",
    "CallContext",
    "Cancelled",
    "CommandSpec",
    "DeadlineExceeded",
    "FrameworkError",
    "InvalidArgument",
    "MLBridgeError",
    "ModelGrant",
    "NotFound",
    "Resource",
    "ResourceStore",
    "UnknownCommand",
    "command",
    "export_model",
    "find_model",
    "load_bridge_class",
]
