"""In-memory tenant quota accounting: concurrent calls, calls per minute, counts, sizes.

One :class:`QuotaTracker` per orchestrator process. Its lock is a plain
``threading.Lock`` held only for a few dictionary operations and never across
an ``await``, so the same tracker is safe from threads and from asyncio code.
Counts live in memory only: a restart forgets the per-minute window.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from runtimes.wire.errors import QuotaExceeded

__all__ = ["CallSlot", "QuotaTracker", "Quotas"]

WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class Quotas:
    """A tenant's effective quotas; ``None`` means unlimited."""

    max_concurrent_calls: int | None = None
    max_calls_per_minute: int | None = None
    max_resources: int | None = None
    max_workers: int | None = None
    max_payload_bytes: int | None = None


@dataclass(eq=False, slots=True)
class CallSlot:
    """A started call, handed back to :meth:`QuotaTracker.end_call`."""

    tenant: str
    ended: bool = field(default=False)


def _exceeded(tenant: str, quota: str, limit: int, note: str = "", **extra: float) -> QuotaExceeded:
    suffix = f": {note}" if note else ""
    return QuotaExceeded(
        f"tenant '{tenant}' hit quota {quota} ({limit}){suffix}",
        details={"quota": quota, "limit": limit, **extra},
    )


class QuotaTracker:
    """Counts each tenant's calls in flight and calls started in the last minute.

    Args:
        clock: monotonic seconds; tests pass a fake one.
        window_s: length of the sliding window behind ``max_calls_per_minute``.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, window_s: float = WINDOW_S
    ) -> None:
        self._clock = clock
        self._window_s = window_s
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._started: dict[str, deque[float]] = {}

    def start_call(self, tenant: str, quotas: Quotas) -> CallSlot:
        """Admit one call, or refuse it without counting it.

        Args:
            tenant: the calling tenant.
            quotas: that tenant's quotas (``policy.quotas_for(tenant)``).

        Returns:
            A slot to pass to :meth:`end_call` exactly when the call finishes.

        Raises:
            QuotaExceeded: ``max_concurrent_calls`` or ``max_calls_per_minute`` is
                reached; the latter carries ``details["retry_after_s"]``.
        """
        with self._lock:
            now = self._clock()
            started = self._started.setdefault(tenant, deque())
            while started and started[0] <= now - self._window_s:
                started.popleft()
            in_flight = self._in_flight.get(tenant, 0)
            limit = quotas.max_concurrent_calls
            if limit is not None and in_flight >= limit:
                raise _exceeded(tenant, "max_concurrent_calls", limit)
            limit = quotas.max_calls_per_minute
            if limit is not None and len(started) >= limit:
                retry = started[0] + self._window_s - now if started else self._window_s
                raise _exceeded(
                    tenant, "max_calls_per_minute", limit, retry_after_s=round(max(retry, 0.0), 3)
                )
            started.append(now)
            self._in_flight[tenant] = in_flight + 1
            return CallSlot(tenant)

    def end_call(self, slot: CallSlot) -> None:
        """Release a slot from :meth:`start_call`; ending it twice does nothing."""
        with self._lock:
            if slot.ended:
                return
            slot.ended = True
            left = self._in_flight.get(slot.tenant, 0) - 1
            if left > 0:
                self._in_flight[slot.tenant] = left
            else:
                self._in_flight.pop(slot.tenant, None)

    @contextmanager
    def acquire_call(self, tenant: str, quotas: Quotas) -> Iterator[CallSlot]:
        """``with tracker.acquire_call(t, q):`` around a call; works inside ``async def`` too.

        Raises:
            QuotaExceeded: as :meth:`start_call`.
        """
        slot = self.start_call(tenant, quotas)
        try:
            yield slot
        finally:
            self.end_call(slot)

    def check_resources(self, tenant: str, current_count: int, quotas: Quotas) -> None:
        """Call before creating a resource, with how many the tenant holds now.

        Raises:
            QuotaExceeded: creating one more would pass ``max_resources``.
        """
        limit = quotas.max_resources
        if limit is not None and current_count >= limit:
            raise _exceeded(tenant, "max_resources", limit, f"{current_count} resources exist")

    def check_workers(self, tenant: str, current_count: int, quotas: Quotas) -> None:
        """Call before starting or claiming a worker, with how many the tenant holds now.

        Raises:
            QuotaExceeded: one more worker would pass ``max_workers``.
        """
        limit = quotas.max_workers
        if limit is not None and current_count >= limit:
            raise _exceeded(tenant, "max_workers", limit, f"{current_count} workers running")

    def check_payload(self, tenant: str, nbytes: int, quotas: Quotas) -> None:
        """Call with the size of a request's arguments plus attachments.

        Raises:
            QuotaExceeded: ``nbytes`` is over ``max_payload_bytes``.
        """
        limit = quotas.max_payload_bytes
        if limit is not None and nbytes > limit:
            raise _exceeded(tenant, "max_payload_bytes", limit, f"request is {nbytes} bytes")

    def in_flight(self, tenant: str) -> int:
        """Calls the tenant has running now."""
        with self._lock:
            return self._in_flight.get(tenant, 0)

    def calls_in_window(self, tenant: str) -> int:
        """Calls the tenant started within the sliding window."""
        with self._lock:
            now = self._clock()
            return sum(1 for t in self._started.get(tenant, ()) if t > now - self._window_s)

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Per-tenant ``{"in_flight": n, "calls_in_window": m}`` for stats."""
        with self._lock:
            tenants = set(self._in_flight) | set(self._started)
        return {
            t: {"in_flight": self.in_flight(t), "calls_in_window": self.calls_in_window(t)}
            for t in sorted(tenants)
        }
