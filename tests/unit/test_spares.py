"""Adaptive spares and held workers, with the process backend (no Docker)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import orchestrator.pool as pool_mod
from orchestrator.backends.hold import Holds
from orchestrator.backends.process import ProcessBackend
from orchestrator.claims import NO_SETTINGS, ClaimPipeline
from orchestrator.config import BridgeConfig
from orchestrator.pool import Pool
from orchestrator.registry import Registry
from orchestrator.spares import SpareDemand, memory_cap
from runtimes.start import wait_for_release
from runtimes.wire.errors import Unavailable
from runtimes.wire.hold import GO, HOLD_NAME

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the demand model ---------------------------------------------------------------------------


def test_target_is_the_busiest_burst_within_min_and_max() -> None:
    clock = FakeClock()
    demand = SpareDemand(2, 10, window_s=60, clock=clock)
    assert demand.target() == 2  # quiet: the minimum
    for _ in range(6):  # six claims within a second
        demand.record_claim()
        clock.now += 0.15
    assert demand.peak() == 6 and demand.target() == 6
    clock.now += 5
    demand.record_claim()  # a lone claim later does not lower the remembered peak
    assert demand.target() == 6
    for _ in range(30):
        demand.record_claim()
    assert demand.target() == 10  # never above the maximum


def test_claims_spread_out_are_not_a_burst() -> None:
    clock = FakeClock()
    demand = SpareDemand(1, 10, window_s=600, clock=clock)
    for _ in range(20):
        demand.record_claim()
        clock.now += 3.0  # further apart than BURST_S
    assert demand.peak() == 1 and demand.target() == 1
    assert demand.rate(over_s=60) == 20.0  # 20 claims in the last minute, one every 3 s


def test_a_burst_is_forgotten_after_the_window() -> None:
    clock = FakeClock()
    demand = SpareDemand(1, 16, window_s=60, clock=clock)
    for _ in range(8):
        demand.record_claim()
    assert demand.target() == 8
    clock.now += 61
    assert demand.peak() == 0 and demand.target() == 1


def test_memory_cap_bounds_the_target_but_not_below_the_minimum(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       8000000 kB\nMemAvailable:    1048576 kB\n")  # 1 GiB available
    # Half of 1 GiB fits two 256 MiB workers, beside the 1 spare running now.
    assert memory_cap(256 << 20, 1, meminfo) == 3
    assert memory_cap(0, 1, meminfo) is None
    assert memory_cap(256 << 20, 1, tmp_path / "absent") is None
    clock = FakeClock()
    demand = SpareDemand(2, 16, window_s=60, clock=clock)
    for _ in range(10):
        demand.record_claim()
    assert demand.target(cap=3) == 3
    assert demand.target(cap=0) == 2


def test_maximum_never_below_minimum() -> None:
    assert SpareDemand(4, 1, window_s=60).maximum == 4


# -- the hold handshake -------------------------------------------------------------------------


def test_no_fifo_means_no_wait(tmp_path: Path) -> None:
    assert wait_for_release(str(tmp_path / "runtime.sock")) is True
    (tmp_path / HOLD_NAME).write_text("not a fifo")
    assert wait_for_release(str(tmp_path / "runtime.sock")) is True
    assert wait_for_release(None) is True


def test_release_and_drop(tmp_path: Path) -> None:
    holds = Holds()
    holds.hold("w1", tmp_path)
    assert holds.held("w1")
    holds.release("w1")
    assert not holds.held("w1")
    assert wait_for_release(str(tmp_path / "runtime.sock")) is True  # reads the GO left in the pipe
    with pytest.raises(Unavailable, match="not held"):
        holds.release("w1")
    holds.drop("w1")
    assert not (tmp_path / HOLD_NAME).exists()
    with pytest.raises(Unavailable, match="not held"):
        holds.release("never")


def _start_held_runtime(sock_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "runtimes.start", "--bridge", "mock", "--socket",
                             str(sock_dir / "runtime.sock")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_held_runtime_exits_when_its_orchestrator_dies(tmp_path: Path) -> None:
    """The orchestrator's end of the FIFO is its only writer: when it is SIGKILLed the runtime sees
    end of file and exits 0 without ever serving."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        f"os.mkfifo({str(tmp_path / HOLD_NAME)!r}, 0o600)\n"
        f"fd = os.open({str(tmp_path / HOLD_NAME)!r}, os.O_RDWR | os.O_CLOEXEC)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
    runtime = _start_held_runtime(tmp_path)
    try:
        time.sleep(0.5)
        assert runtime.poll() is None, "a held runtime waits"
        assert not (tmp_path / "runtime.sock").exists(), "and does not serve"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        assert runtime.wait(timeout=10) == 0
        assert not (tmp_path / "runtime.sock").exists()
    finally:
        for p in (holder, runtime):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_garbled_release_does_not_start_the_runtime(tmp_path: Path) -> None:
    fifo = tmp_path / HOLD_NAME
    os.mkfifo(fifo, 0o600)
    fd = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.write(fd, b"start please\n")
        assert wait_for_release(str(tmp_path / "runtime.sock")) is False
        os.write(fd, GO)
        assert wait_for_release(str(tmp_path / "runtime.sock")) is True
    finally:
        os.close(fd)


