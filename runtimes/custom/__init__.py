"""The ``custom`` bridge: arbitrary user Python in the worker, user-defined
resource types and a scratch file space. See :mod:`runtimes.custom.bridge`."""

from .bridge import CustomBridge
from .settings import HARD_MAX_OUTPUT_BYTES, CustomSettings

__all__ = ["HARD_MAX_OUTPUT_BYTES", "CustomBridge", "CustomSettings"]
