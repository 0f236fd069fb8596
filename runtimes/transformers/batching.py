"""Adaptive batching: concurrent calls to one pipeline served by one model invocation.

A model does the work of 32 short texts in little more time than one, so a
busy pipeline gathers the calls that arrive together and runs them as one
batch. Each execute call runs in its own handler thread (the dispatcher's
pool); it puts its request on the pipeline's queue and waits; one batcher
thread per pipeline takes requests off the queue, runs them as one
invocation, and hands each caller its own answer and the batch's size
(reply metadata).

When to run: at once when the batch is full (``max_batch_size`` texts), or
when it holds as many calls as this pipeline has lately had in flight at
once (the most seen queued or served together) and no call is still on its
way into the queue; otherwise when its oldest call has waited
``max_batch_time_ms``, and then fewer calls are expected next time. So a
lone caller, or a client calling one at a time, never waits for company
that is not coming, while under load the batches grow to the concurrency
the pipeline sees: the calls that queue while one batch runs form the next.

A caller that finds the pipeline idle (nothing running, nothing queued,
nobody arriving) runs its own invocation in its own thread: handing a lone
call to the batcher thread and back would cost two thread switches for
nothing. Calls that arrive meanwhile queue for the batcher, which waits for
the model to be free.

A call on the event loop (:meth:`Batcher.submit_async`, what a batching
pipeline's unary calls use) costs no handler thread: it queues and awaits a
future the batcher thread resolves, so a burst of 32 calls is 32 futures,
not 32 threads contending for the GIL with the model.

Failure isolation: a caller cancelled or past its deadline while queued is
dropped before the batch runs; a batch that raises is run again one request
at a time, so a bad input fails only its own caller. Only requests with the
same parameters share a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from runtimes.core import CallContext
from runtimes.wire.errors import Cancelled, DeadlineExceeded, Unavailable

__all__ = ["BatchSettings", "Batcher", "Runner", "Ticket"]

#: Runs one invocation: the payloads of the batch's requests and their shared parameters -> one answer each.
Runner = Callable[[list[Any], dict[str, Any]], list[Any]]
# How often a waiting caller looks at its own cancellation (its deadline wakes it exactly). Rarely: every
# wake-up takes the GIL from the thread running the model; the dispatcher allows a second to stop.
POLL_S = 0.2


def _timeout(ctx: CallContext) -> float:
    left = ctx.remaining()
    return POLL_S if left is None else max(min(POLL_S, left), 0.0)


@dataclass(frozen=True)
class BatchSettings:
    max_batch_size: int = 16
    max_batch_time_ms: float = 5.0


@dataclass
class Ticket:
    """A call between entering ``execute`` and queuing."""

    queued: bool = False


@dataclass(eq=False)
class _Request:
    payload: Any
    size: int
    params: dict[str, Any]
    key: str
    ctx: CallContext
    done: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.monotonic)
    answer: Any = None
    error: BaseException | None = None
    batch_size: int = 0
    #: Set for a caller waiting on the event loop (:meth:`Batcher.submit_async`).
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[tuple[Any, int]] | None = None

    def stopped(self) -> BaseException | None:
        """Why this caller no longer wants an answer, or None."""
        if self.ctx.cancelled:
            return Cancelled(f"call {self.ctx.call_id} was cancelled while waiting for its batch")
        left = self.ctx.remaining()
        if left is not None and left <= 0:
            return DeadlineExceeded(f"call {self.ctx.call_id} ran past its deadline while waiting for its batch")
        return None


class Batcher:
    """The queue and batcher thread of one pipeline (started on first use, stopped by :meth:`close`)."""

    def __init__(self, run: Runner, settings: BatchSettings, name: str = "pipeline",
                 observe: Callable[[float], None] | None = None) -> None:
        self._run = run
        #: Called with the number of requests of every model invocation (the ``batch_size`` metric).
        self._observe = observe
        self.settings = settings
        self._name = name
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._arriving = 0
        self._busy = False
        #: Requests in the invocation running now.
        self._serving = 0
        #: How many requests a batch should gather before it runs early: the most seen at once lately.
        self._expect = 1
        self._closed = False
        self._thread: threading.Thread | None = None
        #: Model invocations run, requests served, and texts in them.
        self.invocations = 0
        self.requests = 0
        self.items = 0

    # -- callers --------------------------------------------------------------------------
    @contextlib.contextmanager
    def arriving(self) -> Iterator[Ticket]:
        """Held from the moment a call enters ``execute`` until it has queued (:meth:`submit`).

        While any call is arriving the batcher waits for it (up to
        ``max_batch_time_ms``) rather than run a batch without it.
        """
        ticket = Ticket()
        with self._cond:
            self._arriving += 1
        try:
            yield ticket
        finally:
            if not ticket.queued:
                with self._cond:
                    self._arriving -= 1
                    self._cond.notify()

    def submit(self, ticket: Ticket, ctx: CallContext, payload: Any, size: int, params: dict[str, Any],
               key: str) -> tuple[Any, int]:
        """Have one call served: its answer, and how many calls the invocation that answered it served.

        ``ticket`` is what :meth:`arriving` gave this call; ``size`` counts its
        texts against ``max_batch_size``. Raises what the invocation raised
        for this request, or Cancelled / DeadlineExceeded when the caller
        stops waiting.
        """
        req = _Request(payload, size, params, key, ctx)
        with self._cond:
            if self._closed:
                raise Unavailable("the pipeline was deleted while this call waited; create it again")
            self._arriving -= 1
            ticket.queued = True
            alone = not self._busy and not self._queue and self._arriving == 0
            if alone:
                self._busy, self._serving = True, 1
            else:
                self._enqueue(req)
        if alone:
            try:
                return self._invoke([req])[0], 1
            finally:
                self._idle()
        return self._wait(req)

    def _enqueue(self, req: _Request) -> None:
        """Queue ``req`` for the batcher thread (started on first use); the caller holds ``_cond``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True, name=f"batcher-{self._name}")
            self._thread.start()
        self._queue.append(req)
        self._expect = min(max(self._expect, self._serving + len(self._queue)), self.settings.max_batch_size)
        self._cond.notify()

    async def submit_async(self, ctx: CallContext, payload: Any, size: int, params: dict[str, Any],
                           key: str) -> tuple[Any, int]:
        """:meth:`submit` for a caller on the event loop: queue, and await the batcher thread's answer.

        Cancelling the awaiting task (the caller's cancel or deadline) takes
        the request off the queue if it has not run yet.
        """
        loop = asyncio.get_running_loop()
        req = _Request(payload, size, params, key, ctx, loop=loop, future=loop.create_future())
        with self._cond:
            if self._closed:
                raise Unavailable("the pipeline was deleted while this call waited; create it again")
            self._enqueue(req)
        try:
            assert req.future is not None
            return await req.future
        except asyncio.CancelledError:
            with self._cond:
                if req in self._queue:
                    self._queue.remove(req)
            raise

    def _wait(self, req: _Request) -> tuple[Any, int]:
        while not req.done.wait(_timeout(req.ctx)):
            why = req.stopped()
            if why is not None:
                with self._cond:
                    if req in self._queue:
                        self._queue.remove(req)
                raise why
        if req.error is not None:
            raise req.error
        return req.answer, req.batch_size

    def close(self) -> None:
        """Stop the batcher thread once the queue is empty; later calls are refused."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- the batcher thread ---------------------------------------------------------------
    def _idle(self) -> None:
        with self._cond:
            self._busy, self._serving = False, 0
            self._cond.notify_all()

    def _gather(self) -> list[_Request] | None:
        """Wait for a batch and take it off the queue, marking the model busy (None: closed and drained)."""
        s = self.settings
        with self._cond:
            while True:
                while not self._queue or self._busy:
                    if self._closed and not self._queue:
                        return None
                    self._cond.wait()
                deadline = self._queue[0].queued_at + s.max_batch_time_ms / 1000.0
                while self._queue and not self._busy:
                    key = self._queue[0].key
                    batch: list[_Request] = []
                    size = 0
                    for req in self._queue:
                        if req.key == key and (not batch or size + req.size <= s.max_batch_size):
                            batch.append(req)
                            size += req.size
                    left = deadline - time.monotonic()
                    everyone = len(batch) >= self._expect and self._arriving == 0
                    if size >= s.max_batch_size or everyone or left <= 0 or self._closed:
                        for req in batch:
                            self._queue.remove(req)
                        if not everyone and size < s.max_batch_size:  # fewer came than lately: expect fewer
                            self._expect = max(1, len(batch))
                        self._busy, self._serving = True, len(batch)
                        return batch
                    self._cond.wait(left)
                # every queued caller gave up, or a lone caller took the model meanwhile: start over

    def _loop(self) -> None:
        while (batch := self._gather()) is not None:
            try:
                live = []
                for req in batch:
                    why = req.stopped()
                    if why is not None:
                        self._finish(req, None, why, 0)
                    else:
                        live.append(req)
                if live:
                    self._serve(live)
            finally:
                self._idle()
                self._wake(batch)

    def _serve(self, batch: list[_Request]) -> None:
        try:
            answers = self._invoke(batch)
        except BaseException as exc:  # noqa: BLE001 - handed to the callers
            if len(batch) == 1:
                self._finish(batch[0], None, exc, 1)
                return
            for req in batch:  # one bad input must fail only its own caller
                try:
                    self._finish(req, self._invoke([req])[0], None, 1)
                except BaseException as one:  # noqa: BLE001
                    self._finish(req, None, one, 1)
            return
        for req, answer in zip(batch, answers, strict=True):
            self._finish(req, answer, None, len(batch))

    def _invoke(self, batch: list[_Request]) -> list[Any]:
        answers = self._run([req.payload for req in batch], batch[0].params)
        if len(answers) != len(batch):
            raise RuntimeError(f"the pipeline returned {len(answers)} answers for {len(batch)} requests")
        with self._cond:
            self.invocations += 1
            self.requests += len(batch)
            self.items += sum(req.size for req in batch)
        if self._observe is not None:
            self._observe(len(batch))
        return answers

    @staticmethod
    def _finish(req: _Request, answer: Any, error: BaseException | None, size: int) -> None:
        req.answer, req.error, req.batch_size = answer, error, size
        if req.future is None:
            req.done.set()  # a thread caller; loop callers are woken together by _wake

    @staticmethod
    def _wake(batch: list[_Request]) -> None:
        """Hand the loop callers of a batch their answers: one wake-up of each event loop, not one per caller."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Request]] = {}
        for req in batch:
            if req.loop is not None:
                by_loop.setdefault(req.loop, []).append(req)
        for loop, reqs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_resolve_all, reqs)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"invocations": self.invocations, "requests": self.requests, "items": self.items,
                    "queued": len(self._queue), **self.settings.__dict__}


def _resolve_all(reqs: list[_Request]) -> None:
    for req in reqs:
        fut = req.future
        if fut is None or fut.done():
            continue  # the caller gave up
        if req.error is not None:
            fut.set_exception(req.error)
        else:
            fut.set_result((req.answer, req.batch_size))
