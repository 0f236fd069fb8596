"""One observer for the orchestrator: usage accounting always, metrics and traces when configured.

It is the :class:`~orchestrator.probe.Probe` the domain service reports to,
a listener of the pools' worker events, and the edge's first and last steps
(:meth:`Observer.edge_steps`): the first times the whole public call, counts
its outcome and opens its trace; the last, behind the policy's steps, marks
where policy ended (the ``policy`` span).

A trace's spans: the public RPC; ``policy`` (when a policy's steps ran);
``claim`` (when the call claimed a worker); ``runtime call`` per round trip
to a runtime, with the runtime's own spans under it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.trace import SpanKind

from runtimes.wire import metadata as meta
from runtimes.wire.errors import MLBridgeError, PermissionDenied, QuotaExceeded
from runtimes.wire.proto import runtime_pb2 as rpb

from ..edge.request import Outcome, Request
from ..edge.steps import Step
from ..usage import UsageBook
from ..worker import Worker
from .bridge_series import BridgeSeries
from .metrics import OrchestratorMetrics
from .tracing import Tracing, current, incoming_traceparent

__all__ = ["Observer"]

log = logging.getLogger("mlbridge.observe")

#: The public RPC's name in traces, by the gateway's method name.
_SERVICE = "mlbridge.v1.MLBridge"


def _tokens(metadata: Mapping[str, str]) -> tuple[int, int]:
    """(tokens in, tokens out) a reply reports (untrusted: anything odd counts as none)."""
    try:
        value = json.loads(metadata[meta.USAGE])
        a, b = int(value.get("tokens_in", 0)), int(value.get("tokens_out", 0))
    except (ValueError, TypeError, AttributeError, KeyError):
        return 0, 0
    return (a if 0 <= a < 2**40 else 0), (b if 0 <= b < 2**40 else 0)


class _First(Step):
    def __init__(self, observer: Observer) -> None:
        self.o = observer

    async def enter(self, req: Request) -> None:
        self.o.request_begin(req)

    async def exit(self, req: Request, outcome: Outcome) -> None:
        self.o.request_end(req, outcome)


class _Last(Step):
    def __init__(self, observer: Observer) -> None:
        self.o = observer

    async def enter(self, req: Request) -> None:
        trace = current.get()
        if trace is not None:
            trace.add("policy", trace.root.start_ns, time.time_ns())


class Observer:
    """Turns the domain service's reports into usage records, metrics and spans.

    Args:
        usage: the usage book (per tenant and bridge).
        usage_of: a worker's handle -> the backend's figures (``cpu_ns``, ``memory_peak_bytes``, ...).
        metrics: the Prometheus series, or None when metrics are off.
        series: the bridges' own series, or None when metrics are off.
        tracing: the tracer, or None when tracing is off.
    """

    def __init__(self, usage: UsageBook, usage_of: Callable[[Any], dict[str, int]], *,
                 metrics: OrchestratorMetrics | None = None, series: BridgeSeries | None = None,
                 tracing: Tracing | None = None) -> None:
        self.usage = usage
        self.usage_of = usage_of
        self.metrics = metrics
        self.series = series
        self.tracing = tracing

    def edge_steps(self) -> tuple[Step, Step] | None:
        """The edge's first and last steps; None when neither metrics nor tracing is on."""
        if self.metrics is None and self.tracing is None:
            return None
        return _First(self), _Last(self)

    # -- the edge ----------------------------------------------------------------------------
    def request_begin(self, req: Request) -> None:
        req.observed = time.perf_counter()
        if self.tracing is not None:
            trace = self.tracing.begin(f"{_SERVICE}/{req.method}", incoming_traceparent.get(),
                                       {"rpc.system": "grpc", "rpc.service": _SERVICE, "rpc.method": req.method,
                                        "mlbridge.tenant": req.caller.tenant, "mlbridge.bridge": req.bridge or "",
                                        "mlbridge.command": req.command or req.action})
            current.set(trace)

    def request_end(self, req: Request, outcome: Outcome) -> None:
        err = outcome.error
        code = "OK" if outcome.ok else err.code if err is not None else "CANCELLED"
        if self.metrics is not None:
            started = req.observed if isinstance(req.observed, float) else time.perf_counter()
            command = req.command if req.action == "call" else req.action
            self.metrics.call_done(req.bridge, req.caller.tenant, command, code, time.perf_counter() - started)
            if isinstance(err, PermissionDenied):
                self.metrics.denied(req.caller.tenant, str(err.details.get("rule") or ""))
            elif isinstance(err, QuotaExceeded):
                self.metrics.over_quota(req.caller.tenant, str(err.details.get("quota") or ""))
        trace = current.get()
        if trace is not None and self.tracing is not None:
            current.set(None)
            if req.bridge:
                trace.root.attributes["mlbridge.bridge"] = req.bridge
            self.tracing.finish(trace, "" if code == "OK" else code)

    def auth_failed(self) -> None:
        if self.metrics is not None:
            self.metrics.auth_failures.inc()

    # -- the probe ------------------------------------------------------------------------------
    def acquire_begin(self, bridge: str) -> Any:
        return time.perf_counter()

    def acquire_end(self, token: Any, bridge: str) -> None:
        if self.metrics is not None:
            self.metrics.acquired(bridge, time.perf_counter() - token)

    def claimed(self, bridge: str, tenant: str, origin: str, started_ns: int, ended_ns: int) -> None:
        self.usage.record_worker(tenant, bridge)
        if self.metrics is not None:
            self.metrics.claimed(bridge, origin, (ended_ns - started_ns) / 1e9)
        trace = current.get()
        if trace is not None:
            trace.add("claim", started_ns, ended_ns, {"mlbridge.origin": origin or "spare"})

    def runtime_begin(self, bridge: str, req: rpb.CallRequest) -> Any:
        trace = current.get()
        span = None
        if trace is not None:
            span = trace.open("runtime call", {"mlbridge.bridge": bridge, "mlbridge.command": req.command},
                              SpanKind.CLIENT)
            req.traceparent = trace.traceparent(span)
        return time.perf_counter(), trace, span, req.resource_type

    def runtime_end(self, token: Any, bridge: str, tenant: str, command: str, metadata: Mapping[str, str] | None,
                    error: MLBridgeError | None) -> None:
        started, trace, span, resource_type = token
        code = "OK" if error is None else error.code
        tokens_in = tokens_out = 0
        if metadata:
            if meta.USAGE in metadata:
                tokens_in, tokens_out = _tokens(metadata)
            if self.series is not None and meta.METRICS in metadata:
                self.series.add(bridge, tenant, metadata[meta.METRICS])
            if trace is not None and meta.SPANS in metadata:
                attributes = {"mlbridge.bridge": bridge, "mlbridge.command": command}
                if resource_type:
                    attributes["mlbridge.resource_type"] = resource_type
                trace.add_remote(metadata[meta.SPANS], span, command, attributes)
        self.usage.record_call(tenant, bridge, ok=error is None, tokens_in=tokens_in, tokens_out=tokens_out)
        if self.metrics is not None:
            self.metrics.runtime_done(bridge, command, code, time.perf_counter() - started)
        if trace is not None:
            trace.close(span, "" if error is None else code)

    def housekeeping(self, bridge: str, tenant: str, metadata: Mapping[str, str]) -> None:
        if self.series is not None and meta.METRICS in metadata:
            self.series.add(bridge, tenant, metadata[meta.METRICS])

    # -- workers ----------------------------------------------------------------------------------
    def on_worker_event(self, event: str, worker: Worker, extra: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.worker_event(event, worker.bridge, extra, worker.ready_after_s)
        if event == "worker_start":
            # CPU from here on is billed to the tenant that claims it (setup is not; an idle spare uses ~none).
            worker.accounted["cpu_ns"] = self.usage_of(worker.handle).get("cpu_ns", 0)
        elif event in ("worker_kill", "worker_stop") and worker.tenant:
            self._account(worker, extra.get("usage") or {})

    def _account(self, worker: Worker, figures: Mapping[str, int]) -> None:
        cpu = figures.get("cpu_ns")
        if cpu is not None:
            last = worker.accounted.get("cpu_ns", 0)
            if cpu > last:
                self.usage.record_cpu(worker.tenant, worker.bridge, (cpu - last) / 1e9)
                worker.accounted["cpu_ns"] = cpu
        peak = figures.get("memory_peak_bytes") or figures.get("memory_bytes")
        if peak:
            self.usage.record_memory(worker.tenant, worker.bridge, peak)

    def sample(self, workers: list[Worker]) -> None:
        """Account the CPU and memory of claimed workers so far, and write the usage book when due."""
        for worker in workers:
            if worker.tenant and worker.state in ("ready", "draining"):
                try:
                    self._account(worker, self.usage_of(worker.handle))
                except Exception as exc:  # noqa: BLE001 - accounting never stops the loop
                    log.warning("usage sample of %s failed: %s", worker.id, exc)
        self.usage.maybe_flush()

    def close(self) -> None:
        self.usage.close()
        if self.tracing is not None:
            self.tracing.shutdown()

