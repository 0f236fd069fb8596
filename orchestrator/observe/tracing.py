"""Traces of public calls, in OpenTelemetry's model, exported through its SDK's span processors.

One trace per traced call: the public RPC (a server span, whose parent is
the client's ``traceparent`` when it sent one), ``policy`` (the edge's
steps), ``acquire`` (waiting for the tenant's worker, with ``claim`` inside
when a spare was claimed), ``runtime call`` (a client span around the round
trip to the runtime), and the runtime's own spans: its handler, named by the
command, and spans the bridge marked (``ctx.span``). The runtime gets the
trace through ``CallRequest.traceparent`` and sends its spans back in reply
metadata (:data:`runtimes.wire.metadata.SPANS`); they keep their trace id and
span ids, so both sides of the worker's socket read as one trace.

Spans are recorded as plain values while the call runs; a finished call's
trace is queued, and a background thread turns traces into
``ReadableSpan`` objects and hands them to the exporters in batches: no
context attach/detach, span locks or exporting on the call path. Sampling is
parent-based (a client's sampled flag wins), else by trace id ratio.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import random
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from runtimes.wire.spans import decode as decode_spans
from runtimes.wire.version import __version__

__all__ = ["CallTrace", "Tracing", "current", "incoming_traceparent", "parse_traceparent"]

log = logging.getLogger("mlbridge.tracing")

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)
#: Spans a runtime may add to one call; more are dropped.
MAX_REMOTE_SPANS = 128
_MAX_ATTRS = 16

#: The trace of the public call this task serves (None: not traced).
current: contextvars.ContextVar[CallTrace | None] = contextvars.ContextVar("mlbridge_trace", default=None)
#: The ``traceparent`` the client sent with this call, set by the servicer.
incoming_traceparent: contextvars.ContextVar[str] = contextvars.ContextVar("mlbridge_traceparent", default="")


def parse_traceparent(value: str) -> tuple[int, int, bool] | None:
    """(trace id, parent span id, sampled) of a W3C ``traceparent``; None when it is not one."""
    m = _TRACEPARENT.match(value.strip().lower()) if value else None
    if m is None or m.group(1) == "ff":
        return None
    trace_id, span_id = int(m.group(2), 16), int(m.group(3), 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(int(m.group(4), 16) & 1)


def _new_id(bits: int) -> int:
    while True:
        value = random.getrandbits(bits)
        if value:
            return value


@dataclass(slots=True)
class _Span:
    name: str
    span_id: int
    parent_id: int
    start_ns: int
    end_ns: int = 0
    kind: SpanKind = SpanKind.INTERNAL
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class CallTrace:
    """The spans of one traced public call, recorded as values until :meth:`Tracing.finish`."""

    __slots__ = ("trace_id", "remote_parent", "root", "stack", "spans")

    def __init__(self, trace_id: int, remote_parent: int, root: _Span) -> None:
        self.trace_id = trace_id
        self.remote_parent = remote_parent
        self.root = root
        self.stack: list[_Span] = [root]  # open spans; the last is the parent of a new one
        self.spans: list[_Span] = [root]

    def open(self, name: str, attributes: dict[str, Any] | None = None, kind: SpanKind = SpanKind.INTERNAL) -> _Span:
        """Start a child of the innermost open span and make it the innermost."""
        span = _Span(name, _new_id(64), self.stack[-1].span_id, time.time_ns(), kind=kind,
                     attributes=attributes or {})
        self.spans.append(span)
        self.stack.append(span)
        return span

    def close(self, span: _Span, error: str = "") -> None:
        span.end_ns = time.time_ns()
        span.error = span.error or error
        if span in self.stack:
            self.stack.remove(span)

    def add(self, name: str, start_ns: int, end_ns: int, attributes: dict[str, Any] | None = None) -> None:
        """A finished child of the innermost open span (measured elsewhere)."""
        self.spans.append(_Span(name, _new_id(64), self.stack[-1].span_id, start_ns, end_ns,
                                attributes=attributes or {}))

    def traceparent(self, span: _Span) -> str:
        return f"00-{self.trace_id:032x}-{span.span_id:016x}-01"

    def add_remote(self, text: str, parent: _Span, name: str, attributes: dict[str, Any]) -> int:
        """Take the runtime's spans (:mod:`runtimes.wire.spans`; untrusted): its handler span, named
        ``name`` with ``attributes``, under ``parent``; the bridge's spans under the handler span or
        each other (a span naming any other parent hangs under the handler span). Returns how many were kept."""
        decoded = decode_spans(text)
        if decoded is None:
            return 0
        head, items = decoded
        if head["span_id"] == parent.span_id:
            return 0
        attrs = {**attributes, "mlbridge.side": "runtime"}
        if head["dropped"]:
            attrs["mlbridge.spans_dropped"] = head["dropped"]
        handler = _Span(name, head["span_id"], parent.span_id, head["start_ns"], head["end_ns"], attributes=attrs,
                        error=head["error"])
        kept: list[_Span] = [handler]
        ids = {parent.span_id, handler.span_id}
        for item in items[:MAX_REMOTE_SPANS]:
            span = self._remote(item)
            if span is not None and span.span_id not in ids:
                ids.add(span.span_id)
                kept.append(span)
        for span in kept[1:]:
            if span.parent_id not in ids or span.parent_id in (span.span_id, parent.span_id):
                span.parent_id = handler.span_id
        self.spans.extend(kept)
        return len(kept)

    def _remote(self, item: Any) -> _Span | None:
        if not isinstance(item, dict):
            return None
        try:
            span_id = int(str(item["span_id"]), 16)
            parent_id = int(str(item.get("parent_span_id") or "0"), 16)
            start, end = int(item["start_ns"]), int(item["end_ns"])
        except (KeyError, TypeError, ValueError):
            return None
        if not 0 < span_id < 2**64 or not 0 <= parent_id < 2**64 or not 0 < start <= end:
            return None
        attrs: dict[str, Any] = {}
        raw = item.get("attributes")
        for key, value in (raw.items() if isinstance(raw, dict) else ()):
            if len(attrs) >= _MAX_ATTRS:
                break
            if isinstance(key, str) and isinstance(value, (str, int, float, bool)):
                attrs[key[:64]] = value[:256] if isinstance(value, str) else value
        attrs["mlbridge.side"] = "runtime"
        error = item.get("error")
        return _Span(str(item.get("name", "span"))[:128], span_id, parent_id, start, end, attributes=attrs,
                     error=error[:64] if isinstance(error, str) else "")


class Tracing:
    """Starts call traces and exports their finished spans in batches, off the call path.

    A finished call's trace goes on a queue (nothing else happens on the
    call path); a daemon thread turns queued traces into ``ReadableSpan``
    objects and hands them to every exporter every ``delay_s`` seconds, or
    sooner when ``batch`` traces wait. Over ``max_queue`` waiting traces, the
    oldest are dropped and counted (:attr:`dropped`).

    Args:
        exporters: OpenTelemetry span exporters (OTLP; the in-memory exporter in tests).
        sample_ratio: the share of calls traced when the client sent no sampling decision.
        service_name: the ``service.name`` resource attribute.
    """

    def __init__(self, exporters: Sequence[SpanExporter], *, sample_ratio: float = 1.0,
                 service_name: str = "mlbridge", delay_s: float = 0.5, batch: int = 256,
                 max_queue: int = 4096) -> None:
        self.exporters = tuple(exporters)
        self.bound = int(max(0.0, min(1.0, sample_ratio)) * (2**64 - 1))
        self.resource = Resource.create({"service.name": service_name, "service.version": __version__})
        self.scope = InstrumentationScope("mlbridge.orchestrator", __version__)
        self.delay_s = delay_s
        self.batch = batch
        self.dropped = 0
        self._queue: collections.deque[CallTrace] = collections.deque(maxlen=max_queue)
        self._wake = threading.Event()
        self._export_lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="mlbridge-trace-export", daemon=True)
        self._thread.start()

    @classmethod
    def otlp(cls, endpoint: str, *, sample_ratio: float = 1.0, insecure: bool = True) -> Tracing:
        """Export over OTLP/gRPC to ``endpoint`` (``host:port``)."""
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return cls([OTLPSpanExporter(endpoint=endpoint, insecure=insecure)], sample_ratio=sample_ratio)

    def begin(self, name: str, traceparent: str = "", attributes: dict[str, Any] | None = None) -> CallTrace | None:
        """The trace of a new public call (its root span open), or None when it is not sampled."""
        parsed = parse_traceparent(traceparent)
        if parsed is not None:
            trace_id, parent, sampled = parsed
            if not sampled:
                return None
        else:
            trace_id, parent = _new_id(128), 0
            if (trace_id & (2**64 - 1)) > self.bound:
                return None
        root = _Span(name, _new_id(64), parent, time.time_ns(), kind=SpanKind.SERVER, attributes=attributes or {})
        return CallTrace(trace_id, parent, root)

    def finish(self, trace: CallTrace, error: str = "") -> None:
        """End the root span (and any span left open) and queue the trace for export."""
        now = time.time_ns()
        trace.root.error = trace.root.error or error
        for span in trace.spans:
            if not span.end_ns:
                span.end_ns = now
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(trace)
        if len(self._queue) >= self.batch:
            self._wake.set()

    def flush(self) -> None:
        """Export every queued trace now (any thread)."""
        with self._export_lock:
            traces = []
            while self._queue:
                traces.append(self._queue.popleft())
            if not traces:
                return
            spans = [span for t in traces for span in self._readables(t)]
            for exporter in self.exporters:
                try:
                    exporter.export(spans)
                except Exception as exc:  # noqa: BLE001 - tracing never fails the orchestrator
                    log.warning("span export failed: %s", exc)

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self.delay_s)
            self._wake.clear()
            self.flush()

    def _readables(self, trace: CallTrace) -> list[ReadableSpan]:
        """The trace's spans as OpenTelemetry's finished spans (each span's context made once)."""
        contexts = {span.span_id: SpanContext(trace.trace_id, span.span_id, is_remote=False, trace_flags=_SAMPLED)
                    for span in trace.spans}
        out = []
        for span in trace.spans:
            parent = contexts.get(span.parent_id)
            if parent is None and span.parent_id:
                parent = SpanContext(trace.trace_id, span.parent_id, is_remote=True, trace_flags=_SAMPLED)
            attributes: Mapping[str, Any] = span.attributes
            status = _UNSET
            if span.error:
                attributes = {**span.attributes, "error.type": span.error}
                status = Status(StatusCode.ERROR, span.error)
            out.append(ReadableSpan(span.name, context=contexts[span.span_id], parent=parent,
                                    resource=self.resource, attributes=attributes, kind=span.kind, status=status,
                                    start_time=span.start_ns, end_time=span.end_ns, instrumentation_scope=self.scope))
        return out

    def shutdown(self) -> None:
        """Export what is queued, stop the export thread and the exporters."""
        self._stopped = True
        self._wake.set()
        self._thread.join(5)
        self.flush()
        for exporter in self.exporters:
            try:
                exporter.shutdown()
            except Exception as exc:  # noqa: BLE001
                log.warning("span exporter shutdown failed: %s", exc)
