"""Per-bridge worker pools: warm tenant-neutral spares, claims, replacement.

A pool keeps ready spares: at least ``pool_size``, more while demand asks
for them (:mod:`orchestrator.spares`), up to ``max_spares``. The first call
of a tenant claims a spare: the :class:`~orchestrator.claims.ClaimPipeline`
hands the worker to that tenant (limits, secrets, egress, Configure, replay,
naming, in that order), and it serves only that tenant for the rest of its
life; the pool refills the spare in the background. Claims of different
tenants run side by side; one tenant's concurrent first calls claim once.

Behind the spares, a backend that can hold workers (:class:`SupportsHold`)
keeps ``held`` workers started but not running their runtime: a worker the
pool has to start (a spare, or a claim that found none ready) takes one of
those instead of paying for a container start, and the pool holds another.
A worker starts with ``startup_cpus`` and gets its bridge's CPU limit as
soon as it is ready, before any tenant code can run. A worker that dies or misbehaves is
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
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

import grpc

from runtimes.wire.errors import MLBridgeError, QuotaExceeded, Unavailable, UnknownCommand

from .backends.base import Backend, SupportsHold, WorkerHandle, WorkerSpec
from .claims import ClaimPipeline
from .config import BridgeConfig, WorkerLimits
from .probe import NullProbe, Probe
from .spares import SpareDemand, memory_cap
from .worker import Worker

log = logging.getLogger("mlbridge.pool")

MONITOR_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 2.0
#: How long stopping waits for calls in flight before it stops their workers.
DRAIN_S = 5.0
#: Spares started at once (starts compete for the engine and the CPU).
MAX_PARALLEL_STARTS = 4
#: After a claim, how long replacements wait to start (the tenant's first call goes first).
REFILL_DELAY_S = 0.1
#: A spare above the target waits this long (ready and unclaimed) before it is retired.
SURPLUS_IDLE_S = 30.0
#: How often the bridge's own health hook (``common:health``) is asked, on a tenant-neutral spare.
HEALTH_EVERY_S = 10.0

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
        probe: told of claims and of the orchestrator's own calls' reply metadata.
    """

    def __init__(self, name: str, cfg: BridgeConfig, backend: Backend, *, orchestrator_id: str,
                 max_message_bytes: int, claims: ClaimPipeline,
                 listeners: Sequence[Listener] = (), probe: Probe | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.backend = backend
        self.orchestrator_id = orchestrator_id
        self.max_message_bytes = max_message_bytes
        self.claims = claims
        self.listeners = tuple(listeners)
        self.probe: Probe = probe or NullProbe()
        self.workers: dict[str, Worker] = {}
        self._spares: deque[Worker] = deque()  # oldest first
        self._spare_since: dict[str, float] = {}
        self._starting = 0
        self._spare_starts = 0
        self._waiters: deque[asyncio.Future[Worker]] = deque()  # claims waiting for a worker to start
        self._held: deque[WorkerHandle] = deque()
        self._holding = 0
        self._refill_tasks: set[asyncio.Task[None]] = set()
        self._tenant_locks: dict[str, tuple[asyncio.Lock, int]] = {}  # tenant -> (lock, callers using it)
        self.demand = SpareDemand(cfg.pool_size, cfg.max_spares, cfg.spare_window_s)
        rc = cfg.recycle
        self._recycle_by_use = bool(rc.max_calls or rc.max_age_s)
        self._recycle_memory = rc.max_memory_bytes
        self.recycled = 0
        self.cold_starts = 0
        self.held_starts = 0
        self.start_failures = 0
        #: What the bridge declares safe to run again on a replacement worker (learnt from its first
        #: worker's describe): commands, and resource types whose execution is.
        self.retry_commands: frozenset[str] | None = None
        self.retry_types: frozenset[str] = frozenset()
        self._replacements = 0  # retired workers whose replacement has not started yet
        #: The bridge's health: "" while serving, else why not (:meth:`health`).
        self._hook_problem = ""
        self._start_failed = False
        self.closed = False
        self.last_error: str = ""
        self._monitor: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        """Start ``pool_size`` spares concurrently and wait until they are ready."""
        results = await asyncio.gather(*(self._start_spare("initial") for _ in range(self.cfg.pool_size)),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors and len(errors) == len(results):
            raise errors[0]
        self._monitor = asyncio.get_running_loop().create_task(self._watch())
        self._refill_held()

    async def _watch(self) -> None:
        """Replace workers that die or stop answering while idle, before a call lands on them.

        Every ``MONITOR_INTERVAL_S``: a worker whose process or container has
        ended is retired; an idle one that fails two health probes in a row
        (``PROBE_TIMEOUT_S`` each) is killed and replaced. Busy workers are
        judged by their calls' deadlines instead.
        """
        misses: dict[str, int] = {}
        next_hook = 0.0
        while not self.closed:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            if time.monotonic() >= next_hook:
                next_hook = time.monotonic() + HEALTH_EVERY_S
                await self._ask_health_hook()
            await self._check_held()
            await self._retire_surplus()
            self._refill()
            for worker in [w for w in self.workers.values() if w.state == "ready"]:
                recycling = self._recycle_by_use or self._recycle_memory
                if worker.tenant and recycling and (why := self._due(worker, memory=True)):
                    self._recycle(worker, why)
                    continue
                try:
                    info = await self.backend.exit_info(worker.handle)
                    if info is not None:
                        await self.retire(worker, f"died while idle: {info.describe()}", cause=info.cause)
                        continue
                    if worker.in_flight:
                        misses.pop(worker.id, None)
                        continue
                    if worker.tenant and time.monotonic() - worker.last_used > self.cfg.release_idle_s:
                        # Released: a claimed worker is never reused for anyone, so it is destroyed.
                        await self._destroy(worker, f"released after {self.cfg.release_idle_s:g}s idle", kill=False,
                                            cause="idle")
                        continue
                    if await worker.healthy(PROBE_TIMEOUT_S):
                        misses.pop(worker.id, None)
                    elif (n := misses.get(worker.id, 0) + 1) >= 2:
                        misses.pop(worker.id, None)
                        await self.retire(worker, "stopped answering health probes", cause="unhealthy")
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
        self._fail_waiters(Unavailable(f"bridge {self.name!r} is shutting down"))
        held, self._held = list(self._held), deque()
        await asyncio.gather(*(self.backend.stop(h, kill=True, timeout=1.0) for h in held), return_exceptions=True)
        for w in self.workers.values():
            if w.state == "ready":
                w.state = "draining"
        deadline = time.monotonic() + drain_s
        while any(w.in_flight for w in self.workers.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.gather(*(self._destroy(w, "orchestrator stopping", kill=False, cause="shutdown") for w in list(self.workers.values())),
                             return_exceptions=True)

    def _places_taken(self) -> int:
        """Workers counted against ``max_workers``: a failing one (its end being looked up, its retirement
        under way) no longer takes a place."""
        return sum(1 for w in self.workers.values() if w.state != "failing")

    def _spec(self, *, hold: bool = False) -> WorkerSpec:
        return WorkerSpec(worker_id=f"{self.name}-{uuid.uuid4().hex[:10]}", bridge=self.name, config=self.cfg,
                          orchestrator_id=self.orchestrator_id, max_message_bytes=self.max_message_bytes,
                          hold=hold, startup_cpus=self.cfg.startup_cpus)

    def _at_capacity(self) -> QuotaExceeded:
        return QuotaExceeded(f"bridge {self.name!r} already runs its maximum of {self.cfg.max_workers} workers",
                             details={"quota": "max_workers", "limit": self.cfg.max_workers})

    async def _start_worker(self, reason: str) -> Worker:
        if self._places_taken() + self._starting >= self.cfg.max_workers:
            raise self._at_capacity()
        self._starting += 1
        try:
            worker = None
            if (handle := await self._take_held()) is not None:
                try:
                    worker = await self._launch(handle)
                    worker.origin = "held"
                    self.held_starts += 1
                except Unavailable as exc:  # it died while held: start one from nothing instead
                    log.warning("bridge %s: held worker %s did not start (%s); starting another",
                                self.name, handle.worker_id, exc)
            if worker is None:
                worker = await self._launch(await self.backend.start(self._spec()))
                worker.origin = "cold"
                self.cold_starts += 1
        except MLBridgeError as exc:
            self.last_error = str(exc)
            self.start_failures += 1
            self._start_failed = True
            raise
        finally:
            self._starting -= 1
            self._refill_held()
        self._start_failed = False
        await self._emit("worker_start", worker, {"ready_ms": round(worker.ready_after_s * 1000, 1),
                                                  "reason": reason, "origin": worker.origin})
        return worker

    async def _launch(self, handle: WorkerHandle) -> Worker:
        """Wait until a started (or just released) worker is ready, then give it its bridge's CPU limit."""
        worker = Worker(handle, self.max_message_bytes, on_metadata=self._housekeeping_metadata)
        self.workers[handle.worker_id] = worker
        try:
            await worker.wait_ready(self.backend, self.cfg.start_timeout_s)
            # Open the call stream now: its first use costs 5-10 ms a claim should not pay.
            await worker.call("common:ping", {}, timeout=self.cfg.start_timeout_s)
            if self.retry_commands is None:
                await self._learn_recovery(worker)
            await self.claims.prepare(worker, self.cfg)  # still boosted: loading models is our own work
            if handle.boosted:
                await self.backend.apply_limits(handle, WorkerLimits(cpus=self.cfg.limits.cpus))
                handle.boosted = False
        except BaseException:
            await self._destroy(worker, "failed to become ready", kill=True, cause="start_failed")
            raise
        return worker

    async def _learn_recovery(self, worker: Worker) -> None:
        """Which commands and resource types the bridge declares retry-safe (once, from its first worker)."""
        try:
            reply = await worker.describe()
        except Exception as exc:  # noqa: BLE001 - a later worker tells instead
            log.warning("bridge %s: describe of %s failed: %s", self.name, worker.id, exc)
            return
        self.retry_types = frozenset(t.name for t in reply.resource_types if t.retry_safe)
        self.retry_commands = frozenset(c.name for c in reply.commands if c.retry_safe)

    def retry_safe(self, command: str, resource_type: str = "") -> bool:
        """Whether a call of ``command`` (on a resource of ``resource_type``) may run again on a new worker."""
        if resource_type:
            return resource_type in self.retry_types
        return command in (self.retry_commands or ())

    # -- held workers ----------------------------------------------------------
    @property
    def _can_hold(self) -> bool:
        return self.cfg.held > 0 and isinstance(self.backend, SupportsHold)

    async def _take_held(self) -> WorkerHandle | None:
        """Release the oldest held worker; None when there is none."""
        while self._held and self._can_hold:
            handle = self._held.popleft()
            try:
                assert isinstance(self.backend, SupportsHold)
                await self.backend.release(handle)
                return handle
            except MLBridgeError as exc:
                log.warning("bridge %s: could not release held worker %s: %s", self.name, handle.worker_id, exc)
                with contextlib.suppress(Exception):
                    await self.backend.stop(handle, kill=True, timeout=1.0)
        return None

    def _refill_held(self) -> None:
        if self.closed or not self._can_hold:
            return
        while len(self._held) + self._holding < self.cfg.held:
            self._holding += 1
            self._spawn(self._hold_one(), "hold a worker")

    async def _hold_one(self) -> None:
        try:
            handle = await self.backend.start(self._spec(hold=True))
        finally:
            self._holding -= 1
        if self.closed:
            await self.backend.stop(handle, kill=True, timeout=1.0)
        else:
            self._held.append(handle)

    async def _check_held(self) -> None:
        """Drop held workers that died while waiting (a held worker has no runtime to probe)."""
        for handle in list(self._held):
            info = await self.backend.exit_info(handle)
            if info is not None and handle in self._held:
                self._held.remove(handle)
                log.warning("bridge %s: held worker %s ended: %s", self.name, handle.worker_id, info.describe())
                with contextlib.suppress(Exception):
                    await self.backend.stop(handle, kill=True, timeout=1.0)
        self._refill_held()

    # -- spares ----------------------------------------------------------------
    def spare_target(self) -> int:
        """Ready spares the pool aims for now (see :mod:`orchestrator.spares`)."""
        return self.demand.target(memory_cap(self.cfg.limits.memory_bytes, len(self._spares)))

    async def _start_spare(self, reason: str) -> None:
        self._deliver(await self._start_worker(reason))

    def _deliver(self, worker: Worker) -> None:
        """A worker just became ready: to the longest-waiting claim, else to the spares."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(worker)
                return
        self._spares.append(worker)
        self._spare_since[worker.id] = time.monotonic()

    async def _next_started(self) -> Worker:
        """Wait for the next worker the pool starts (claims that found no spare take them in turn)."""
        fut: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._refill()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._deliver(fut.result())  # the caller gave up just as it came: someone else's
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)
            raise

    def _fail_waiters(self, exc: BaseException, count: int | None = None) -> None:
        """Fail ``count`` waiting claims (the newest first; all when None) with ``exc``."""
        n = len(self._waiters) if count is None else count
        while n > 0 and self._waiters:
            fut = self._waiters.pop()
            if not fut.done():
                fut.set_exception(exc)
                n -= 1

    def _refill(self) -> None:
        """Start workers until ready and starting ones cover the spare target and the waiting claims."""
        if self.closed:
            return
        waiting = sum(1 for f in self._waiters if not f.done())
        missing = self.spare_target() + waiting - len(self._spares) - self._spare_starts
        room = self.cfg.max_workers - self._places_taken() - self._starting  # spares count as workers
        for _ in range(max(0, min(missing, room, MAX_PARALLEL_STARTS - self._spare_starts))):
            self._spare_starts += 1
            self._spawn(self._refill_one(), "start a worker")
        if waiting > self._spare_starts and room <= 0:
            self._fail_waiters(self._at_capacity(), waiting - self._spare_starts)

    async def _refill_one(self) -> None:
        reason = "refill"
        if self._replacements > 0:
            self._replacements -= 1
            reason = "replace"
        try:
            await self._start_spare(reason)
        except QuotaExceeded as exc:  # claims took the room meanwhile
            log.debug("bridge %s: no room for a worker: %s", self.name, exc)
            if self._waiters:
                self._refill()
            return
        except Exception as exc:  # noqa: BLE001 - the claim waiting longest gets the error
            log.error("bridge %s: could not start a worker: %s", self.name, exc)
            self._fail_waiters(exc if isinstance(exc, MLBridgeError) else Unavailable(str(exc)), 1)
            if self._waiters:
                self._refill()
            return
        finally:
            self._spare_starts -= 1
        self._refill()

    async def _retire_surplus(self) -> None:
        """Retire the longest-waiting spare when there are more than the target and it has waited long enough."""
        if len(self._spares) <= self.spare_target():
            return
        oldest = self._spares[0]
        if time.monotonic() - self._spare_since.get(oldest.id, 0.0) >= SURPLUS_IDLE_S:
            self._spares.popleft()
            self._spare_since.pop(oldest.id, None)
            await self._destroy(oldest, "surplus spare (demand fell)", kill=False, cause="surplus")

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        """Run ``coro`` in the background; failures are logged, never raised."""

        async def run() -> None:
            try:
                await coro
            except Exception as exc:  # noqa: BLE001 - logged, never raised
                log.warning("bridge %s: could not %s: %s", self.name, what, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._refill_tasks.add(task)
        task.add_done_callback(self._refill_tasks.discard)
        # A task cancelled before it ran (the pool stopping) never awaited ``coro``: close it quietly.
        task.add_done_callback(lambda _: coro.close())

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
        if self._recycle_by_use and mine:
            mine = self._fresh(mine)
        best = min(mine, key=lambda w: w.in_flight, default=None)
        limit = max_workers if max_workers is not None else self.cfg.workers_per_tenant
        if best is not None and (best.in_flight == 0 or len(mine) >= limit or not self._spares):
            return best
        # One claim at a time per tenant (its concurrent first calls claim once); tenants side by side.
        lock, users = self._tenant_locks.get(tenant) or (asyncio.Lock(), 0)
        self._tenant_locks[tenant] = (lock, users + 1)
        try:
            async with lock:
                mine = self.claimed(tenant)
                best = min(mine, key=lambda w: w.in_flight, default=None)
                if best is not None and (best.in_flight == 0 or len(mine) >= limit):
                    return best
                return await self._claim(tenant)
        finally:
            lock, users = self._tenant_locks[tenant]
            if users <= 1:
                del self._tenant_locks[tenant]
            else:
                self._tenant_locks[tenant] = (lock, users - 1)

    async def _claim(self, tenant: str) -> Worker:
        began = time.time_ns()
        self.demand.record_claim()
        worker: Worker | None = None
        while self._spares:
            cand = self._spares.popleft()
            self._spare_since.pop(cand.id, None)
            if cand.state == "ready":
                worker = cand
                worker.origin = "spare"
                break
        if worker is None:
            # No spare ready: take the next worker the pool starts (a held one when there is).
            worker = await self._next_started()
        try:
            await self.claims.claim(worker, tenant, self.cfg, self._background)
        except Exception as exc:
            why = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            await self.retire(worker, f"claim failed: {why}", cause="claim_failed")
            raise Unavailable(f"could not hand a worker of {self.name!r} to its tenant: {why}") from exc
        self.probe.claimed(self.name, tenant, worker.origin, began, time.time_ns())
        await self._emit("worker_claim", worker, {"tenant": tenant})
        # A moment after the claim: a start competes for the CPU with the tenant's first call,
        # which the caller sends as soon as this returns.
        asyncio.get_running_loop().call_later(REFILL_DELAY_S, self._refill)
        return worker

    def _background(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        """Run housekeeping off the caller's path; failures are logged, never raised."""

        self._spawn(coro, what)

    # -- recycling -------------------------------------------------------------
    def _due(self, worker: Worker, *, memory: bool = False) -> str:
        """Why ``worker`` is due to be recycled ("" when it is not): calls, age, memory high-water mark."""
        rc = self.cfg.recycle
        if rc.max_calls and worker.calls >= rc.max_calls:
            return f"served {worker.calls} calls (recycle.max_calls {rc.max_calls})"
        if rc.max_age_s and (age := time.monotonic() - worker.started_at) >= rc.max_age_s:
            return f"ran {age:.0f}s (recycle.max_age_s {rc.max_age_s:g})"
        if memory and self._recycle_memory:
            figures = self.backend.usage(worker.handle)
            peak = figures.get("memory_peak_bytes") or figures.get("memory_bytes") or 0
            if peak >= self._recycle_memory:
                return f"memory high-water mark {peak // (1 << 20)} MiB (recycle.max_memory {rc.max_memory})"
        return ""

    def usable(self, worker: Worker) -> bool:
        """Whether a call may go to ``worker`` (ready, and not due to be recycled: then it starts draining)."""
        if worker.state != "ready":
            return False
        if self._recycle_by_use and (why := self._due(worker)):
            self._recycle(worker, why)
            return False
        return True

    def _fresh(self, mine: list[Worker]) -> list[Worker]:
        """The tenant's workers not due to be recycled; those due start draining."""
        fresh = []
        for w in mine:
            if why := self._due(w):
                self._recycle(w, why)
            else:
                fresh.append(w)
        return fresh

    def _recycle(self, worker: Worker, why: str) -> None:
        """Take no new calls on ``worker``; once its calls in flight finish, stop it (its tenant's next call
        gets a fresh worker, where its resources are re-created from their specs)."""
        if worker.state != "ready":
            return
        worker.state = "draining"
        log.info("bridge %s: recycling worker %s of tenant %s: %s", self.name, worker.id, worker.tenant, why)

        async def drain() -> None:
            deadline = time.monotonic() + self.cfg.call_timeout_s + self.cfg.cancel_grace_s
            while worker.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            self.recycled += 1
            await self._destroy(worker, f"recycled: {why}", kill=False, cause="recycled")
            self._refill()

        self._spawn(drain(), f"recycle worker {worker.id}")

    # -- retiring --------------------------------------------------------------
    async def retire(self, worker: Worker, reason: str, *, kill: bool = True, cause: str = "unhealthy") -> None:
        """Take a worker out for good (dead, stuck, or misbehaving) and refill.

        ``cause`` classifies it for metrics: oom, killed, exited, unhealthy, stuck,
        misbehaved, start_failed, claim_failed.
        """
        if worker.state == "dead" and worker.id not in self.workers:
            return
        was_spare = worker.id in self._spare_since
        await self._destroy(worker, reason, kill=kill, cause=cause)
        if was_spare:
            self._replacements += 1  # the start that refills the spare count replaces it
        self._refill()

    async def release_tenant(self, tenant: str) -> int:
        """Destroy every worker claimed by ``tenant``; return how many."""
        mine = [w for w in self.workers.values() if w.tenant == tenant]
        await asyncio.gather(*(self._destroy(w, "released by tenant", kill=False, cause="tenant_release") for w in mine))
        self._refill()
        return len(mine)

    async def _destroy(self, worker: Worker, reason: str, *, kill: bool, cause: str) -> None:
        """Stop a worker and tell the listeners: ``worker_kill`` (a death: ``cause`` says why) or
        ``worker_stop`` (orderly: idle, tenant_release, surplus, shutdown)."""
        usage = self.backend.usage(worker.handle)  # while it still runs: totals for the audit log
        self.workers.pop(worker.id, None)
        if self._spare_since.pop(worker.id, None) is not None:
            with contextlib.suppress(ValueError):
                self._spares.remove(worker)
        worker.state = "dead"
        worker.death = worker.death or reason
        await worker.close()
        with contextlib.suppress(Exception):
            await self.backend.stop(worker.handle, kill=kill, timeout=5.0)
        await self._emit("worker_kill" if kill else "worker_stop", worker,
                         {"reason": reason, "usage": usage, "cause": cause})

    async def _emit(self, event: str, worker: Worker, extra: dict[str, Any]) -> None:
        for listener in self.listeners:
            res = listener(event, worker, extra)
            if res is not None:
                await res

    # -- health ----------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        """Whether the bridge serves new tenants, and why not.

        Not serving while stopping, while its workers cannot start and no
        ready spare is left, or while its health hook fails on a tenant-neutral spare.
        """
        if self.closed:
            return False, "shutting down"
        if self._start_failed and not self._spares:
            return False, f"workers cannot start: {self.last_error}"
        if self._hook_problem:
            return False, self._hook_problem
        return True, ""

    async def _ask_health_hook(self) -> None:
        """Run the bridge's health hook on the longest-waiting idle spare (none: keep the last answer)."""
        spare = next((w for w in self._spares if w.state == "ready" and not w.in_flight), None)
        if spare is None:
            return
        try:
            answer = await spare.call("common:health", {}, timeout=PROBE_TIMEOUT_S * 5)
        except UnknownCommand:
            return  # a runtime older than the hook
        except MLBridgeError as exc:
            log.warning("bridge %s: health hook on %s failed: %s", self.name, spare.id, exc)
            return
        if not isinstance(answer, dict) or answer.get("ok") is not False:
            self._hook_problem = ""
            return
        checks = answer.get("checks")
        if not isinstance(checks, dict):
            checks = {}
        failing = [f"{name}: {str(c.get('detail', ''))[:200]}" for name, c in checks.items()
                   if isinstance(c, dict) and not c.get("ok")]
        self._hook_problem = "health check failed: " + ("; ".join(failing)[:500] or "no detail")

    def _housekeeping_metadata(self, worker: Worker, metadata: Mapping[str, str]) -> None:
        self.probe.housekeeping(self.name, worker.tenant, metadata)

    # -- facts -----------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        """Spares, their target and the demand behind it, held workers, starts by kind, health (status, metrics)."""
        serving, why = self.health()
        return {
            "ready": self.ready_count,
            "spares": len(self._spares),
            "spare_target": self.spare_target(),
            "pool_size": self.cfg.pool_size,
            "max_spares": max(self.cfg.pool_size, self.cfg.max_spares),
            "claims_peak": self.demand.peak(),
            "claims_per_min": self.demand.rate(),
            "held": len(self._held),
            "held_starts": self.held_starts,
            "cold_starts": self.cold_starts,
            "starting": self._starting,
            "start_failures": self.start_failures,
            "recycled": self.recycled,
            "last_error": self.last_error,
            "serving": serving,
            "health": why,
        }

    @property
    def ready_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.state == "ready")

    def any_ready(self) -> Worker | None:
        for w in self.workers.values():
            if w.state == "ready":
                return w
        return None
