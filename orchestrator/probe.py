"""What the domain service tells observability, and nothing more.

The pools, the call runner and the service report here as things happen (a
worker acquired, a claim made, a runtime call done, a housekeeping reply);
:class:`orchestrator.observe.Observer` turns the reports into metrics, usage
records and trace spans. The domain code imports only this module: no
Prometheus, no OpenTelemetry. :class:`NullProbe` does nothing, for tests and
tools that run the service bare.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from runtimes.wire.errors import MLBridgeError
from runtimes.wire.proto import runtime_pb2 as rpb

__all__ = ["NullProbe", "Probe"]


class Probe(Protocol):
    """Reports from the domain service; every method is cheap and never raises."""

    def acquire_begin(self, bridge: str) -> Any:
        """A call starts waiting for one of its tenant's workers; the token goes to :meth:`acquire_end`."""
        ...

    def acquire_end(self, token: Any, bridge: str) -> None:
        """The worker was found (or the wait failed)."""
        ...

    def claimed(self, bridge: str, tenant: str, origin: str, started_ns: int, ended_ns: int) -> None:
        """A worker (``origin``: spare, held or cold) was handed to ``tenant``; times from ``time.time_ns()``."""
        ...

    def runtime_begin(self, bridge: str, req: rpb.CallRequest) -> Any:
        """A request is about to go to a runtime; may set ``req.traceparent``. The token goes to :meth:`runtime_end`."""
        ...

    def runtime_end(self, token: Any, bridge: str, tenant: str, command: str, metadata: Mapping[str, str] | None,
                    error: MLBridgeError | None) -> None:
        """The runtime answered (``metadata``: the reply's) or the call to it failed (``error``)."""
        ...

    def housekeeping(self, bridge: str, tenant: str, metadata: Mapping[str, str]) -> None:
        """The reply metadata of one of the orchestrator's own calls to a worker (ping, preload, health)."""
        ...


class NullProbe:
    """A :class:`Probe` that does nothing."""

    def acquire_begin(self, bridge: str) -> Any:
        return None

    def acquire_end(self, token: Any, bridge: str) -> None:
        pass

    def claimed(self, bridge: str, tenant: str, origin: str, started_ns: int, ended_ns: int) -> None:
        pass

    def runtime_begin(self, bridge: str, req: rpb.CallRequest) -> Any:
        return None

    def runtime_end(self, token: Any, bridge: str, tenant: str, command: str, metadata: Mapping[str, str] | None,
                    error: MLBridgeError | None) -> None:
        pass

    def housekeeping(self, bridge: str, tenant: str, metadata: Mapping[str, str]) -> None:
        pass
