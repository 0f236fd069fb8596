"""mlbridge's Prometheus series: calls, workers, policy and egress, per-worker resources, gRPC.

Counters and histograms are updated as things happen (the edge, the pools'
events, the call runner); gauges of live state (workers by state, each live
worker's memory, CPU and pids, bridge health) are read when Prometheus
scrapes. Label values are bounded: bridges are the configured ones, tenants
the policy's, commands at most :data:`MAX_COMMANDS` per bridge (then
``other``; unknown commands are ``other`` from the start), and per-worker
series exist only while the worker lives. No call id, resource id or free
text is ever a label.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runtimes.wire.version import __version__

__all__ = ["GrpcServerMetrics", "LiveState", "OrchestratorMetrics"]

#: Distinct command labels kept per bridge; later ones are "other".
MAX_COMMANDS = 64
#: Codes that mean the command itself was not found: its name is not a label.
_UNKNOWN = frozenset({"UNKNOWN_COMMAND", "UNKNOWN_BRIDGE"})
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_START = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class OrchestratorMetrics:
    """The series updated as things happen; children are cached, so a hot path costs a dict lookup and an add.

    Args:
        registry: where the series are registered.
        bridges: the configured bridges (anything else is labelled ``other``).
    """

    def __init__(self, registry: CollectorRegistry, bridges: Iterable[str]) -> None:
        self.bridges = frozenset(bridges)
        self._commands: dict[str, set[str]] = {}
        self._children: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()
        r = registry
        self.calls = Counter("mlbridge_calls", "Public calls by bridge, tenant, command and outcome code",
                             ["bridge", "tenant", "command", "code"], registry=r)
        self.call_seconds = Histogram("mlbridge_call_duration_seconds", "Whole public calls, at the edge",
                                      ["bridge", "command"], buckets=_LATENCY, registry=r)
        self.acquire_seconds = Histogram("mlbridge_call_acquire_seconds",
                                         "Waiting for the tenant's worker: queue, claim and restore",
                                         ["bridge"], buckets=_LATENCY, registry=r)
        self.runtime_seconds = Histogram("mlbridge_call_runtime_seconds", "Round trips to a worker's runtime",
                                         ["bridge", "command"], buckets=_LATENCY, registry=r)
        self.claim_seconds = Histogram("mlbridge_claim_duration_seconds", "Handing a worker to a tenant",
                                       ["bridge", "origin"], buckets=_LATENCY, registry=r)
        self.starts = Counter("mlbridge_worker_starts", "Workers that became ready, by why and how they started",
                              ["bridge", "reason", "origin"], registry=r)
        self.start_seconds = Histogram("mlbridge_worker_start_seconds", "Worker start to ready",
                                       ["bridge", "origin"], buckets=_START, registry=r)
        self.deaths = Counter("mlbridge_worker_deaths", "Workers that died or were killed, by cause",
                              ["bridge", "cause"], registry=r)
        self.stops = Counter("mlbridge_worker_stops", "Workers stopped in order, by reason",
                             ["bridge", "reason"], registry=r)
        self.denials = Counter("mlbridge_policy_denials", "Requests the policy denied, by rule",
                               ["tenant", "rule"], registry=r)
        self.quota = Counter("mlbridge_quota_rejections", "Requests refused over a quota",
                             ["tenant", "quota"], registry=r)
        self.auth_failures = Counter("mlbridge_auth_failures", "Requests with no valid credentials", registry=r)
        self.egress = Counter("mlbridge_egress_decisions", "Egress proxy decisions",
                              ["bridge", "tenant", "decision"], registry=r)
        self.dropped = Counter("mlbridge_bridge_series_dropped", "Bridge-declared series the orchestrator refused",
                               ["bridge", "reason"], registry=r)
        info = Gauge("mlbridge_build_info", "mlbridge version and backend", ["version", "backend"], registry=r)
        self._info = info

    def set_backend(self, backend: str) -> None:
        self._info.labels(__version__, backend).set(1)

    # -- labels --------------------------------------------------------------------
    def bridge_label(self, bridge: str | None) -> str:
        return bridge if bridge in self.bridges else "other"

    def command_label(self, bridge: str, command: str | None, code: str) -> str:
        if not command or code in _UNKNOWN:
            return "other"
        seen = self._commands.setdefault(bridge, set())
        if command in seen:
            return command
        if len(seen) >= MAX_COMMANDS:
            return "other"
        seen.add(command)
        return command

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children[key] = metric.labels(*labels)
        return child

    # -- events --------------------------------------------------------------------
    def call_done(self, bridge: str | None, tenant: str, command: str | None, code: str, seconds: float) -> None:
        b = self.bridge_label(bridge)
        c = self.command_label(b, command, code)
        self._child(self.calls, b, tenant, c, code).inc()
        self._child(self.call_seconds, b, c).observe(seconds)

    def acquired(self, bridge: str, seconds: float) -> None:
        self._child(self.acquire_seconds, bridge).observe(seconds)

    def runtime_done(self, bridge: str, command: str, code: str, seconds: float) -> None:
        self._child(self.runtime_seconds, bridge, self.command_label(bridge, command, code)).observe(seconds)

    def claimed(self, bridge: str, origin: str, seconds: float) -> None:
        self._child(self.claim_seconds, bridge, origin or "spare").observe(seconds)

    def worker_event(self, event: str, bridge: str, extra: dict[str, Any], ready_s: float) -> None:
        if event == "worker_start":
            origin = str(extra.get("origin") or "cold")
            self._child(self.starts, bridge, str(extra.get("reason") or "refill"), origin).inc()
            self._child(self.start_seconds, bridge, origin).observe(ready_s)
        elif event == "worker_kill":
            self._child(self.deaths, bridge, str(extra.get("cause") or "unhealthy")).inc()
        elif event == "worker_stop":
            self._child(self.stops, bridge, str(extra.get("cause") or "shutdown")).inc()

    def denied(self, tenant: str, rule: str) -> None:
        self._child(self.denials, tenant, rule or "default-deny").inc()

    def over_quota(self, tenant: str, quota: str) -> None:
        self._child(self.quota, tenant, quota or "unknown").inc()

    def egress_decision(self, allowed: bool, tenant: str, bridge: str) -> None:
        self._child(self.egress, self.bridge_label(bridge), tenant or "", "allow" if allowed else "deny").inc()

    def series_dropped(self, bridge: str, reason: str) -> None:
        self._child(self.dropped, self.bridge_label(bridge), reason).inc()


class LiveState(Collector):
    """Gauges read at scrape time from the pools and the backend.

    Args:
        pools: returns the pools by bridge name.
        usage: a worker's handle -> its backend figures (``memory_bytes``, ``cpu_ns``, ``pids``, ...).
        resources: bridge -> resources held (the registry's count).
    """

    def __init__(self, pools: Callable[[], dict[str, Any]], usage: Callable[[Any], dict[str, int]],
                 resources: Callable[[], dict[str, int]] | None = None,
                 circuits: Callable[[], dict[str, dict[str, dict[str, Any]]]] | None = None) -> None:
        self.pools = pools
        self.usage = usage
        self.resources = resources
        self.circuits = circuits

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        workers = GaugeMetricFamily("mlbridge_workers", "Workers by state", labels=["bridge", "state"])
        target = GaugeMetricFamily("mlbridge_spare_target", "Ready spares the pool aims for", labels=["bridge"])
        up = GaugeMetricFamily("mlbridge_bridge_up", "1 while the bridge serves new tenants", labels=["bridge"])
        in_flight = GaugeMetricFamily("mlbridge_calls_in_flight", "Calls running on workers", labels=["bridge"])
        failures = CounterMetricFamily("mlbridge_worker_start_failures", "Worker starts that failed",
                                       labels=["bridge"])
        per = ["bridge", "worker", "tenant"]
        memory = GaugeMetricFamily("mlbridge_worker_memory_bytes", "Memory a live worker uses", labels=per)
        limit = GaugeMetricFamily("mlbridge_worker_memory_limit_bytes", "A live worker's memory limit", labels=per)
        cpu = CounterMetricFamily("mlbridge_worker_cpu_seconds", "CPU time a live worker used", labels=per)
        pids = GaugeMetricFamily("mlbridge_worker_pids", "Processes and threads of a live worker", labels=per)
        for name, pool in sorted(self.pools().items()):
            facts = pool.facts()
            counts = {"held": facts["held"], "starting": facts["starting"], "spare": facts["spares"],
                      "claimed": 0, "draining": 0}
            busy = 0
            for w in list(pool.workers.values()):
                busy += w.in_flight
                if w.state == "draining":
                    counts["draining"] += 1
                elif w.state == "ready" and w.tenant:
                    counts["claimed"] += 1
                if w.state not in ("ready", "draining"):
                    continue
                figures = self.usage(w.handle)
                labels = [name, w.id, w.tenant]
                if "memory_bytes" in figures:
                    memory.add_metric(labels, figures["memory_bytes"])
                if "memory_limit_bytes" in figures:
                    limit.add_metric(labels, figures["memory_limit_bytes"])
                if "cpu_ns" in figures:
                    cpu.add_metric(labels, figures["cpu_ns"] / 1e9)
                if "pids" in figures:
                    pids.add_metric(labels, figures["pids"])
            for state, n in counts.items():
                workers.add_metric([name, state], n)
            target.add_metric([name], facts["spare_target"])
            up.add_metric([name], 1 if facts["serving"] else 0)
            in_flight.add_metric([name], busy)
            failures.add_metric([name], facts["start_failures"])
        yield from (workers, target, up, in_flight, failures, memory, limit, cpu, pids)
        if self.circuits is not None:
            circuit = GaugeMetricFamily("mlbridge_circuit_open", "1 while a tenant's circuit on a bridge is open "
                                        "(its calls refused), 0 while half-open or counting failures",
                                        labels=["bridge", "tenant"])
            for bridge, tenants in sorted(self.circuits().items()):
                for tenant, facts in sorted(tenants.items()):
                    circuit.add_metric([bridge, tenant], 1 if facts["state"] == "open" else 0)
            yield circuit
        if self.resources is not None:
            res = GaugeMetricFamily("mlbridge_resources", "Resources held", labels=["bridge"])
            for name, n in sorted(self.resources().items()):
                res.add_metric([name], n)
            yield res


class _Registrar:
    """Forwards service registration to a server, wrapping each registered method handler."""

    def __init__(self, server: grpc.aio.Server, metrics: GrpcServerMetrics) -> None:
        self._server = server
        self._metrics = metrics

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        # Registered handlers are found before generic ones: every call of these methods is measured.
        wrapped = {name: self._metrics._wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, wrapped)

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


_TYPES = {(False, False): "unary", (True, False): "client_stream", (False, True): "server_stream",
          (True, True): "bidi_stream"}


class GrpcServerMetrics:
    """The conventional ``grpc_server_*`` series for every service of the public server.

    Handlers are wrapped as they are registered (:meth:`registrar`), not by a
    server interceptor: an aio interceptor costs every call an extra await of
    ``intercept_service`` and a handler lookup, about 1% of a call here.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_service", "grpc_method", "grpc_type"]
        self.started = Counter("grpc_server_started", "RPCs started on the server", labels, registry=registry)
        self.handled = Counter("grpc_server_handled", "RPCs completed on the server, by status code",
                               [*labels, "grpc_code"], registry=registry)
        self.seconds = Histogram("grpc_server_handling_seconds", "RPC handling time on the server", labels,
                                 buckets=_LATENCY, registry=registry)

    def registrar(self, server: grpc.aio.Server) -> Any:
        """A stand-in for ``server`` to register services with: their method handlers are measured."""
        return _Registrar(server, self)

    def _wrap(self, method: str, handler: Any) -> Any:
        service, _, name = method.lstrip("/").rpartition("/")
        kind = _TYPES[(bool(handler.request_streaming), bool(handler.response_streaming))]
        started = self.started.labels(service, name, kind)
        seconds = self.seconds.labels(service, name, kind)
        handled: dict[str, Any] = {}

        def done(code: str) -> None:
            child = handled.get(code)
            if child is None:
                child = handled[code] = self.handled.labels(service, name, kind, code)
            child.inc()

        def code_of(context: Any, exc: BaseException | None) -> str:
            code = context.code() if hasattr(context, "code") else None
            if isinstance(code, grpc.StatusCode):
                return code.name
            if exc is None:
                return "OK"
            return "CANCELLED" if isinstance(exc, (GeneratorExit, asyncio.CancelledError)) else "UNKNOWN"

        if handler.response_streaming:
            inner = handler.unary_stream if not handler.request_streaming else handler.stream_stream

            async def streaming(request: Any, context: Any) -> Any:
                started.inc()
                t0 = time.perf_counter()
                exc: BaseException | None = None
                try:
                    async for item in inner(request, context):
                        yield item
                except BaseException as e:
                    exc = e
                    raise
                finally:
                    seconds.observe(time.perf_counter() - t0)
                    done(code_of(context, exc))

            if handler.request_streaming:
                return handler._replace(stream_stream=streaming)
            return handler._replace(unary_stream=streaming)

        inner = handler.unary_unary if not handler.request_streaming else handler.stream_unary

        async def unary(request: Any, context: Any) -> Any:
            started.inc()
            t0 = time.perf_counter()
            exc: BaseException | None = None
            try:
                return await inner(request, context)
            except BaseException as e:
                exc = e
                raise
            finally:
                seconds.observe(time.perf_counter() - t0)
                done(code_of(context, exc))

        if handler.request_streaming:
            return handler._replace(stream_unary=unary)
        return handler._replace(unary_unary=unary)