# -- pools --------------------------------------------------------------------------------------


def _pool(backend: ProcessBackend, **cfg: object) -> Pool:
    bridge = BridgeConfig(runtime="mock", **cfg)  # type: ignore[arg-type]
    return Pool("mock", bridge, backend, orchestrator_id="test-spares", max_message_bytes=4 << 20,
                claims=ClaimPipeline(backend, Registry(":memory:"), NO_SETTINGS))


def _with_pool(tmp_path: Path, scenario: Callable[[Pool, ProcessBackend], Awaitable[None]], **cfg: object) -> None:
    """Run ``scenario`` against a started pool of the mock bridge, then stop it."""

    async def run() -> None:
        backend = ProcessBackend(tmp_path / "sock")
        pool = _pool(backend, **cfg)
        await pool.start()
        try:
            await scenario(pool, backend)
        finally:
            await pool.stop(drain_s=0)
            await backend.close()

    asyncio.run(run())


async def _until(cond: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_a_claim_with_no_spare_takes_a_held_worker(tmp_path: Path) -> None:
    async def scenario(pool: Pool, backend: ProcessBackend) -> None:
        await _until(lambda: len(pool._held) == 1)
        held = pool._held[0]
        await asyncio.sleep(0.3)
        assert await backend.exit_info(held) is None and not held.channel.present(), \
            "a held worker runs but does not serve"
        worker = await pool.acquire("alice")
        assert worker.id == held.worker_id and worker.tenant == "alice"
        assert pool.facts()["held_starts"] == 1 and pool.facts()["cold_starts"] == 0
        await _until(lambda: len(pool._held) == 1)  # another one is held at once
        assert pool._held[0].worker_id != held.worker_id

    _with_pool(tmp_path, scenario, pool_size=0, max_spares=0, held=1)


def test_held_workers_that_die_are_replaced_and_a_dead_one_is_not_used(tmp_path: Path) -> None:
    async def scenario(pool: Pool, backend: ProcessBackend) -> None:
        await _until(lambda: len(pool._held) == 1)
        dead = pool._held[0]
        os.killpg(dead.ref.pid, signal.SIGKILL)
        await dead.ref.wait()
        # Claimed before the watch noticed: the pool starts a worker from nothing instead.
        worker = await pool.acquire("bob")
        assert worker.id != dead.worker_id and worker.state == "ready"
        assert pool.facts()["cold_starts"] == 1

    _with_pool(tmp_path, scenario, pool_size=0, max_spares=0, held=1)


def test_spares_follow_a_burst_and_fall_back_after_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_mod, "MONITOR_INTERVAL_S", 0.2)
    monkeypatch.setattr(pool_mod, "SURPLUS_IDLE_S", 0.0)

    async def scenario(pool: Pool, backend: ProcessBackend) -> None:
        assert pool.spare_target() == 1
        workers = await asyncio.gather(*(pool.acquire(f"t{i}") for i in range(5)))
        assert len({w.id for w in workers}) == 5, "five tenants, five workers"
        assert pool.facts()["claims_peak"] == 5
        assert pool.spare_target() == 4  # the burst, capped by max_spares
        await _until(lambda: len(pool._spares) == 4)
        # The burst is forgotten after spare_window_s; the surplus is retired down to pool_size.
        await _until(lambda: pool.spare_target() == 1 and len(pool._spares) == 1, timeout=20)
        assert pool.facts()["spares"] == 1
        # Spares count against max_workers: with 7 claimed and a cap of 7 there is no room for one.
        pool.cfg = pool.cfg.model_copy(update={"max_workers": 7})
        await asyncio.gather(*(pool.acquire(f"u{i}") for i in range(2)))
        await asyncio.sleep(1.0)
        assert len(pool.workers) == 7 and len(pool._spares) == 0

    _with_pool(tmp_path, scenario, pool_size=1, max_spares=4, held=0, spare_window_s=3.0, max_workers=16)


def test_tenants_claim_side_by_side_and_one_tenant_claims_once(tmp_path: Path) -> None:
    async def scenario(pool: Pool, backend: ProcessBackend) -> None:
        active = peak = 0
        real_start = backend.start

        async def counting_start(spec):  # type: ignore[no-untyped-def]
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            try:
                return await real_start(spec)
            finally:
                active -= 1

        backend.start = counting_start  # type: ignore[method-assign]
        workers = await asyncio.gather(pool.acquire("a"), pool.acquire("b"), pool.acquire("c"))
        assert peak >= 2, "claims of different tenants wait for each other"
        assert len({w.id for w in workers}) == 3
        same = await asyncio.gather(*(pool.acquire("d") for _ in range(4)))
        assert len({w.id for w in same}) == 1, "concurrent first calls of one tenant claimed more than once"
        assert pool._tenant_locks == {}

    _with_pool(tmp_path, scenario, pool_size=0, max_spares=0, held=0)
