"""Spans of one call, in the trace the orchestrator named (W3C ``traceparent``).

The orchestrator sends its span's W3C trace context with a call
(``CallRequest.traceparent``). When it names a sampled trace, the call's
:class:`CallTrace` records a handler span (named after the command, a child
of the orchestrator's span) and the spans a bridge marks with
``with ctx.span("tokenize", n=3):`` (children of the handler span, or of the
span open around them: nesting follows the code, per thread and per task).
The dispatcher sends them back in reply metadata
(:data:`runtimes.wire.metadata.SPANS`)::

    [{"name": "custom:run", "trace_id": "<32 hex>", "span_id": "<16 hex>", "parent_span_id": "<16 hex>",
      "start_ns": 1700000000000000000, "end_ns": 1700000000001000000,
      "attributes": {"mlbridge.bridge": "custom", ...}, "error": ""}, ...]

A call that is not traced has no CallTrace at all, and ``ctx.span`` returns
one shared do-nothing context manager.
"""

from __future__ import annotations

import contextvars
import math
import random
import threading
import time
from types import TracebackType
from typing import Any

from ..wire.spans import encode as encode_spans

__all__ = ["MAX_ATTRIBUTES", "MAX_SPANS", "NO_SPAN", "CallTrace", "Span", "SpanScope", "parse_traceparent"]

#: Most spans one call records, its handler span included; later ones are dropped and counted.
MAX_SPANS = 128
#: Most attributes one span keeps (``error.type`` and the handler's own come on top).
MAX_ATTRIBUTES = 16
#: String attribute values are cut to this many characters.
MAX_ATTRIBUTE_CHARS = 256
MAX_NAME_CHARS = 128

_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_random = random.Random()

# The span open in this thread or task: (its call's trace, its span id).
_open: contextvars.ContextVar[tuple[CallTrace, str] | None] = contextvars.ContextVar("mlbridge_span", default=None)


def new_span_id() -> str:
    """16 hex characters of a random non-zero 64-bit number."""
    while True:
        value = _random.getrandbits(64)
        if value:
            return f"{value:016x}"


def parse_traceparent(header: str) -> tuple[str, str] | None:
    """``(trace_id, parent_span_id)`` of a sampled W3C traceparent, or None.

    ``00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>``; None for
    anything else: a malformed header, version ``ff``, all-zero ids, or the
    sampled flag unset. Versions above 00 may carry more fields after a dash.
    """
    if len(header) < 55:
        return None
    version, trace_id, span_id, flags = header[:2], header[3:35], header[36:52], header[53:55]
    if header[2] != "-" or header[35] != "-" or header[52] != "-":
        return None
    if not _HEX.issuperset(version) or version == "ff" or (version == "00" and len(header) != 55):
        return None
    if len(header) > 55 and header[55] != "-":
        return None
    if not (_HEX.issuperset(trace_id) and _HEX.issuperset(span_id) and _HEX.issuperset(flags)):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN or not int(flags, 16) & 1:
        return None
    return trace_id, span_id


def clean_attributes(attributes: dict[str, Any], limit: int = MAX_ATTRIBUTES) -> dict[str, Any]:
    """At most ``limit`` attributes with str, int, float or bool values (strings cut to 256 characters;
    any other value, and a float that is not finite, becomes its ``str``)."""
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if len(out) >= limit:
            break
        out[str(key)[:MAX_NAME_CHARS]] = clean_value(value)
    return out


def clean_value(value: Any) -> Any:
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return (value if isinstance(value, str) else str(value))[:MAX_ATTRIBUTE_CHARS]


class SpanScope:
    """What ``ctx.span`` returns on a call that is not traced: a context manager that does nothing."""

    __slots__ = ()

    def __enter__(self) -> SpanScope:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def set_attribute(self, key: str, value: Any) -> None:
        """Set an attribute of the span (str, int, float or bool; at most 16)."""


#: The one do-nothing span of calls that are not traced.
NO_SPAN = SpanScope()


class Span(SpanScope):
    """One span a bridge marked, open between ``__enter__`` and ``__exit__``."""

    __slots__ = ("_token", "_trace", "attributes", "name", "parent_span_id", "span_id", "start_ns")

    def __init__(self, trace: CallTrace, name: str, attributes: dict[str, Any]) -> None:
        self._trace = trace
        self.name = str(name)[:MAX_NAME_CHARS]
        self.attributes = clean_attributes(attributes) if attributes else {}
        self.span_id = new_span_id()
        self.parent_span_id = trace.span_id
        self.start_ns = 0
        self._token: contextvars.Token[tuple[CallTrace, str] | None] | None = None

    def __enter__(self) -> Span:
        current = _open.get()
        if current is not None and current[0] is self._trace:
            self.parent_span_id = current[1]
        self._token = _open.set((self._trace, self.span_id))
        self.start_ns = time.time_ns()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        end = time.time_ns()
        if self._token is not None:
            try:
                _open.reset(self._token)
            except ValueError:  # left in another context than it was entered in (a generator moved on)
                _open.set(None)
        error = ""
        if exc_type is not None:
            error = exc_type.__name__
            self.attributes["error.type"] = error
        self._trace.record(self.name, self.span_id, self.parent_span_id, self.start_ns, end,
                           self.attributes, error)

    def set_attribute(self, key: str, value: Any) -> None:
        if key in self.attributes or len(self.attributes) < MAX_ATTRIBUTES:
            self.attributes[str(key)[:MAX_NAME_CHARS]] = clean_value(value)


class CallTrace:
    """The spans of one traced call: the handler span's identity and the finished child spans."""

    __slots__ = ("_closed", "_lock", "dropped", "parent_span_id", "span_id", "spans", "start_ns", "trace_id")

    def __init__(self, trace_id: str, parent_span_id: str) -> None:
        self.trace_id = trace_id
        self.parent_span_id = parent_span_id
        #: The handler span's id: the parent of the spans the bridge marks.
        self.span_id = new_span_id()
        self.start_ns = time.time_ns()
        self.spans: list[dict[str, Any]] = []
        self.dropped = 0
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def from_traceparent(cls, header: str) -> CallTrace | None:
        """A trace for a call whose request carried ``header``; None when it names no sampled trace."""
        parsed = parse_traceparent(header) if header else None
        return None if parsed is None else cls(*parsed)

    def span(self, name: str, attributes: dict[str, Any]) -> Span:
        return Span(self, name, attributes)

    def record(self, name: str, span_id: str, parent_span_id: str, start_ns: int, end_ns: int,
               attributes: dict[str, Any], error: str) -> None:
        """Keep a finished span (dropped, and counted, past :data:`MAX_SPANS`; ignored once the call ended)."""
        with self._lock:
            if self._closed:
                return
            if len(self.spans) >= MAX_SPANS - 1:  # one place is the handler span's
                self.dropped += 1
                return
            self.spans.append({"name": name, "span_id": span_id, "parent_span_id": parent_span_id,
                               "start_ns": start_ns, "end_ns": end_ns, "attributes": attributes, "error": error})

    def finish(self, error: str) -> str:
        """Close the trace: the handler span ends now, with ``error`` (a code, or ""); later spans are
        ignored. The reply metadata text (:mod:`runtimes.wire.spans`): the handler span, then the bridge's."""
        end = time.time_ns()
        with self._lock:
            self._closed = True
            spans, dropped = self.spans, self.dropped
        return encode_spans(self.span_id, self.start_ns, end, dropped, error, spans)
