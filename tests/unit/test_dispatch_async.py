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
