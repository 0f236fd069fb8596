"""``common:profile``: where a worker spends its time, for one call or a window of time.

Two modes, one result shape:

- **call**: ``{"command": "ns:op", "args": {...}}`` or ``{"resource_id":
  "...", "inputs": {...}}`` runs that command (or executes that resource)
  in the profiling call's own thread under :mod:`cProfile`, while a sampler
  thread takes every thread's stack every 5 ms. The inner call shares the
  profiling call's deadline, cancellation and trace, and what it leaves for
  the reply (metadata, attachments, states, tokens) goes out with it. An
  ``async`` handler runs on the event loop, where only the samples see it.
- **sample**: ``{"sample_s": 0.1..30, "interval_ms": 1..1000}`` takes every
  thread's stack (``sys._current_frames()``) every ``interval_ms`` for
  ``sample_s`` seconds, while other calls run; cancellation and the deadline
  end it (with their error).

Result: ``{"mode", "result", "error", "duration_ms", "pstats", "collapsed",
"samples", "truncated"}``: the inner call's JSON result (or null) and its
error as ``CODE: message`` (or ""; a framework's error reads
``FRAMEWORK_ERROR: module.Class: message``); ``pstats``, the top 30 functions by
cumulative time as :mod:`pstats` prints them (call mode; at most 64 KiB);
``collapsed``, the samples as ``outer;inner;leaf count`` lines, most
frequent first (at most 256 KiB); ``samples``, how many times the stacks
were taken; ``truncated``, which of the texts were cut (at a line boundary).
Frames read ``file.py:qualified.name:first line``.

Who may profile what is the orchestrator's policy; the runtime only refuses
to profile ``common:profile`` itself and runs one profile at a time.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import sys
import threading
import time
from collections import Counter
from types import CodeType, FrameType
from typing import Any, Protocol

from ..wire.errors import ConfigError, InvalidArgument
from ..wire.payload import encode_capped
from .bridge import Bridge
from .context import CallContext

__all__ = ["MAX_COLLAPSED_BYTES", "MAX_PSTATS_BYTES", "PROFILE_SCHEMA", "Profiled", "profile"]

MAX_PSTATS_BYTES = 64 * 1024
MAX_COLLAPSED_BYTES = 256 * 1024
PSTATS_TOP = 30
CALL_INTERVAL_S = 0.005
MAX_STACK_DEPTH = 256
#: The largest inner result a profile reply carries (the texts come on top).
MAX_INNER_RESULT_BYTES = 4 * 1024 * 1024

PROFILE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "one of: {command, args} or {resource_id, inputs} (call mode: run it under cProfile), "
                   "or {sample_s, interval_ms} (sample every thread's stack for a while)",
    "properties": {
        "command": {"type": "string", "description": "call mode: the command to run (namespace:operation)"},
        "args": {"type": "object", "description": "call mode: its args (default {})"},
        "resource_id": {"type": "string", "description": "call mode: a resource of this worker to execute"},
        "inputs": {"type": "object", "description": "call mode: the resource's inputs (default {})"},
        "sample_s": {"type": "number", "minimum": 0.1, "maximum": 30,
                     "description": "sample mode: seconds to sample for"},
        "interval_ms": {"type": "number", "minimum": 1, "maximum": 1000,
                        "description": "sample mode: milliseconds between samples (default 5)"},
    },
    "additionalProperties": False,
}

_MODES = ({"command", "args"}, {"resource_id", "inputs"}, {"sample_s", "interval_ms"})


class Profiled(Protocol):
    """What profiling needs of the worker serving it (the dispatcher)."""

    bridge: Bridge
    max_reply_bytes: int

    def call_here(self, ctx: CallContext, args: dict[str, Any]) -> Any: ...


_busy = threading.Lock()


def profile(served: Profiled, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Run ``common:profile`` (see the module docstring).

    Raises:
        InvalidArgument: args of no mode, of two, or out of range; profiling ``common:profile``.
        ConfigError: another profile is running in this worker.
        Cancelled / DeadlineExceeded: the profiling call was cancelled or ran past its deadline.
    """
    mode = _mode(args)
    if not _busy.acquire(blocking=False):
        raise ConfigError("another common:profile is running in this worker; try again when it has ended")
    try:
        if mode == "sample":
            return _sample_window(ctx, float(args["sample_s"]), float(args.get("interval_ms", 5)) / 1000.0)
        return _profile_call(served, ctx, args)
    finally:
        _busy.release()


def _mode(args: dict[str, Any]) -> str:
    keys = set(args)
    found = [m for m in _MODES if keys & m]
    if len(found) != 1 or not keys <= found[0]:
        raise InvalidArgument("common:profile takes one of: {command, args}, {resource_id, inputs}, or "
                              "{sample_s, interval_ms}")
    if "sample_s" in keys:
        s, ms = args["sample_s"], args.get("interval_ms", 5)
        if not _number_in(s, 0.1, 30):
            raise InvalidArgument(f"sample_s must be a number from 0.1 to 30, got {s!r}")
        if not _number_in(ms, 1, 1000):
            raise InvalidArgument(f"interval_ms must be a number from 1 to 1000, got {ms!r}")
        return "sample"
    if "command" in keys:
        if not isinstance(args["command"], str) or not args["command"]:
            raise InvalidArgument("command must be a non-empty string (namespace:operation)")
        if args["command"] == "common:profile":
            raise InvalidArgument("common:profile cannot profile itself")
        if not isinstance(args.get("args", {}), dict):
            raise InvalidArgument("args must be a JSON object")
    else:
        if not isinstance(args["resource_id"], str) or not args["resource_id"]:
            raise InvalidArgument("resource_id must be a non-empty string")
        if not isinstance(args.get("inputs", {}), dict):
            raise InvalidArgument("inputs must be a JSON object")
    return "call"


