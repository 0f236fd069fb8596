"""Circuit breakers per (bridge, tenant): the state machine, and a real orchestrator refusing a tenant whose workers
keep dying while another tenant is served."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
import urllib.request
from contextlib import redirect_stdout
from typing import Any

import pytest

from orchestrator import MLBridge
from orchestrator.circuit import CircuitBreakers, CircuitSettings
from orchestrator.cli import main as cli_main
from runtimes.wire.errors import Unavailable, WorkerDied
from tests.harness import ServerThread, digest, make_config


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breakers(failures: int = 3, open_s: float = 5.0, max_open_s: float = 60.0) -> tuple[CircuitBreakers, Clock]:
    clock = Clock()
    return CircuitBreakers(lambda b: CircuitSettings(failures, open_s, max_open_s), clock=clock), clock


def test_consecutive_failures_open_the_circuit_of_that_tenant_only() -> None:
    cb, clock = breakers()
    for _ in range(2):
        cb.failed("b", "alice", "killed")
        assert cb.admit("b", "alice") is False
    cb.failed("b", "alice", "out of memory")
    with pytest.raises(Unavailable) as info:
        cb.admit("b", "alice")
    err = info.value
    assert err.details["retry_after_s"] == 5.0 and err.details["circuit"] == "open"
    assert "out of memory" in err.message and "3 times in a row" in err.message
    assert cb.admit("b", "bob") is False and cb.admit("other", "alice") is False
    assert cb.snapshot()["b"]["alice"]["state"] == "open"


def test_a_success_starts_the_count_over() -> None:
    cb, _ = breakers()
    cb.failed("b", "t", "x")
    cb.failed("b", "t", "x")
    cb.succeeded("b", "t")
    cb.failed("b", "t", "x")
    cb.failed("b", "t", "x")
    assert cb.admit("b", "t") is False


def test_half_open_lets_one_probe_through_and_backs_off_when_it_fails() -> None:
    cb, clock = breakers(failures=1, open_s=2.0, max_open_s=5.0)
    cb.failed("b", "t", "killed")
    clock.now += 2.0
    assert cb.admit("b", "t") is True  # the probe
    with pytest.raises(Unavailable):
        cb.admit("b", "t")  # one probe at a time
    cb.failed("b", "t", "killed again")  # the probe's worker died too
    with pytest.raises(Unavailable) as info:
        cb.admit("b", "t")
    assert info.value.details["retry_after_s"] == 4.0  # twice as long
    clock.now += 4.0
    assert cb.admit("b", "t") is True
    cb.failed("b", "t", "and again")
    clock.now += 0.1
    with pytest.raises(Unavailable) as info:
        cb.admit("b", "t")
    assert info.value.details["retry_after_s"] == pytest.approx(4.9)  # capped at max_open_s
    clock.now += 5.0
    assert cb.admit("b", "t") is True
    cb.succeeded("b", "t")
    assert cb.admit("b", "t") is False and cb.snapshot() == {}


def test_a_probe_that_tells_nothing_frees_the_next_one() -> None:
    cb, clock = breakers(failures=1, open_s=1.0)
    cb.failed("b", "t", "x")
    clock.now += 1.0
    assert cb.admit("b", "t") is True
    cb.released("b", "t")
    assert cb.admit("b", "t") is True


def test_failures_zero_turns_circuits_off() -> None:
    cb, _ = breakers(failures=0)
    for _ in range(10):
        cb.failed("b", "t", "x")
    assert cb.admit("b", "t") is False


POLICY = f"""
version: 1
defaults:
  bridges: [mock]
  rules:
    - {{name: all, effect: allow}}
  quotas: {{max_concurrent_calls: 8, max_calls_per_minute: 10000, max_resources: 5, max_workers: 2}}
tenants:
  alice: {{tokens: ["{digest('alice-token')}"]}}
  bob: {{tokens: ["{digest('bob-token')}"]}}
"""


@pytest.fixture()
def srv(tmp_path: Any) -> Any:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    policy.chmod(0o600)
    bridges = {"mock": {"runtime": "mock", "pool_size": 2, "held": 0,
                        "circuit": {"failures": 3, "open_s": 1.5, "max_open_s": 10}}}
    cfg = make_config(tmp_path, bridges=bridges, policy=str(policy), metrics_listen="127.0.0.1:0")
    with ServerThread(cfg) as s:
        yield s


def _die_during_a_call(srv: ServerThread, mb: MLBridge, tenant: str) -> None:
    """A call of ``tenant`` whose worker is killed while it runs: the call fails with WORKER_DIED."""
    pool = srv.orch.pools["mock"]
    result: list[BaseException] = []

    def call() -> None:
        try:
            mb.call("mock", "mock:sleep", {"seconds": 10})
        except BaseException as exc:  # noqa: BLE001
            result.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 15
    while not any(w.in_flight for w in pool.claimed(tenant)):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for w in pool.claimed(tenant):
        os.kill(w.handle.ref.pid, signal.SIGKILL)
    thread.join(20)
    assert result and isinstance(result[0], WorkerDied), result


def test_a_tenant_whose_workers_keep_dying_is_refused_fast_and_others_are_served(srv: ServerThread) -> None:
    pool = srv.orch.pools["mock"]
    with MLBridge.connect(srv.target, token="alice-token") as alice, \
            MLBridge.connect(srv.target, token="bob-token") as bob:
        assert alice.call("mock", "mock:echo", {"x": 1}) == {"x": 1}
        for _ in range(3):
            _die_during_a_call(srv, alice, "alice")
        claims_before = len(pool.claimed("alice"))
        t = time.monotonic()
        with pytest.raises(Unavailable) as info:
            alice.call("mock", "mock:echo", {"x": 2})
        assert time.monotonic() - t < 0.5  # at once, not after a start
        err = info.value
        assert err.details["circuit"] == "open" and 0 < err.details["retry_after_s"] <= 1.5
        assert "3 times in a row" in err.message
        assert len(pool.claimed("alice")) == claims_before == 0
        # Bob is served as ever.
        assert bob.call("mock", "mock:echo", {"bob": 1}) == {"bob": 1}
        # Status and metrics show the open circuit.
        out = io.StringIO()
        with redirect_stdout(out):
            cli_main(["--address", srv.target, "--token", "alice-token", "status"])
        assert any("alice" in line and "OPEN" in line for line in out.getvalue().splitlines())
        page = urllib.request.urlopen(f"http://127.0.0.1:{srv.app.observability.metrics_port}/metrics").read()
        assert b'mlbridge_circuit_open{bridge="mock",tenant="alice"} 1.0' in page
        assert b'tenant="bob"' not in page.split(b"mlbridge_circuit_open")[-1].split(b"\n# ")[0]
        # After open_s a probe goes through; it succeeds and closes the circuit.
        time.sleep(err.details["retry_after_s"] + 0.1)
        assert alice.call("mock", "mock:echo", {"x": 3}) == {"x": 3}
        assert srv.orch.circuits.snapshot() == {}
        assert alice.call("mock", "mock:echo", {"x": 4}) == {"x": 4}
