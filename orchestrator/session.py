"""Unary calls to a runtime multiplexed over one long-lived Session stream.

Setting up an RPC per call costs about as much as the call itself; one
stream per worker carries every unary call instead, and replies are matched
to their callers by call id. When the stream breaks (the worker died), every
pending call fails with :class:`SessionBroken`, which carries the gRPC status.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from runtimes.wire.proto import runtime_pb2 as rpb
from runtimes.wire.proto import runtime_pb2_grpc as rpb_grpc


class SessionBroken(Exception):
    """The session stream ended; ``code``/``details`` say how."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class Session:
    def __init__(self, stub: rpb_grpc.RuntimeStub) -> None:
        self._call = stub.Session()
        self._pending: dict[str, asyncio.Future[rpb.CallReply]] = {}
        self._write_lock = asyncio.Lock()
        self._broken: SessionBroken | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def request(self, req: rpb.CallRequest) -> rpb.CallReply:
        """Send one call and wait for its reply (the caller bounds the wait)."""
        if self._broken is not None:
            raise self._broken
        fut: asyncio.Future[rpb.CallReply] = asyncio.get_running_loop().create_future()
        self._pending[req.call_id] = fut
        try:
            async with self._write_lock:
                await self._call.write(req)
            return await fut
        except grpc.aio.AioRpcError as exc:
            raise SessionBroken(exc.code(), exc.details() or "") from None
        except asyncio.InvalidStateError:
            raise self._broken or SessionBroken(grpc.StatusCode.UNAVAILABLE, "session closed") from None
        finally:
            self._pending.pop(req.call_id, None)

    async def _read(self) -> None:
        broken = SessionBroken(grpc.StatusCode.UNAVAILABLE, "the runtime closed the session")
        try:
            while True:
                ev = await self._call.read()
                if ev is grpc.aio.EOF:
                    break
                fut = self._pending.get(ev.call_id)
                if fut is not None and not fut.done():
                    fut.set_result(ev.final)
        except grpc.aio.AioRpcError as exc:
            broken = SessionBroken(exc.code(), exc.details() or "")
        except asyncio.CancelledError:
            broken = SessionBroken(grpc.StatusCode.CANCELLED, "session closed by the orchestrator")
        self._broken = broken
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(broken)

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
            raise self._sessions[0]._broken  # type: ignore[misc]
        return await self._pick().request(req)

    async def close(self) -> None:
        for s in self._sessions:
            await s.close()
