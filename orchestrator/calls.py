"""Running one call on one worker: deadlines, cancellation, failure mapping.

Everything that can go wrong between the orchestrator and a runtime is turned
into one specific error here: the runtime's own typed error, a deadline, a
cancellation, a reply over the size cap, or a dead worker (with the reason:
out of memory and the limit, a signal, an exit code). A worker that ignored a
cancel or a deadline, or died, is retired and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from runtimes.wire.errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    MLBridgeError,
    OutOfMemory,
    PayloadTooLarge,
    WorkerDied,
    error_from_wire,
)
from runtimes.wire.metadata import CREATED_RESOURCES, FOR_ORCHESTRATOR
from runtimes.wire.payload import loads_lenient
from runtimes.wire.proto import common_pb2 as common
from runtimes.wire.proto import runtime_pb2 as rpb

from .pool import Pool
from .probe import NullProbe, Probe
from .session import SessionBroken
from .worker import Worker


@dataclass
class Reply:
    """A call's answer: its JSON result text, attachments, reply metadata, and the worker that served it."""

    call_id: str
    result: str
    attachments: dict[str, bytes] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    worker_id: str = ""


@dataclass
class InFlight:
    call_id: str
    tenant: str
    worker: Worker
    pool: Pool
    command: str
    started: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    killed_for: str = ""  # "cancel" or "deadline" when we killed the worker


