"""Async resource hooks run on the runtime's event loop, behind the sync resource commands."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from runtimes.core import Bridge, CallContext, Resource
from runtimes.core.dispatch import Dispatcher


class Awaiting(Resource):
    type_name = "awaiting"

    async def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"doubled": inputs["x"] * 2, "loop": asyncio.get_running_loop() is ctx_loop[0]}


class Counting(Resource):
    type_name = "counting"

    async def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        for i in range(inputs["n"]):
            await asyncio.sleep(0)
            yield {"i": i}


class Stalling(Resource):
    type_name = "stalling"

    async def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> None:
        await asyncio.sleep(60)


class Host(Bridge):
    name = "host"
    resource_types = (Awaiting, Counting, Stalling)


ctx_loop: list[asyncio.AbstractEventLoop] = []


async def _run(d: Dispatcher, command: str, args: dict[str, Any], rid: str, rtype: str = "",
               deadline_ms: int = 0) -> Any:
    ctx = d.make_context(call_id=uuid.uuid4().hex, command=command, resource_id=rid, resource_type=rtype,
                         deadline_unix_ms=deadline_ms)
    return await d.run(ctx, json.dumps(args))


def test_async_execute_is_awaited_on_the_runtime_loop() -> None:
    async def go() -> None:
        ctx_loop.append(asyncio.get_running_loop())
        d = Dispatcher(Host(), max_message_bytes=1 << 20)
        for rid, rtype in (("a", "awaiting"), ("c", "counting"), ("s", "stalling")):
            out = await _run(d, "common:create_resource", {}, rid, rtype)
            assert out.error is None, out.error
        out = await _run(d, "common:execute_resource", {"x": 21}, "a")
        assert json.loads(out.result) == {"doubled": 42, "loop": True}
        out = await _run(d, "common:execute_resource", {"n": 3}, "c")
        assert json.loads(out.result) == {"chunks": [{"i": 0}, {"i": 1}, {"i": 2}]}
        import time

        started = time.monotonic()
        out = await _run(d, "common:execute_resource", {}, "s", deadline_ms=int((time.time() + 0.3) * 1000))
        assert out.error is not None and out.error.code == "DEADLINE_EXCEEDED"
        assert out.handler_stopped and time.monotonic() - started < 3  # the coroutine was cancelled, not leaked
        d.executor.shutdown(wait=False)

    asyncio.run(go())


class Waiting(Resource):
    """Offers an async execute for unary calls: it runs on the loop, in no handler thread."""

    type_name = "waiting"
    release: asyncio.Event | None = None

    def loop_execute(self, ctx: CallContext) -> Any:
        return self._wait

    async def _wait(self, ctx: CallContext, inputs: dict[str, Any]) -> dict[str, Any]:
        import threading

        if inputs.get("block"):
            assert Waiting.release is not None
            await Waiting.release.wait()
        return {"on_loop_thread": threading.current_thread() is threading.main_thread(), "x": inputs.get("x")}

    def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("a unary call with loop_execute must not reach execute")


class Waiter(Bridge):
    name = "waiter"
    resource_types = (Waiting,)


def test_loop_execute_runs_on_the_loop_and_stops_on_cancel_and_deadline() -> None:
    import time

    async def go() -> None:
        Waiting.release = asyncio.Event()
        d = Dispatcher(Waiter(), max_message_bytes=1 << 20)
        assert (await _run(d, "common:create_resource", {}, "w", "waiting")).error is None
        out = await _run(d, "common:execute_resource", {"x": 7}, "w")
        assert json.loads(out.result) == {"on_loop_thread": True, "x": 7}

        started = time.monotonic()
        out = await _run(d, "common:execute_resource", {"block": True}, "w",
                         deadline_ms=int((time.time() + 0.2) * 1000))
        assert out.error is not None and out.error.code == "DEADLINE_EXCEEDED"
        assert out.handler_stopped and time.monotonic() - started < 1.5

        ctx = d.make_context(call_id="c1", command="common:execute_resource", resource_id="w")
        call = asyncio.ensure_future(d.run(ctx, json.dumps({"block": True})))
        await asyncio.sleep(0.05)
        assert d.cancel("c1") is True
        out = await asyncio.wait_for(call, 2)
        assert out.error is not None and out.error.code == "CANCELLED" and out.handler_stopped
        assert d.cancel("c1") is False  # finished: nothing left running
        d.executor.shutdown(wait=False)

    asyncio.run(go())
