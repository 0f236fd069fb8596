"""Python clients of the public API."""

from ._common import CallResult, Event
from .adapters import Adapter
from .aio import AsyncMLBridge
from .sync import MLBridge

__all__ = ["Adapter", "AsyncMLBridge", "CallResult", "Event", "MLBridge"]