class CallRunner:
    """Tracks in-flight calls and runs them on workers; each runtime round trip is reported to ``probe``."""

    def __init__(self, probe: Probe | None = None) -> None:
        self.probe: Probe = probe or NullProbe()
        self.inflight: dict[str, InFlight] = {}
        self._watchdogs: set[asyncio.Task[None]] = set()

    def _begin(self, req: rpb.CallRequest, tenant: str, pool: Pool, worker: Worker, timeout: float) -> InFlight:
        if req.call_id in self.inflight:
            raise AlreadyExists(f"call id {req.call_id!r} is already in flight")
        req.tenant = tenant
        req.deadline_unix_ms = int((time.time() + timeout) * 1000)
        fl = InFlight(req.call_id, tenant, worker, pool, req.command)
        self.inflight[req.call_id] = fl
        worker.in_flight += 1
        worker.calls += 1
        worker.last_used = time.monotonic()
        return fl

    def _end(self, fl: InFlight) -> None:
        if self.inflight.get(fl.call_id) is fl:
            del self.inflight[fl.call_id]
        fl.worker.in_flight -= 1
        fl.worker.last_used = time.monotonic()

    async def unary(self, tenant: str, pool: Pool, worker: Worker, req: rpb.CallRequest, timeout: float) -> Reply:
        token = self.probe.runtime_begin(pool.name, req)
        metadata: dict[str, str] | None = None
        error: MLBridgeError | None = None
        try:
            fl = self._begin(req, tenant, pool, worker, timeout)
            try:
                if worker.session is None:
                    raise SessionBroken(grpc.StatusCode.UNAVAILABLE, f"worker {worker.id} is {worker.state}")
                async with asyncio.timeout(timeout + pool.cfg.cancel_grace_s):
                    reply = await worker.session.request(req)
            except TimeoutError:
                raise await self._rpc_failure(fl, grpc.StatusCode.DEADLINE_EXCEEDED, "no reply", timeout) from None
            except SessionBroken as exc:
                raise await self._rpc_failure(fl, exc.code, exc.details, timeout) from None
            except asyncio.CancelledError:
                self._abandon(fl)  # the client went away: stop the handler too
                raise
            finally:
                self._end(fl)
            metadata = dict(reply.metadata)
            if not reply.ok:
                raise await self._runtime_error(fl, reply.error)
            return Reply(req.call_id, reply.result_json, dict(reply.attachments), metadata, worker.id)
        except MLBridgeError as exc:
            error = exc
            raise
        finally:
            self.probe.runtime_end(token, pool.name, tenant, req.command, metadata, error)
            if metadata:
                _strip(metadata)

    async def stream(self, tenant: str, pool: Pool, worker: Worker, req: rpb.CallRequest,
                     timeout: float) -> AsyncIterator[tuple[str, Any]]:
        """Yield ("chunk", text), ("progress", (step, total, msg)), ("request", (id, kind, data)), then ("final", Reply)."""
        token = self.probe.runtime_begin(pool.name, req)
        metadata: dict[str, str] | None = None
        error: MLBridgeError | None = None
        try:
            fl = self._begin(req, tenant, pool, worker, timeout)
        except MLBridgeError as exc:
            self.probe.runtime_end(token, pool.name, tenant, req.command, None, exc)
            raise
        try:
            if worker.stub is None or worker.channel is None:
                raise ConnectionError("the channel is closed")
            call = worker.stub.CallStream(req, timeout=timeout + pool.cfg.cancel_grace_s)
        except Exception:  # noqa: BLE001 - the channel closed under it: the worker was retired just now
            failure = await self._dead_or_unavailable(fl, "its channel is closed")
            self._end(fl)
            self.probe.runtime_end(token, pool.name, tenant, req.command, None, failure)
            raise failure from None
        finished = False
        open_: InFlight | None = fl  # until ended and reported
        try:
            async for ev in call:
                kind = ev.WhichOneof("event")
                if kind == "chunk":
                    yield "chunk", ev.chunk.data_json
                elif kind == "progress":
                    yield "progress", (ev.progress.step, ev.progress.total, ev.progress.message)
                elif kind == "request":
                    yield "request", (ev.request.request_id, ev.request.kind, ev.request.data_json)
                elif kind == "final":
                    finished = True
                    f = ev.final
                    metadata = dict(f.metadata)
                    if not f.ok:
                        raise await self._runtime_error(fl, f.error)
                    reply = Reply(req.call_id, f.result_json, dict(f.attachments), metadata, worker.id)
                    self._end(fl)
                    self.probe.runtime_end(token, pool.name, tenant, req.command, metadata, None)
                    _strip(metadata)
                    open_ = None  # ended and reported before the final event goes on
                    yield "final", reply
                    return
            finished = True
            raise await self._dead_or_unavailable(fl, "the runtime ended the stream without a result")
        except grpc.aio.AioRpcError as exc:
            finished = True
            error = await self._rpc_failure(fl, exc.code(), exc.details() or "", timeout)
            raise error from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the client went away
            # Not this task's cancellation: the worker's channel was closed under the stream (it was retired).
            finished = True
            if fl.cancelled or fl.killed_for:
                code = grpc.StatusCode.DEADLINE_EXCEEDED if fl.killed_for == "deadline" else grpc.StatusCode.CANCELLED
                error = await self._rpc_failure(fl, code, "the worker was stopped", timeout)
            else:
                error = await self._dead_or_unavailable(fl, "its channel closed during the stream")
            raise error from None
        except MLBridgeError as exc:
            error = exc
            raise
        finally:
            if not finished:  # the client went away mid-stream
                call.cancel()
            if open_ is not None:
                self._end(open_)
                self.probe.runtime_end(token, pool.name, tenant, req.command, metadata, error)

    # -- answers -----------------------------------------------------------------
    def call_of(self, tenant: str, call_id: str) -> InFlight | None:
        """The tenant's call in flight by that id; other tenants' calls look absent."""
        fl = self.inflight.get(call_id)
        return fl if fl is not None and fl.tenant == tenant else None

    async def answer(self, tenant: str, call_id: str, request_id: str, result_json: str, error: str) -> bool:
        """Hand the client's answer to a request of one of its calls in flight; False when none waits.

        Raises:
            InvalidArgument: the runtime found the answer malformed (not JSON).
        """
        fl = self.call_of(tenant, call_id)
        if fl is None:
            return False
        gone = WorkerDied(f"call {call_id} cannot take the answer: its worker {fl.worker.id} is gone "
                          f"({fl.worker.death or fl.worker.state}); the call fails with WORKER_DIED")
        if fl.worker.stub is None or fl.worker.channel is None or fl.worker.state in ("failing", "dead"):
            raise gone
        try:
            reply = await fl.worker.stub.Answer(common.AnswerRequest(
                call_id=call_id, request_id=request_id, result_json=result_json, error=error), timeout=5)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(exc.details() or "malformed answer") from None
            return False
        except Exception:  # noqa: BLE001 - the channel closed under it: the worker was retired just now
            raise gone from None
        return bool(reply.found)

    # -- cancellation -----------------------------------------------------------
    async def cancel(self, tenant: str, call_id: str) -> bool:
        """Cancel a call of ``tenant``; other tenants' calls look absent."""
        fl = self.inflight.get(call_id)
        if fl is None or fl.tenant != tenant:
            return False
        fl.cancelled = True
        if fl.worker.stub is not None and fl.worker.channel is not None:
            with contextlib.suppress(Exception):  # an RPC error, or the channel closed under it
                await fl.worker.stub.Cancel(rpb.CancelRequest(call_id=call_id), timeout=2)
        self._watch(fl, fl.pool.cfg.cancel_grace_s, "cancel")
        return True

    def _abandon(self, fl: InFlight) -> None:
        """Cancel a call nobody waits for any more; replace its worker if the handler keeps running."""

        async def stop() -> None:
            stub = fl.worker.stub
            if stub is None:
                return
            request = rpb.CancelRequest(call_id=fl.call_id)
            with contextlib.suppress(Exception):  # an RPC error, or the channel closed under it
                if not (await stub.Cancel(request, timeout=2)).found:
                    return
                # The runtime gives a cancelled handler STOP_GRACE_S (1 s) before it gives up on it.
                await asyncio.sleep(max(fl.pool.cfg.cancel_grace_s, 1.5))
                if (await stub.Cancel(request, timeout=2)).found and fl.worker.state == "ready":
                    await fl.pool.retire(fl.worker, f"call {fl.call_id} kept running after its client went away",
                                         cause="stuck")

        task = asyncio.get_running_loop().create_task(stop())
        self._watchdogs.add(task)
        task.add_done_callback(self._watchdogs.discard)

    def _watch(self, fl: InFlight, after: float, why: str) -> None:
        async def watchdog() -> None:
            await asyncio.sleep(after)
            if self.inflight.get(fl.call_id) is fl:
                fl.killed_for = why
                await fl.pool.retire(fl.worker, f"call {fl.call_id} did not stop after {why}", cause="stuck")

        task = asyncio.get_running_loop().create_task(watchdog())
        self._watchdogs.add(task)
        task.add_done_callback(self._watchdogs.discard)

    async def close(self) -> None:
        for t in list(self._watchdogs):
            t.cancel()

    # -- failure mapping ----------------------------------------------------------
    async def _runtime_error(self, fl: InFlight, err: rpb.Error) -> MLBridgeError:
        exc = error_from_wire(err.code, err.message, err.details_json)
        fl.worker.errors += 1
        if exc.details.pop("handler_stopped", True) is False:
            # The handler ignored cancellation or its deadline: never trust this worker again.
            await fl.pool.retire(fl.worker, f"handler of call {fl.call_id} did not stop", cause="stuck")
            exc.details["worker_replaced"] = True
        return exc

    async def _rpc_failure(self, fl: InFlight, code: grpc.StatusCode, details: str, timeout: float) -> MLBridgeError:
        fl.worker.errors += 1
        if fl.killed_for == "cancel" or (fl.cancelled and code == grpc.StatusCode.CANCELLED):
            return Cancelled(f"call {fl.call_id} was cancelled; its worker did not stop and was replaced",
                             details={"worker_replaced": True})
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            await fl.pool.retire(fl.worker, f"call {fl.call_id} ran past its deadline and did not stop",
                                  cause="stuck")
            return DeadlineExceeded(
                f"call {fl.call_id} exceeded its deadline of {timeout:.3g}s; worker {fl.worker.id} "
                f"did not stop and was killed and replaced", details={"worker_replaced": True})
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            # Only a misbehaving runtime sends a reply over the cap (it caps its own replies).
            await fl.pool.retire(fl.worker, f"sent a message over the size cap: {details}",
                                  cause="misbehaved")
            return PayloadTooLarge(f"the reply of call {fl.call_id} is over the message size cap: {details}")
        return await self._dead_or_unavailable(fl, f"{code.name}: {details}")

    async def _dead_or_unavailable(self, fl: InFlight, what: str) -> MLBridgeError:
        """The error for a call whose worker stopped answering: how the worker ended, looked up once per
        worker (its other failing calls share the lookup); the worker takes no new call meanwhile and is
        retired."""
        worker = fl.worker
        if worker.state == "dead" and worker.ending is None:  # retired while the call ran
            return WorkerDied(f"worker {worker.id} of bridge {fl.pool.name!r} was stopped during call "
                              f"{fl.call_id}: {worker.death or 'retired'}; it is being replaced")
        if worker.state == "ready":
            worker.state = "failing"  # new calls go to another worker while the backend answers
        if worker.ending is None:
            worker.ending = asyncio.ensure_future(self._how_it_ended(fl.pool, worker, what))
        info = await asyncio.shield(worker.ending)
        if isinstance(info, MLBridgeError):  # the engine did not answer
            return WorkerDied(f"worker {worker.id} of bridge {fl.pool.name!r} was lost during call {fl.call_id} "
                              f"({what}) and its engine does not answer: {info.message}; it is being replaced",
                              details={"engine": "unreachable"})
        if info is None:
            return WorkerDied(f"worker {worker.id} stopped answering during call {fl.call_id} "
                              f"({what}); it was killed and is being replaced")
        cls = OutOfMemory if info.oom_killed else WorkerDied
        return cls(f"worker {worker.id} of bridge {fl.pool.name!r} {info.describe()} during call "
                   f"{fl.call_id}; it is being replaced",
                   details={"exit_code": info.exit_code, "oom_killed": info.oom_killed,
                            "memory_limit": info.memory_limit})

    @staticmethod
    async def _how_it_ended(pool: Pool, worker: Worker, what: str) -> Any:
        """Ask the backend how ``worker`` ended (it may take a moment to see the exit), then retire it.
        The ExitInfo; None when it still runs (it is killed); an MLBridgeError when the engine is gone."""
        info = None
        for _ in range(40):
            try:
                info = await pool.backend.exit_info(worker.handle)
            except MLBridgeError as err:  # the engine itself is gone (restarting): so is the worker
                await pool.retire(worker, f"lost with its engine: {err.message}", cause="killed")
                return err
            if info is not None:
                break
            await asyncio.sleep(0.05)
        if info is None:
            await pool.retire(worker, f"stopped answering: {what}")
            return None
        if info.memory_limit is None:
            info.memory_limit = pool.cfg.limits.memory_bytes if pool.backend.enforces_limits else None
        await pool.retire(worker, info.describe(), cause=info.cause)
        return info

def _strip(metadata: dict[str, str]) -> None:
    """Take out what the runtime told the orchestrator alone (its metrics, spans, tokens): reported, not passed on."""
    for key in FOR_ORCHESTRATOR.intersection(metadata):
        del metadata[key]


def created_resources(reply: Reply) -> list[dict[str, Any]]:
    """Resources a handler created as a side effect (metadata ``mlbridge-created-resources``)."""
    items = loads_lenient(reply.metadata.get(CREATED_RESOURCES, ""), [])
    if not isinstance(items, list):
        return []
    return [i for i in items if isinstance(i, dict) and isinstance(i.get("resource_id"), str)]
