"""Recovery strategies a bridge declares: retry-safe calls run once more on a replacement worker when theirs dies;
workers are recycled by calls, age or memory, after their calls in flight finish (process backend)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator import MLBridge
from runtimes.wire.errors import WorkerDied
from runtimes.wire.metadata import RETRIED
from tests.harness import ServerThread, make_config


def _kill_busy_worker(srv: ServerThread, bridge: str = "mock") -> str:
    """Kill the worker that has a call in flight; its id."""
    pool = srv.orch.pools[bridge]
    deadline = time.monotonic() + 15
    while not (busy := [w for w in pool.workers.values() if w.in_flight]):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(busy[0].handle.ref.pid, signal.SIGKILL)
    return busy[0].id


def _in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001
            out.append(exc)

    t = threading.Thread(target=run)
    t.start()
    return t, out


@pytest.fixture()
def srv(tmp_path: Path) -> Any:
    cfg = make_config(tmp_path, bridges={"mock": {"runtime": "mock", "pool_size": 1, "held": 0,
                                                  "circuit": {"failures": 10}}})
    with ServerThread(cfg) as s:
        yield s


def test_describe_says_what_is_retry_safe_and_what_keeps_state(srv: ServerThread) -> None:
    with MLBridge.connect(srv.target) as mb:
        d = mb.describe("mock")
    commands = {c["name"]: c for c in d["commands"]}
    assert commands["mock:echo"]["retry_safe"] and commands["mock:nap"]["retry_safe"]
    assert not commands["mock:sleep"]["retry_safe"]
    assert not commands["mock:spin"]["retry_safe"] and commands["common:ping"]["retry_safe"]
    types = {t["name"]: t for t in d["resource_types"]}
    assert types["ticker"]["retry_safe"] and not types["counter"]["retry_safe"]
    assert types["journal"]["keeps_state"] and not types["counter"]["keeps_state"]


def test_a_retry_safe_call_whose_worker_dies_runs_again_on_a_new_one(srv: ServerThread) -> None:
    with MLBridge.connect(srv.target) as mb:
        mb.call("mock", "mock:echo", {})
        t, out = _in_thread(lambda: mb.call_detailed("mock", "mock:nap", {"seconds": 1.0}))
        dead = _kill_busy_worker(srv)
        t.join(30)
        result = out[0]
        assert not isinstance(result, BaseException), result
        assert result.result["slept"] >= 1.0
        assert result.metadata[RETRIED].startswith("WORKER_DIED") and dead in result.metadata[RETRIED]
        assert mb.stats()["retries_total"] == 1


def test_a_call_that_is_not_retry_safe_fails_with_the_death(srv: ServerThread) -> None:
    with MLBridge.connect(srv.target) as mb:
        mb.call("mock", "mock:echo", {})
        t, out = _in_thread(lambda: mb.call("mock", "mock:spin", {"seconds": 5}))
        _kill_busy_worker(srv)
        t.join(30)
        assert isinstance(out[0], WorkerDied)
        assert mb.stats()["retries_total"] == 0


def test_a_retry_safe_resource_is_recreated_and_run_again(srv: ServerThread) -> None:
    with MLBridge.connect(srv.target) as mb:
        rid = mb.create_resource("mock", "ticker", {"label": "t"})
        t, out = _in_thread(lambda: mb.execute_resource_detailed(rid, {"n": 3, "delay": 0.3}))
        _kill_busy_worker(srv)
        t.join(30)
        result = out[0]
        assert not isinstance(result, BaseException), result
        assert RETRIED in result.metadata
        assert result.result == {"ticks": 3}


@pytest.fixture()
def recycling(tmp_path: Path) -> Any:
    cfg = make_config(tmp_path, bridges={"mock": {"runtime": "mock", "pool_size": 1, "held": 0,
                                                  "recycle": {"max_calls": 4}}})
    with ServerThread(cfg) as s:
        yield s


def test_a_worker_is_recycled_after_max_calls_finishing_its_calls_and_keeping_state(recycling: ServerThread) -> None:
    srv = recycling
    pool = srv.orch.pools["mock"]
    with MLBridge.connect(srv.target) as mb:
        jid = mb.create_resource("mock", "journal", {})
        mb.execute_resource(jid, {"entry": "a"})
        first = pool.claimed("default")[0]
        mb.execute_resource(jid, {"entry": "b"})
        # A long call on the worker as it reaches its max: it finishes there.
        t, out = _in_thread(lambda: mb.call("mock", "mock:sleep", {"seconds": 0.8}))
        time.sleep(0.2)
        assert first.calls >= 4
        after = mb.execute_resource(jid, {"entry": "c"})  # goes to a fresh worker
        t.join(10)
        assert out[0]["slept"] >= 0.8  # the call in flight was not cut
        second = pool.claimed("default")[0]
        assert second.id != first.id
        assert after["entries"] == ["a", "b", "c"]  # its state came along
        deadline = time.monotonic() + 10
        while first.id in pool.workers:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert first.death.startswith("recycled: served")
        assert mb.stats()["bridges"]["mock"]["recycled"] == 1


def test_a_stream_whose_worker_is_retired_gets_worker_died_at_once(srv: ServerThread) -> None:
    pool = srv.orch.pools["mock"]
    with MLBridge.connect(srv.target) as mb:
        mb.call("mock", "mock:echo", {})
        started = time.monotonic()

        def stream() -> list[Any]:
            return list(mb.call_stream("mock", "mock:stream", {"n": 3, "delay": 2}, timeout=20))

        t, out = _in_thread(stream)
        deadline = time.monotonic() + 10
        while not (busy := [w for w in pool.workers.values() if w.in_flight]):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        srv.run(pool.retire(busy[0], "retired by the test"))
        t.join(20)
        assert isinstance(out[0], WorkerDied) and "retired by the test" in str(out[0]), out
        assert time.monotonic() - started < 5
