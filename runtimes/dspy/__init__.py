"""The ``dspy`` bridge: DSPy signatures, LMs, programs, datasets and optimizers."""

from .bridge import DSPyBridge

__all__ = ["DSPyBridge"]
