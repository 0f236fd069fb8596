"""mlbridge runtime SDK: what a bridge needs to serve a framework.

Public names: :class:`Bridge`, :func:`command`, :class:`Resource`,
:class:`CallContext`, and the error hierarchy rooted at
:class:`MLBridgeError`.
"""

from .bridge import Bridge, CommandSpec, Resource, command
from .context import CallContext
from .errors import (
    Cancelled,
    DeadlineExceeded,
    FrameworkError,
    InvalidArgument,
    MLBridgeError,
    NotFound,
    UnknownCommand,
)
from .loader import ENTRY_POINT_GROUP, load_bridge_class

__all__ = [
    "ENTRY_POINT_GROUP",
    "Bridge",
    "CallContext",
    "Cancelled",
    "CommandSpec",
    "DeadlineExceeded",
    "FrameworkError",
    "InvalidArgument",
    "MLBridgeError",
    "NotFound",
    "Resource",
    "UnknownCommand",
    "command",
    "load_bridge_class",
]
