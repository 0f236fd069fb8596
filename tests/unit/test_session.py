"""The Session stream between orchestrator and worker: one message per burst under load, at once when alone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from orchestrator import AsyncMLBridge
from orchestrator.session import Session
from runtimes.wire.proto import runtime_pb2 as rpb
from tests.harness import ServerThread, make_config


class SlowStream:
    """A Session call whose writes take until ``release`` is set; it echoes every call back as a reply."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.written: list[list[str]] = []
        self.replies: asyncio.Queue[Any] = asyncio.Queue()

    async def write(self, batch: rpb.CallBatch) -> None:
        self.written.append([c.call_id for c in batch.calls])
        await self.release.wait()
        await self.replies.put(rpb.ReplyBatch(replies=[rpb.CallReply(call_id=c.call_id, ok=True,
                                                                     result_json=f'"{c.call_id}"')
                                                       for c in batch.calls]))

    async def read(self) -> Any:
        return await self.replies.get()

    def cancel(self) -> None:
        pass


class Stub:
    def __init__(self, stream: SlowStream) -> None:
        self.stream = stream

    def Session(self) -> SlowStream:  # noqa: N802 - the gRPC method's name
        return self.stream


def test_calls_queued_behind_a_write_go_out_together() -> None:
    async def go() -> None:
        stream = SlowStream()
        session = Session(Stub(stream))  # type: ignore[arg-type]
        calls = [asyncio.ensure_future(session.request(rpb.CallRequest(call_id=f"c{i}"))) for i in range(10)]
        await asyncio.sleep(0.01)
        assert stream.written == [["c0"]]  # the first is written at once; the rest wait for that write
        stream.release.set()
        replies = await asyncio.wait_for(asyncio.gather(*calls), 2)
        assert stream.written == [["c0"], [f"c{i}" for i in range(1, 10)]]
        assert [r.result_json for r in replies] == [f'"c{i}"' for i in range(10)]  # each caller its own reply
        assert (session.writes, session.calls_written) == (2, 10)
        assert (session.reads, session.replies_read) == (2, 10)
        assert await asyncio.wait_for(session.request(rpb.CallRequest(call_id="alone")), 1)
        assert stream.written[-1] == ["alone"]
        await session.close()

    asyncio.run(go())


def test_a_caller_that_gives_up_is_never_sent() -> None:
    async def go() -> None:
        stream = SlowStream()
        session = Session(Stub(stream))  # type: ignore[arg-type]
        first = asyncio.ensure_future(session.request(rpb.CallRequest(call_id="first")))
        await asyncio.sleep(0)
        late = asyncio.ensure_future(session.request(rpb.CallRequest(call_id="late")))
        await asyncio.sleep(0.01)
        late.cancel()
        await asyncio.sleep(0)
        stream.release.set()
        assert (await asyncio.wait_for(first, 1)).call_id == "first"
        assert stream.written == [["first"]]  # "late" left the queue with its caller
        await session.close()

    asyncio.run(go())


def test_many_concurrent_calls_each_get_their_own_reply(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, bridges={"mock": {"runtime": "mock", "pool_size": 1}}, default_bridge="mock")
    with ServerThread(cfg) as srv:
        async def burst(n: int) -> list[Any]:
            async with AsyncMLBridge.connect(srv.target) as mb:
                return list(await asyncio.gather(*(mb.call("mock", "mock:echo", {"i": i}) for i in range(n))))

        assert asyncio.run(burst(64)) == [{"i": i} for i in range(64)]
        [worker] = srv.orch.pools["mock"].claimed("default")
        sessions = worker.session._sessions  # type: ignore[union-attr]
        assert sum(s.calls_written for s in sessions) == sum(s.replies_read for s in sessions) >= 64
        assert all(s._broken is None for s in sessions)  # the streams stay open for the next calls