def _number_in(value: Any, low: float, high: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high


def _profile_call(served: Profiled, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    if "command" in args:
        inner = ctx.nested(args["command"])
        inner_args: dict[str, Any] = args.get("args", {})
    else:
        inner = ctx.nested("common:execute_resource", resource_id=args["resource_id"])
        inner_args = args.get("inputs", {})
    sampler = Sampler()  # every thread but the sampler's own: this one runs the call
    stop = threading.Event()
    thread = threading.Thread(target=sampler.run_until, args=(stop, CALL_INTERVAL_S), daemon=True,
                              name="mlbridge-profile-sampler")
    prof = cProfile.Profile()
    result: Any = None
    error = ""
    thread.start()
    started = time.perf_counter()
    try:
        prof.enable()
        try:
            value = served.call_here(inner, inner_args)
        finally:
            prof.disable()
        duration = time.perf_counter() - started
        cap = min(MAX_INNER_RESULT_BYTES, served.max_reply_bytes // 2)
        result = json.loads(encode_capped(value, cap, f"result of {inner.command}"))
    except Exception as exc:  # noqa: BLE001 - the inner call's error is part of the answer
        duration = time.perf_counter() - started
        err = served.bridge.to_error(exc)
        error = f"{err.code}: {err.message}"
    finally:
        stop.set()
        thread.join()
        ctx.absorb(inner)
    ctx.check()  # a cancelled or late profiling call ends as such, whatever the inner call did
    truncated: list[str] = []
    text, cut = _cap_lines(_pstats_text(prof), MAX_PSTATS_BYTES)
    if cut:
        truncated.append("pstats")
    collapsed, cut = _cap_lines(sampler.collapsed(), MAX_COLLAPSED_BYTES)
    if cut:
        truncated.append("collapsed")
    return {"mode": "call", "result": result, "error": error, "duration_ms": round(duration * 1000, 3),
            "pstats": text, "collapsed": collapsed, "samples": sampler.samples, "truncated": truncated}


def _sample_window(ctx: CallContext, seconds: float, interval: float) -> dict[str, Any]:
    sampler = Sampler(exclude={threading.get_ident()})
    started = time.perf_counter()
    end = started + seconds
    while True:
        sampler.sample()
        left = end - time.perf_counter()
        if left <= 0:
            break
        ctx.sleep(min(interval, left))  # raises on cancellation and at the deadline
    duration = time.perf_counter() - started
    collapsed, cut = _cap_lines(sampler.collapsed(), MAX_COLLAPSED_BYTES)
    return {"mode": "sample", "result": None, "error": "", "duration_ms": round(duration * 1000, 3),
            "pstats": "", "collapsed": collapsed, "samples": sampler.samples,
            "truncated": ["collapsed"] if cut else []}


class Sampler:
    """Counts the stacks of every thread but its own (and ``exclude``), taken with :meth:`sample`."""

    def __init__(self, exclude: set[int] | None = None) -> None:
        self.exclude = exclude or set()
        self.stacks: Counter[str] = Counter()
        self.samples = 0
        self._names: dict[CodeType, str] = {}

    def sample(self) -> None:
        me = threading.get_ident()
        for tid, frame in sys._current_frames().items():
            if tid == me or tid in self.exclude:
                continue
            self.stacks[self._stack(frame)] += 1
        self.samples += 1

    def run_until(self, stop: threading.Event, interval: float) -> None:
        while not stop.wait(interval):
            self.sample()

    def _stack(self, frame: FrameType | None) -> str:
        names: list[str] = []
        cache = self._names
        while frame is not None and len(names) < MAX_STACK_DEPTH:
            code = frame.f_code
            name = cache.get(code)
            if name is None:
                name = cache[code] = _frame_name(code)
            names.append(name)
            frame = frame.f_back
        names.reverse()
        return ";".join(names)

    def collapsed(self) -> str:
        """``outer;inner;leaf count`` lines, most frequent first."""
        return "".join(f"{stack} {n}\n" for stack, n in self.stacks.most_common())


def _frame_name(code: CodeType) -> str:
    name = f"{os.path.basename(code.co_filename)}:{code.co_qualname}:{code.co_firstlineno}"
    return name.replace(";", "_").replace(" ", "_")


def _pstats_text(prof: cProfile.Profile) -> str:
    out = io.StringIO()
    try:
        stats = pstats.Stats(prof, stream=out)
    except TypeError:  # nothing was profiled
        return ""
    stats.sort_stats(pstats.SortKey.CUMULATIVE).print_stats(PSTATS_TOP)
    return out.getvalue()


def _cap_lines(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut at a line boundary to at most ``limit`` UTF-8 bytes; whether it was cut."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text, False
    cut = data.rfind(b"\n", 0, limit)
    return data[:cut + 1 if cut >= 0 else 0].decode("utf-8", "ignore"), True

