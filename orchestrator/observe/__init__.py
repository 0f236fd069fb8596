"""Observability: usage accounting, Prometheus metrics, OpenTelemetry traces, bridge health.

:class:`Observability` assembles them for one :class:`~orchestrator.app.App`
from its configuration: usage accounting always (``<state_dir>/usage.sqlite``),
metrics when ``metrics_listen`` is set (an HTTP endpoint serving ``/metrics``),
traces when ``tracing`` is set (or a :class:`Tracing` is handed in). The
domain service reports to its :class:`Observer` through the
:class:`~orchestrator.probe.Probe` seam and never imports any of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server

from runtimes.wire.errors import ConfigError

from ..backends.base import Backend
from ..config import Config
from ..usage import UsageBook
from .bridge_series import BridgeSeries
from .metrics import GrpcServerMetrics, LiveState, OrchestratorMetrics
from .observer import Observer
from .tracing import Tracing

if TYPE_CHECKING:
    from ..service import Orchestrator

__all__ = ["Observability", "Observer", "Tracing"]

log = logging.getLogger("mlbridge.observe")

#: How often claimed workers' CPU and memory are sampled into usage accounting (and the book written).
SAMPLE_EVERY_S = 15.0


def _host_port(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"metrics_listen {listen!r} is not host:port (e.g. 127.0.0.1:9464)")
    return host.strip("[]") or "127.0.0.1", int(port)


class Observability:
    """Usage accounting, metrics and traces of one orchestrator.

    Args:
        config: ``state_dir``, ``metrics_listen`` and ``tracing`` are read.
        backend: reads each worker's figures (``Backend.usage``).
        tracing: a tracer instead of the one ``config.tracing`` describes (tests: an in-memory exporter).
    """

    def __init__(self, config: Config, backend: Backend, *, tracing: Tracing | None = None) -> None:
        self.config = config
        self.usage = UsageBook(config.state_dir / "usage.sqlite")
        self.registry: CollectorRegistry | None = None
        self.grpc: GrpcServerMetrics | None = None
        metrics = series = None
        if config.metrics_listen:
            _host_port(config.metrics_listen)
            disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: they double the page
            self.registry = CollectorRegistry(auto_describe=False)
            metrics = OrchestratorMetrics(self.registry, config.bridges)
            metrics.set_backend(backend.name)
            series = BridgeSeries(on_drop=metrics.series_dropped)
            self.registry.register(series)
            self.grpc = GrpcServerMetrics(self.registry)
        if tracing is None and config.tracing is not None:
            tracing = Tracing.otlp(config.tracing.otlp_endpoint, sample_ratio=config.tracing.sample_ratio,
                                   insecure=config.tracing.insecure)
        self.observer = Observer(self.usage, backend.usage, metrics=metrics, series=series, tracing=tracing)
        self._http: Any = None
        self._http_thread: threading.Thread | None = None
        self._sampler: asyncio.Task[None] | None = None
        self.metrics_port = 0

    @property
    def metrics(self) -> OrchestratorMetrics | None:
        return self.observer.metrics

    async def start(self, service: Orchestrator) -> None:
        """Read live state from ``service`` at scrape time, serve ``/metrics``, sample usage."""
        if self.registry is not None and self.config.metrics_listen:
            self.registry.register(LiveState(lambda: service.pools, service.backend.usage,
                                             service.registry.by_bridge, service.circuits.snapshot))
            host, port = _host_port(self.config.metrics_listen)
            try:
                self._http, self._http_thread = start_http_server(port, host, registry=self.registry)
            except OSError as exc:
                raise ConfigError(f"cannot serve metrics on {self.config.metrics_listen}: {exc.strerror or exc}; "
                                  f"choose another metrics_listen") from None
            self.metrics_port = self._http.server_port
            log.info("metrics on http://%s:%d/metrics", host, self.metrics_port)
        self._sampler = asyncio.get_running_loop().create_task(self._sample(service))

    async def _sample(self, service: Orchestrator) -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY_S)
            try:
                self.observer.sample([w for p in service.pools.values() for w in list(p.workers.values())])
            except Exception as exc:  # noqa: BLE001 - accounting must go on
                log.warning("usage sampling failed: %s", exc)

    async def stop(self, service: Orchestrator | None = None) -> None:
        """Stop sampling (a last sample first), the metrics endpoint and the exporters; write the book."""
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if service is not None:
            with contextlib.suppress(Exception):
                self.observer.sample([w for p in service.pools.values() for w in list(p.workers.values())])
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        self.observer.close()
