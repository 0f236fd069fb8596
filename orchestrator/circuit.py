"""Circuit breakers per (bridge, tenant): stop starting container after container for a tenant whose workers keep dying.

A circuit counts a tenant's consecutive worker failures on one bridge: its
workers dying (out of memory, killed, exited, stuck, unhealthy) and its
claims failing because no worker could be started. At ``failures`` in a
row it opens: the tenant's calls to that bridge fail at once with
``UNAVAILABLE``, the reason and a retry-after, and nothing is started for
it. After ``open_s`` it is half-open: one call goes through as a probe. If
it completes (whatever its result: the worker lived), the circuit closes;
if its worker dies too, the circuit opens again for twice as long, up to
``max_open_s``. Any completed call closes the count. One tenant's circuit
never affects another tenant's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtimes.wire.errors import Unavailable

__all__ = ["Circuit", "CircuitBreakers", "CircuitSettings"]


@dataclass(frozen=True)
class CircuitSettings:
    """``failures`` in a row open a circuit (0: never); it stays open ``open_s``, doubling up to ``max_open_s``."""

    failures: int = 3
    open_s: float = 5.0
    max_open_s: float = 60.0


@dataclass
class Circuit:
    """One (bridge, tenant)'s state: ``closed``, ``open`` or ``half_open``."""

    state: str = "closed"
    failures: int = 0
    reason: str = ""
    opened_at: float = 0.0
    open_for: float = 0.0
    probing: bool = False
    opened: int = 0  # times it opened

    def snapshot(self, now: float) -> dict[str, Any]:
        left = max(0.0, self.opened_at + self.open_for - now) if self.state == "open" else 0.0
        return {"state": self.state, "failures": self.failures, "reason": self.reason,
                "retry_after_s": round(left, 1), "opened": self.opened}


class CircuitBreakers:
    """The circuits of every (bridge, tenant); ``settings(bridge)`` gives each bridge's thresholds.

    Args:
        settings: bridge -> its :class:`CircuitSettings`.
        clock: monotonic seconds (tests pass their own).
        on_change: called with (bridge, tenant, circuit) when a circuit opens, half-opens or closes.
    """

    def __init__(self, settings: Callable[[str], CircuitSettings], *, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str, str, Circuit], None] | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.on_change = on_change
        self._circuits: dict[tuple[str, str], Circuit] = {}

    def _set(self, key: tuple[str, str], circuit: Circuit, state: str) -> None:
        circuit.state = state
        if self.on_change is not None:
            self.on_change(key[0], key[1], circuit)

    def admit(self, bridge: str, tenant: str) -> bool:
        """Let a call through, or raise; True when it is the half-open circuit's probe.

        Raises:
            Unavailable: the circuit is open (or a probe is already out): the message says why and
                when to retry; details carry ``circuit``, ``reason`` and ``retry_after_s``.
        """
        circuit = self._circuits.get((bridge, tenant))
        if circuit is None or circuit.state == "closed":
            return False
        now = self.clock()
        if circuit.state == "open":
            if now < circuit.opened_at + circuit.open_for:
                raise self._refusal(bridge, tenant, circuit, circuit.opened_at + circuit.open_for - now)
            self._set((bridge, tenant), circuit, "half_open")
        if circuit.probing:
            raise self._refusal(bridge, tenant, circuit, 1.0)
        circuit.probing = True
        return True

    @staticmethod
    def _refusal(bridge: str, tenant: str, circuit: Circuit, retry_after: float) -> Unavailable:
        retry = round(max(retry_after, 0.1), 1)
        return Unavailable(
            f"bridge {bridge!r} is refusing calls of tenant {tenant!r} for {retry:g}s: its workers failed "
            f"{circuit.failures} times in a row (last: {circuit.reason}); the circuit is {circuit.state.replace('_', '-')}",
            details={"circuit": circuit.state, "reason": circuit.reason[:200], "retry_after_s": retry,
                     "failures": circuit.failures})

    def succeeded(self, bridge: str, tenant: str) -> None:
        """A call of the tenant completed on a worker that lived: the count starts over, the circuit closes."""
        circuit = self._circuits.get((bridge, tenant))
        if circuit is None:
            return
        circuit.probing = False
        if circuit.state != "closed":
            circuit.failures = 0
            circuit.open_for = 0.0
            self._set((bridge, tenant), circuit, "closed")
        circuit.failures = 0

    def released(self, bridge: str, tenant: str) -> None:
        """A probe ended without telling whether the worker lives (cancelled, refused): another may go."""
        circuit = self._circuits.get((bridge, tenant))
        if circuit is not None:
            circuit.probing = False

    def failed(self, bridge: str, tenant: str, reason: str) -> None:
        """A worker of the tenant died, or could not be started for it."""
        if not tenant:
            return
        cfg = self.settings(bridge)
        if cfg.failures <= 0:
            return
        key = (bridge, tenant)
        circuit = self._circuits.setdefault(key, Circuit())
        circuit.failures += 1
        circuit.reason = reason[:300]
        circuit.probing = False
        if circuit.state == "half_open" or (circuit.state == "closed" and circuit.failures >= cfg.failures):
            circuit.open_for = (min(cfg.max_open_s, circuit.open_for * 2) if circuit.open_for else cfg.open_s)
            circuit.opened_at = self.clock()
            circuit.opened += 1
            self._set(key, circuit, "open")

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """bridge -> tenant -> state, for circuits that are not closed or have counted failures."""
        now = self.clock()
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for (bridge, tenant), c in list(self._circuits.items()):
            if c.state != "closed" or c.failures:
                if c.state == "open" and now >= c.opened_at + c.open_for:
                    c_state = c.snapshot(now) | {"state": "half_open"}
                else:
                    c_state = c.snapshot(now)
                out.setdefault(bridge, {})[tenant] = c_state
        return out
