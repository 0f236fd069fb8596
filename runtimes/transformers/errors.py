"""torch and transformers failures as typed mlbridge errors that say what to fix.

The bridge's ``translate_error`` hook. What matters most is memory: an
allocation that fails inside torch ("DefaultCPUAllocator: can't allocate
memory", a CUDA out-of-memory error, Python's MemoryError) leaves the worker
alive but the call failed for want of memory, so it comes back as
OUT_OF_MEMORY naming the worker's memory limit as its cgroup states it now
(the kernel's OOM killer, when it strikes instead, is reported by the
orchestrator with the same code).

Inputs and parameters transformers refuses (a ValueError or TypeError raised
inside transformers or tokenizers, a text longer than the model's position
table) are the caller's to fix: INVALID_ARGUMENT. Anything else stays a
FRAMEWORK_ERROR with its ``module.Class: message``.
"""

from __future__ import annotations

from typing import Any

from runtimes.wire.errors import (
    ConfigError,
    FrameworkError,
    InvalidArgument,
    MLBridgeError,
    OutOfMemory,
    clip_message,
    exception_chain,
    flatten_exception,
)

from .limits import memory_figures

__all__ = ["translate"]

# Longest framework message passed on.
MAX_ERROR_CHARS = 2000
_OOM_TEXT = ("DefaultCPUAllocator: can't allocate memory", "CUDA out of memory", "out of memory")
_FRAMEWORK_DIRS = ("/transformers/", "/tokenizers/", "/torch/")


def _clip(text: str) -> str:
    return clip_message(text, MAX_ERROR_CHARS)


def _raised_in_framework(exc: BaseException) -> bool:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and any(d in last for d in _FRAMEWORK_DIRS)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc) for t in _OOM_TEXT)


def _too_long(exc: BaseException) -> bool:
    """A position index past the model's table (embedding lookup), or a position buffer shorter than the input."""
    text = str(exc)
    if isinstance(exc, IndexError):
        return "index out of range" in text
    return isinstance(exc, RuntimeError) and "must match the size of tensor" in text and _raised_in_framework(exc)


def translate(exc: BaseException) -> MLBridgeError | None:
    """The typed error for an exception raised while serving a transformers call."""
    text = _clip(flatten_exception(exc))
    details: dict[str, Any] = {"_flattened": True, "framework_error": type(exc).__name__}
    for cur in exception_chain(exc):
        if isinstance(cur, MLBridgeError):
            return cur
        if _is_oom(cur):
            figures = memory_figures()
            return OutOfMemory(
                f"the worker ran out of memory serving this call ({figures.describe()}): {text}; raise the bridge's "
                f"memory limit (bridges.transformers.limits.memory), send fewer or shorter inputs (or a smaller "
                f"max_batch_size), or load the model in float16/bfloat16",
                details={**details, "limit_mib": None if figures.limit is None else figures.limit >> 20})
        if _too_long(cur):
            return InvalidArgument(
                f"an input is longer than the model can take (its max_position_embeddings): {text}; pass "
                f"\"truncation\": true in parameters (with \"max_length\" when the tokenizer does not know the "
                f"model's limit), or send shorter text", details=details)
        if isinstance(cur, OSError) and _raised_in_framework(cur):
            return ConfigError(f"the model's files cannot be used: {text}; re-save it with save_pretrained and "
                               f"add it to the model store again", details=details)
        if isinstance(cur, (ValueError, TypeError, KeyError)) and _raised_in_framework(cur):
            return InvalidArgument(f"transformers refused the inputs or parameters: {text}; check them against "
                                   f"the pipeline task's documented parameters", details=details)
    return FrameworkError(text, details=details)
