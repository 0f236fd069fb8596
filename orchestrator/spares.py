"""How many ready spares a bridge keeps: as many as its busiest recent burst of claims.

A claim takes a ready spare; the pool starts a replacement, which takes as
long as a worker takes to start (a fraction of a second for the core runtime,
seconds for torch). Claims that arrive faster than that find the spares gone.
So the pool remembers, for ``window_s`` seconds, the most claims that arrived
within any ``burst_s`` seconds, and keeps that many spares ready, never fewer
than the bridge's ``pool_size`` nor more than its ``max_spares``, nor more
than half the host's available memory allows at the bridge's memory limit.
When the burst is forgotten the target falls back, and spares above it that
have waited long enough are retired one at a time.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

__all__ = ["BURST_S", "SpareDemand", "memory_cap"]

#: Claims this close together count as one burst.
BURST_S = 2.0
#: Share of the host's available memory that spares may take, at the bridge's memory limit each.
MEMORY_SHARE = 0.5


def _available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_cap(memory_limit: int, spares_now: int, meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The most spares the host's memory allows: those running now plus what half the available memory fits.

    None when the host does not say (no /proc/meminfo) or there is no memory limit.
    """
    available = _available_memory(meminfo)
    if available is None or memory_limit <= 0:
        return None
    return spares_now + int(available * MEMORY_SHARE // memory_limit)


class SpareDemand:
    """Claims of one bridge over time, and the spare count they call for.

    Args:
        minimum: spares kept however quiet it is (``pool_size``).
        maximum: spares kept however busy it is (``max_spares``).
        window_s: how long a burst is remembered.
        burst_s: claims this close together count as one burst.
        clock: monotonic seconds.
    """

    def __init__(self, minimum: int, maximum: int, window_s: float, *, burst_s: float = BURST_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.minimum = minimum
        self.maximum = max(minimum, maximum)
        self.window_s = window_s
        self.burst_s = burst_s
        self._clock = clock
        # Enough timestamps to see a burst of ``maximum`` claims; older ones only add to the count of a busy bridge.
        self._claims: deque[float] = deque(maxlen=max(64, 4 * self.maximum))
        self.claims_total = 0

    def record_claim(self) -> None:
        self._claims.append(self._clock())
        self.claims_total += 1

    def peak(self) -> int:
        """The most claims within any ``burst_s`` seconds of the last ``window_s``."""
        now = self._clock()
        while self._claims and now - self._claims[0] > self.window_s:
            self._claims.popleft()
        best = 0
        start = 0
        times = self._claims
        for end in range(len(times)):
            while times[end] - times[start] > self.burst_s:
                start += 1
            best = max(best, end - start + 1)
        return best

    def target(self, cap: int | None = None) -> int:
        """Spares to keep ready: the recent peak, within [minimum, maximum] and under ``cap``."""
        want = min(self.maximum, max(self.minimum, self.peak()))
        if cap is not None:
            want = min(want, max(self.minimum, cap))
        return want

    def rate(self, over_s: float = 60.0) -> float:
        """Claims per minute over the last ``over_s`` seconds (for status)."""
        now = self._clock()
        n = sum(1 for t in self._claims if now - t <= over_s)
        return round(n * 60.0 / over_s, 1) if over_s > 0 else math.nan
