"""Stopping drains: workers take no new calls, calls in flight finish first."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator import MLBridge
from runtimes.wire.errors import Unavailable
from tests.harness import Background, ServerThread, make_config


def _until(check: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_stop_lets_calls_in_flight_finish_and_takes_no_new_ones(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, bridges={"mock": {"runtime": "mock", "pool_size": 1}})
    with ServerThread(cfg) as srv, MLBridge.connect(srv.target) as mb:
        assert mb.call("mock", "mock:echo", {"warm": 1}) == {"warm": 1}
        pool = srv.orch.pools["mock"]
        results: list[Any] = []
        with Background(lambda: results.append(mb.call("mock", "mock:sleep", {"seconds": 1.0}))) as call:
            _until(lambda: any(w.in_flight for w in pool.workers.values()))
            busy = next(w for w in pool.workers.values() if w.in_flight)
            stopping = asyncio.run_coroutine_threadsafe(pool.stop(drain_s=10), srv.loop)
            _until(lambda: busy.state == "draining")
            with pytest.raises(Unavailable, match="shutting down"):
                srv.run(pool.acquire("default"))
            assert call.error() is None  # the call in flight was not cut off
            stopping.result(15)
        assert results and results[0]["slept"] >= 1.0
        assert busy.state == "dead" and not pool.workers
