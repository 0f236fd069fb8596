"""The ``mock`` bridge: a framework-free bridge for tests and benchmarks."""

from .bridge import MockBridge, MockFrameworkError

__all__ = ["MockBridge", "MockFrameworkError"]
