"""Unary calls to a runtime multiplexed over one long-lived Session stream.

Setting up an RPC per call costs about as much as the call itself; one
stream per worker carries every unary call instead, and replies are matched
to their callers by call id. When the stream breaks (the worker died), every
pending call fails with :class:`SessionBroken`, which carries the gRPC status.

Writes combine: a caller that finds no write in progress writes its request
at once (no added latency for a lone call) and, while its write is in
flight, others queue theirs; it then writes everything queued as one
message before it goes on to wait for its reply. A stream write costs more
than the bytes in it, so a busy worker takes one write per burst of calls,
not one per call; the runtime does the same with its replies.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc

from runtimes.wire.proto import runtime_pb2 as rpb
from runtimes.wire.proto import runtime_pb2_grpc as rpb_grpc


class SessionBroken(Exception):
    """The session stream ended; ``code``/``details`` say how."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    def again(self) -> SessionBroken:
        """A fresh copy to raise (raising one instance again and again grows its traceback)."""
        return SessionBroken(self.code, self.details)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    """Fail ``fut``; nobody may be waiting any more, so its exception counts as seen (no "never retrieved")."""
    fut.set_exception(exc)
    fut.exception()


class Session:
    def __init__(self, stub: rpb_grpc.RuntimeStub) -> None:
        self._call = stub.Session()
        self._pending: dict[str, asyncio.Future[rpb.CallReply]] = {}
        self._outbox: list[rpb.CallRequest] = []
        self._writing = False
        self._handoff: asyncio.Task[None] | None = None
        self._broken: SessionBroken | None = None
        #: Messages written and the calls in them; messages read and the replies in them.
        self.writes = self.calls_written = self.reads = self.replies_read = 0
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def request(self, req: rpb.CallRequest) -> rpb.CallReply:
        """Send one call and wait for its reply (the caller bounds the wait)."""
        if self._broken is not None:
            raise self._broken.again()
        fut: asyncio.Future[rpb.CallReply] = asyncio.get_running_loop().create_future()
        self._pending[req.call_id] = fut
        try:
            self._outbox.append(req)
            if not self._writing:
                await self._flush()
            return await fut
        except grpc.aio.AioRpcError as exc:
            raise SessionBroken(exc.code(), exc.details() or "") from None
        except asyncio.InvalidStateError:
            raise (self._broken.again() if self._broken else
                   SessionBroken(grpc.StatusCode.UNAVAILABLE, "session closed")) from None
        finally:
            self._pending.pop(req.call_id, None)
            if self._outbox and req in self._outbox:  # gave up before it was written: never send it
                self._outbox.remove(req)

    async def _flush(self) -> None:
        """Write what is queued, and what queues meanwhile, until nothing is left (one writer at a time)."""
        self._writing = True
        handed_off = False
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                self.writes += 1
                self.calls_written += len(batch)
                await self._call.write(rpb.CallBatch(calls=batch))
        except asyncio.CancelledError:
            # The writing caller gave up (its deadline); the others queued still need a writer.
            if self._outbox:
                handed_off = True  # stays "writing": the task below is the writer now
                self._handoff = asyncio.get_running_loop().create_task(self._resume())
            raise
        except BaseException:
            # Those still queued had nobody writing for them: fail them now rather than leave them waiting.
            failed = SessionBroken(grpc.StatusCode.UNAVAILABLE, "the session could not be written to")
            for queued in self._outbox:
                waiting = self._pending.get(queued.call_id)
                if waiting is not None and not waiting.done():
                    _fail(waiting, (self._broken or failed).again())
            self._outbox.clear()
            raise
        finally:
            if not handed_off:
                self._writing = False

    async def _resume(self) -> None:
        self._writing = False
        with contextlib.suppress(BaseException):
            await self._flush()

    async def _read(self) -> None:
        broken = SessionBroken(grpc.StatusCode.UNAVAILABLE, "the runtime closed the session")
        try:
            while True:
                batch = await self._call.read()
                if batch is grpc.aio.EOF:
                    break
                self.reads += 1
                self.replies_read += len(batch.replies)
                for reply in batch.replies:
                    fut = self._pending.get(reply.call_id)
                    if fut is not None and not fut.done():
                        fut.set_result(reply)
        except grpc.aio.AioRpcError as exc:
            broken = SessionBroken(exc.code(), exc.details() or "")
        except asyncio.CancelledError:
            broken = SessionBroken(grpc.StatusCode.CANCELLED, "session closed by the orchestrator")
        self._broken = broken
        for fut in self._pending.values():
            if not fut.done():
                _fail(fut, broken.again())

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            self._call.cancel()
            await self._reader


class SessionGroup:
    """Up to ``size`` Session streams to one worker, opened as concurrency needs them.

    Writes on one stream are serialised, so many concurrent callers queue
    behind each other; a call goes to the stream with the fewest calls
    pending, and a new stream opens when every open one is busy.
    """

    def __init__(self, stub: rpb_grpc.RuntimeStub, size: int = 4) -> None:
        self._stub = stub
        self._size = size
        self._sessions = [Session(stub)]

    def _pick(self) -> Session:
        live = [s for s in self._sessions if s._broken is None]
        best = min(live, key=lambda s: len(s._pending), default=None)
        if best is None or (len(best._pending) > 0 and len(self._sessions) < self._size):
            best = Session(self._stub)
            self._sessions.append(best)
        return best

    async def request(self, req: rpb.CallRequest) -> rpb.CallReply:
        if all(s._broken is not None for s in self._sessions):
            raise self._sessions[0]._broken.again()  # type: ignore[union-attr]
        return await self._pick().request(req)

    async def close(self) -> None:
        for s in self._sessions:
            await s.close()
