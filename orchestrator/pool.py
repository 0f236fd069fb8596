"""Per-bridge worker pools: warm tenant-neutral spares, claims, replacement.

A pool keeps ``pool_size`` ready spares. The first call of a tenant claims a
spare: the :class:`~orchestrator.claims.ClaimPipeline` hands the worker to
that tenant (limits, secrets, egress, Configure, replay, naming, in that
order), and it serves only that tenant for the rest of its life; the pool
refills the spare in the background. A worker that dies or misbehaves is
retired (killed) and its place refilled. Released workers are destroyed,
never reused. Stopping drains: workers take no new calls, and those in
flight get a grace period to finish.

What happens to workers is told to the pool's listeners as events
(``worker_start``, ``worker_claim``, ``worker_stop``, ``worker_kill``); the
audit log and the egress proxy listen, the pool knows neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from runtimes.wire.errors import MLBridgeError, QuotaExceeded, Unavailable

from .backends.base import Backend, WorkerSpec
from .claims import ClaimPipeline
from .config import BridgeConfig
from .worker import Worker

log = logging.getLogger("mlbridge.pool")

MONITOR_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 2.0
#: How long stopping waits for calls in flight before it stops their workers.
DRAIN_S = 5.0

Listener = Callable[[str, Worker, dict[str, Any]], Awaitable[None] | None]


class Pool:
    """Workers of one bridge.

    Args:
        name: the bridge.
        cfg: its configuration.
        backend: runs the workers.
        orchestrator_id: labels every worker (the reaper's key).
        max_message_bytes: the message cap of the control channel.
        claims: hands a spare to a tenant.
        listeners: told of every worker event.
    """

    def __init__(self, name: str, cfg: BridgeConfig, backend: Backend, *, orchestrator_id: str,
                 max_message_bytes: int, claims: ClaimPipeline,
                 listeners: Sequence[Listener] = ()) -> None:
        self.name = name
        self.cfg = cfg
        self.backend = backend
        self.orchestrator_id = orchestrator_id
        self.max_message_bytes = max_message_bytes
        self.claims = claims
        self.listeners = tuple(listeners)
        self.workers: dict[str, Worker] = {}
        self._spares: asyncio.Queue[Worker] = asyncio.Queue()
        self._starting = 0
        self._refill_tasks: set[asyncio.Task[None]] = set()
        self._claim_lock = asyncio.Lock()
        self.closed = False
        self.last_error: str = ""
        self._monitor: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        """Start ``pool_size`` spares concurrently and wait until they are ready."""
        results = await asyncio.gather(*(self._start_spare() for _ in range(self.cfg.pool_size)),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors and len(errors) == len(results):
            raise errors[0]
        self._monitor = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Replace workers that die or stop answering while idle, before a call lands on them.

        Every ``MONITOR_INTERVAL_S``: a worker whose process or container has
        ended is retired; an idle one that fails two health probes in a row
        (``PROBE_TIMEOUT_S`` each) is killed and replaced. Busy workers are
        judged by their calls' deadlines instead.
        """
        misses: dict[str, int] = {}
        while not self.closed:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            for worker in [w for w in self.workers.values() if w.state == "ready"]:
                try:
                    info = await self.backend.exit_info(worker.handle)
                    if info is not None:
                        await self.retire(worker, f"died while idle: {info.describe()}")
                        continue
                    if worker.in_flight:
                        misses.pop(worker.id, None)
                        continue
                    if worker.tenant and time.monotonic() - worker.last_used > self.cfg.release_idle_s:
                        # Released: a claimed worker is never reused for anyone, so it is destroyed.
                        await self._destroy(worker, f"released after {self.cfg.release_idle_s:g}s idle", kill=False)
                        continue
                    if await worker.healthy(PROBE_TIMEOUT_S):
                        misses.pop(worker.id, None)
                    elif (n := misses.get(worker.id, 0) + 1) >= 2:
                        misses.pop(worker.id, None)
                        await self.retire(worker, "stopped answering health probes")
                    else:
                        misses[worker.id] = n
                except Exception as exc:  # noqa: BLE001 - the watch must go on
                    log.warning("bridge %s: health watch of %s failed: %s", self.name, worker.id, exc)

    async def stop(self, drain_s: float = DRAIN_S) -> None:
        """Drain, then stop every worker gracefully.

        No claim and no new call is taken (workers turn ``draining``); calls in
        flight get up to ``drain_s`` seconds to finish before their workers stop.
        """
        self.closed = True
        if self._monitor is not None:
            self._monitor.cancel()
        for t in list(self._refill_tasks):
            t.cancel()
        for w in self.workers.values():
            if w.state == "ready":
                w.state = "draining"
        deadline = time.monotonic() + drain_s
        while any(w.in_flight for w in self.workers.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.gather(*(self._destroy(w, "orchestrator stopping", kill=False) for w in list(self.workers.values())),
                             return_exceptions=True)

    async def _start_worker(self) -> Worker:
        if len(self.workers) + self._starting >= self.cfg.max_workers:
            raise QuotaExceeded(
                f"bridge {self.name!r} already runs its maximum of {self.cfg.max_workers} workers",
                details={"quota": "max_workers", "limit": self.cfg.max_workers},
            )
        wid = f"{self.name}-{uuid.uuid4().hex[:10]}"
        spec = WorkerSpec(worker_id=wid, bridge=self.name, config=self.cfg, orchestrator_id=self.orchestrator_id,
                          max_message_bytes=self.max_message_bytes)
        self._starting += 1
        try:
            handle = await self.backend.start(spec)
            worker = Worker(handle, self.max_message_bytes)
            self.workers[wid] = worker
            try:
                await worker.wait_ready(self.backend, self.cfg.start_timeout_s)
            except BaseException:
                await self._destroy(worker, "failed to become ready", kill=True)
                raise
        except MLBridgeError as exc:
            self.last_error = str(exc)
            raise
        finally:
            self._starting -= 1
        await self._emit("worker_start", worker, {"ready_ms": round(worker.ready_after_s * 1000, 1)})
        return worker

    async def _start_spare(self) -> None:
        worker = await self._start_worker()
        self._spares.put_nowait(worker)

    def _refill(self) -> None:
        if self.closed or self._spares.qsize() + self._starting >= self.cfg.pool_size:
            return

        async def run() -> None:
            try:
                await self._start_spare()
            except Exception as exc:  # noqa: BLE001 - logged; the next claim starts on demand
                log.error("bridge %s: could not refill a spare: %s", self.name, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._refill_tasks.add(task)
        task.add_done_callback(self._refill_tasks.discard)

    # -- claiming --------------------------------------------------------------
    def claimed(self, tenant: str) -> list[Worker]:
        return [w for w in self.workers.values() if w.tenant == tenant and w.state == "ready"]

    async def acquire(self, tenant: str, *, max_workers: int | None = None) -> Worker:
        """A ready worker of ``tenant``: its least-loaded one, or a newly claimed spare.

        A tenant gets another worker when all of its workers are busy and its
        worker quota allows; otherwise calls share its workers.
        """
        if self.closed:
            raise Unavailable(f"bridge {self.name!r} is shutting down")
        mine = self.claimed(tenant)
        best = min(mine, key=lambda w: w.in_flight, default=None)
        limit = max_workers if max_workers is not None else self.cfg.workers_per_tenant
        if best is not None and (best.in_flight == 0 or len(mine) >= limit or self._spares.empty()):
            return best
        async with self._claim_lock:
            mine = self.claimed(tenant)
            best = min(mine, key=lambda w: w.in_flight, default=None)
            if best is not None and (best.in_flight == 0 or len(mine) >= limit):
                return best
            return await self._claim(tenant)

    async def _claim(self, tenant: str) -> Worker:
        worker: Worker | None = None
        while not self._spares.empty():
            cand = self._spares.get_nowait()
            if cand.state == "ready":
                worker = cand
                break
        if worker is None:
            worker = await self._start_worker()  # cold start on demand
        try:
            await self.claims.claim(worker, tenant, self.cfg, self._background)
        except Exception as exc:
            await self.retire(worker, f"claim failed: {exc}")
            raise Unavailable(f"could not hand a worker of {self.name!r} to its tenant: {exc}") from exc
        await self._emit("worker_claim", worker, {"tenant": tenant})
        self._refill()  # after the claim, so starting the replacement does not slow it down
        return worker

    def _background(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        """Run housekeeping off the caller's path; failures are logged, never raised."""

        async def run() -> None:
            try:
                await coro
            except Exception as exc:  # noqa: BLE001
                log.warning("bridge %s: could not %s: %s", self.name, what, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._refill_tasks.add(task)
        task.add_done_callback(self._refill_tasks.discard)
        # A task cancelled before it ran (the pool stopping) never awaited ``coro``: close it quietly.
        task.add_done_callback(lambda _: coro.close())

    # -- retiring --------------------------------------------------------------
    async def retire(self, worker: Worker, reason: str, *, kill: bool = True) -> None:
        """Take a worker out for good (dead, stuck, or misbehaving) and refill."""
        if worker.state == "dead" and worker.id not in self.workers:
            return
        await self._destroy(worker, reason, kill=kill)
        self._refill()

    async def release_tenant(self, tenant: str) -> int:
        """Destroy every worker claimed by ``tenant``; return how many."""
        mine = [w for w in self.workers.values() if w.tenant == tenant]
        await asyncio.gather(*(self._destroy(w, "released by tenant", kill=False) for w in mine))
        self._refill()
        return len(mine)

    async def _destroy(self, worker: Worker, reason: str, *, kill: bool) -> None:
        usage = self.backend.usage(worker.handle)  # while it still runs: totals for the audit log
        self.workers.pop(worker.id, None)
        worker.state = "dead"
        worker.death = worker.death or reason
        await worker.close()
        with contextlib.suppress(Exception):
            await self.backend.stop(worker.handle, kill=kill, timeout=5.0)
        await self._emit("worker_kill" if kill else "worker_stop", worker, {"reason": reason, "usage": usage})

    async def _emit(self, event: str, worker: Worker, extra: dict[str, Any]) -> None:
        for listener in self.listeners:
            res = listener(event, worker, extra)
            if res is not None:
                await res

    # -- facts -----------------------------------------------------------------
    @property
    def ready_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.state == "ready")

    def any_ready(self) -> Worker | None:
        for w in self.workers.values():
            if w.state == "ready":
                return w
        return None
