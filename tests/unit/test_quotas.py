"""Quota accounting: concurrency, the per-minute sliding window, counts and sizes."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from orchestrator.policy import Quotas, QuotaTracker
from runtimes.wire.errors import QuotaExceeded


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tracker(clock: FakeClock) -> QuotaTracker:
    return QuotaTracker(clock=clock)


def test_concurrency_limit_names_tenant_quota_and_limit(tracker: QuotaTracker) -> None:
    quotas = Quotas(max_concurrent_calls=2)
    first = tracker.start_call("bob", quotas)
    tracker.start_call("bob", quotas)
    with pytest.raises(QuotaExceeded) as info:
        tracker.start_call("bob", quotas)
    assert info.value.message == "tenant 'bob' hit quota max_concurrent_calls (2)"
    assert info.value.details == {"quota": "max_concurrent_calls", "limit": 2}
    assert info.value.code == "RESOURCE_EXHAUSTED"
    assert tracker.in_flight("bob") == 2
    tracker.end_call(first)
    tracker.start_call("bob", quotas)
    assert tracker.in_flight("bob") == 2


def test_ending_a_call_twice_releases_one_slot(tracker: QuotaTracker) -> None:
    quotas = Quotas(max_concurrent_calls=2)
    a = tracker.start_call("bob", quotas)
    tracker.start_call("bob", quotas)
    tracker.end_call(a)
    tracker.end_call(a)
    assert tracker.in_flight("bob") == 1


def test_acquire_call_releases_on_error(tracker: QuotaTracker) -> None:
    quotas = Quotas(max_concurrent_calls=1)
    with pytest.raises(RuntimeError), tracker.acquire_call("bob", quotas):
        assert tracker.in_flight("bob") == 1
        raise RuntimeError("handler failed")
    assert tracker.in_flight("bob") == 0
    with tracker.acquire_call("bob", quotas):
        pass


def test_tenants_are_counted_apart(tracker: QuotaTracker) -> None:
    quotas = Quotas(max_concurrent_calls=1, max_calls_per_minute=1)
    tracker.start_call("alice", quotas)
    tracker.start_call("bob", quotas)
    with pytest.raises(QuotaExceeded, match="tenant 'alice'"):
        tracker.start_call("alice", quotas)


def test_per_minute_window_slides(tracker: QuotaTracker, clock: FakeClock) -> None:
    quotas = Quotas(max_calls_per_minute=3)
    for offset in (0.0, 10.0, 20.0):
        clock.now = 1000.0 + offset
        tracker.end_call(tracker.start_call("bob", quotas))
    clock.now = 1059.0
    with pytest.raises(QuotaExceeded) as info:
        tracker.start_call("bob", quotas)
    assert info.value.details["quota"] == "max_calls_per_minute"
    assert info.value.details["limit"] == 3
    assert info.value.details["retry_after_s"] == pytest.approx(1.0)
    clock.now = 1060.0  # the call at t=1000 has left the window; the others have not
    tracker.end_call(tracker.start_call("bob", quotas))
    with pytest.raises(QuotaExceeded):
        tracker.start_call("bob", quotas)
    assert tracker.calls_in_window("bob") == 3
    clock.now = 1081.0  # now the calls at 1010 and 1020 have left too
    assert tracker.calls_in_window("bob") == 1


def test_refused_calls_do_not_use_up_the_window(tracker: QuotaTracker) -> None:
    quotas = Quotas(max_concurrent_calls=1, max_calls_per_minute=2)
    slot = tracker.start_call("bob", quotas)
    for _ in range(5):
        with pytest.raises(QuotaExceeded, match="max_concurrent_calls"):
            tracker.start_call("bob", quotas)
    tracker.end_call(slot)
    tracker.start_call("bob", quotas)
    assert tracker.calls_in_window("bob") == 2


def test_none_means_unlimited(tracker: QuotaTracker) -> None:
    quotas = Quotas()
    for _ in range(1000):
        tracker.start_call("bob", quotas)
    tracker.check_resources("bob", 10**6, quotas)
    tracker.check_workers("bob", 10**6, quotas)
    tracker.check_payload("bob", 10**12, quotas)
    assert tracker.in_flight("bob") == 1000


def test_zero_forbids(tracker: QuotaTracker) -> None:
    with pytest.raises(QuotaExceeded):
        tracker.start_call("bob", Quotas(max_calls_per_minute=0))
    with pytest.raises(QuotaExceeded):
        tracker.check_resources("bob", 0, Quotas(max_resources=0))


@pytest.mark.parametrize(
    ("method", "quota", "ok", "over"),
    [
        ("check_resources", "max_resources", 4, 5),
        ("check_workers", "max_workers", 4, 5),
        ("check_payload", "max_payload_bytes", 5, 6),
    ],
)
def test_count_and_size_limits(
    tracker: QuotaTracker, method: str, quota: str, ok: int, over: int
) -> None:
    quotas = Quotas(**{quota: 5})
    check = getattr(tracker, method)
    check("bob", ok, quotas)
    with pytest.raises(QuotaExceeded) as info:
        check("bob", over, quotas)
    assert info.value.message.startswith(f"tenant 'bob' hit quota {quota} (5)")
    assert info.value.details == {"quota": quota, "limit": 5}


def test_threads_never_exceed_the_concurrency_limit() -> None:
    tracker = QuotaTracker()
    quotas = Quotas(max_concurrent_calls=3)
    lock = threading.Lock()
    running, peak, admitted, refused = [0], [0], [0], [0]

    def worker() -> None:
        for _ in range(200):
            try:
                with tracker.acquire_call("bob", quotas):
                    with lock:
                        running[0] += 1
                        peak[0] = max(peak[0], running[0])
                        admitted[0] += 1
                    time.sleep(0)
                    with lock:
                        running[0] -= 1
            except QuotaExceeded:
                with lock:
                    refused[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 <= peak[0] <= 3
    assert admitted[0] + refused[0] == 12 * 200
    assert tracker.in_flight("bob") == 0


def test_asyncio_tasks_share_the_limit() -> None:
    tracker = QuotaTracker()
    quotas = Quotas(max_concurrent_calls=2)

    async def call() -> bool:
        try:
            with tracker.acquire_call("bob", quotas):
                await asyncio.sleep(0.01)
            return True
        except QuotaExceeded:
            return False

    async def main() -> list[bool]:
        return await asyncio.gather(*(call() for _ in range(6)))

    results = asyncio.run(main())
    assert results.count(True) == 2
    assert tracker.in_flight("bob") == 0


def test_snapshot(tracker: QuotaTracker) -> None:
    tracker.start_call("alice", Quotas())
    assert tracker.snapshot() == {"alice": {"in_flight": 1, "calls_in_window": 1}}
