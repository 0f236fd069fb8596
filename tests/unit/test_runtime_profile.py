"""``common:profile`` through the real dispatcher: call mode (cProfile + samples) and sampling windows."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

import pytest

from runtimes.core import Bridge, CallContext, Resource, command
from runtimes.core.dispatch import Dispatcher, Outcome
from runtimes.core.profile import MAX_COLLAPSED_BYTES, _cap_lines
from runtimes.mock import MockBridge
from runtimes.wire import metadata as meta
from runtimes.wire import spans as wire_spans

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def busy_leaf(seconds: float) -> int:
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


LEAF = f"test_runtime_profile.py:busy_leaf:{busy_leaf.__code__.co_firstlineno}"


class Doubler(Resource):
    type_name = "doubler"

    def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> dict[str, Any]:
        busy_leaf(0.03)
        return {"y": inputs.get("x", 0) * 2}


class Prof(Bridge):
    name = "prof"
    resource_types = (Doubler,)

    @command()
    def work(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        busy_leaf(float(args.get("seconds", 0.05)))
        ctx.metadata[meta.REPLAY_KEY] = "prof:work"
        ctx.reply_attachments["out"] = b"bytes"
        ctx.record_tokens(tokens_in=1, tokens_out=2)
        with ctx.span("inside"):
            pass
        return {"done": True}

    @command()
    async def waits(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return {"loop": True}

    @command()
    def fails(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("inner failure")

    @command()
    def chunks(self, ctx: CallContext, args: dict[str, Any]) -> Any:
        yield {"i": 0}
        yield {"i": 1}
        return None

    @command(schema={"type": "object", "required": ["seconds"], "properties": {"seconds": {"type": "number"}}})
    def sleeps(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        ctx.sleep(float(args["seconds"]))
        return {}


def run(d: Dispatcher, args: dict[str, Any], *, deadline_s: float = 0, **fields: Any) -> Outcome:
    async def go() -> Outcome:
        ctx = d.make_context(call_id=uuid.uuid4().hex, command="common:profile",
                             deadline_unix_ms=int((time.time() + deadline_s) * 1000) if deadline_s else 0, **fields)
        return await d.run(ctx, json.dumps(args))

    return asyncio.run(go())


def ok(d: Dispatcher, args: dict[str, Any], **fields: Any) -> dict[str, Any]:
    out = run(d, args, **fields)
    assert out.error is None, out.error.flat()
    value: dict[str, Any] = json.loads(out.result)
    assert set(value) == {"mode", "result", "error", "duration_ms", "pstats", "collapsed", "samples", "truncated"}
    return value


@pytest.fixture
def d() -> Dispatcher:
    return Dispatcher(Prof(), max_message_bytes=16 << 20)


def test_call_mode_profiles_a_command_and_keeps_what_it_left_for_the_reply(d: Dispatcher) -> None:
    out = run(d, {"command": "prof:work", "args": {"seconds": 0.1}}, traceparent=TP)
    assert out.error is None
    r = json.loads(out.result)
    assert r["mode"] == "call" and r["result"] == {"done": True} and r["error"] == ""
    assert r["duration_ms"] >= 100 and r["samples"] >= 5 and r["truncated"] == []
    assert "cumulative" in r["pstats"] and "busy_leaf" in r["pstats"]
    leaf = [line for line in r["collapsed"].splitlines() if line.rsplit(" ", 1)[0].endswith(LEAF)]
    stack, count = leaf[0].rsplit(" ", 1)
    assert int(count) >= 1 and "test_runtime_profile.py:Prof.work:" in stack
    assert "profile.py:_profile_call:" in stack  # it ran in the profiling call's own thread
    counts = [int(line.rsplit(" ", 1)[1]) for line in r["collapsed"].splitlines()]
    assert counts == sorted(counts, reverse=True)
    # what the inner call left goes out with the profiling call's reply
    assert out.metadata[meta.REPLAY_KEY] == "prof:work" and out.attachments == {"out": b"bytes"}
    assert json.loads(out.metadata[meta.USAGE]) == {"tokens_in": 1, "tokens_out": 2}
    head, spans = wire_spans.decode(out.metadata[meta.SPANS]) or ({}, [])
    assert [s["name"] for s in spans] == ["inside"]
    assert spans[0]["parent_span_id"] == f"{head['span_id']:016x}"


def test_call_mode_executes_a_resource(d: Dispatcher) -> None:
    async def create() -> Outcome:
        ctx = d.make_context(call_id="c", command="common:create_resource", resource_id="dbl",
                             resource_type="doubler")
        return await d.run(ctx, "{}")

    assert asyncio.run(create()).error is None
    r = ok(d, {"resource_id": "dbl", "inputs": {"x": 21}})
    assert r["result"] == {"y": 42} and "busy_leaf" in r["pstats"]
    r = ok(d, {"resource_id": "missing", "inputs": {}})
    assert r["result"] is None and r["error"].startswith("NOT_FOUND: ")


def test_call_mode_reports_inner_errors_as_data(d: Dispatcher) -> None:
    r = ok(d, {"command": "prof:fails"})
    assert r["result"] is None and r["error"] == "FRAMEWORK_ERROR: builtins.ValueError: inner failure"
    assert "fails" in r["pstats"]
    r = ok(d, {"command": "prof:nothing"})
    assert r["error"].startswith("UNKNOWN_COMMAND: ")
    r = ok(d, {"command": "prof:sleeps", "args": {}})
    assert r["error"].startswith("INVALID_ARGUMENT: ") and "seconds" in r["error"]
    r = ok(d, {"command": "prof:chunks"})  # a generator's chunks are collected, as on a unary call
    assert r["result"] == {"chunks": [{"i": 0}, {"i": 1}]}


def test_async_handlers_run_on_the_loop_and_are_seen_by_samples(d: Dispatcher) -> None:
    r = ok(d, {"command": "prof:waits"})
    assert r["result"] == {"loop": True} and r["error"] == "" and r["samples"] >= 3
    assert "base_events.py" in r["collapsed"]  # the event loop's thread was sampled meanwhile


def test_profile_cannot_profile_itself_and_args_pick_one_mode(d: Dispatcher) -> None:
    for bad, needle in (
        ({"command": "common:profile", "args": {"sample_s": 1}}, "itself"),
        ({}, "one of"),
        ({"command": "prof:work", "sample_s": 1}, "one of"),
        ({"command": "prof:work", "inputs": {}}, "one of"),
        ({"resource_id": "x", "args": {}}, "one of"),
        ({"sample_s": 0.01}, "sample_s"),
        ({"sample_s": 31}, "sample_s"),
        ({"sample_s": 1, "interval_ms": 0}, "interval_ms"),
        ({"sample_s": 1, "interval_ms": 5000}, "interval_ms"),
        ({"sample_s": True}, "sample_s"),
        ({"command": ""}, "non-empty"),
        ({"other": 1}, "unexpected field"),
        ({"command": "prof:work", "args": []}, "args"),
    ):
        out = run(d, bad)
        assert out.error is not None and out.error.code == "INVALID_ARGUMENT", bad
        assert needle in out.error.message, (bad, out.error.message)


def test_sample_mode_samples_other_threads_while_calls_run() -> None:
    d = Dispatcher(MockBridge(), max_message_bytes=16 << 20)
    done = threading.Event()

    def spin() -> None:
        while not done.is_set():
            busy_leaf(0.01)

    t = threading.Thread(target=spin, name="spinner")
    t.start()
    try:
        r = ok(d, {"sample_s": 0.3, "interval_ms": 10})
    finally:
        done.set()
        t.join()
    assert r["mode"] == "sample" and r["result"] is None and r["error"] == "" and r["pstats"] == ""
    assert 280 <= r["duration_ms"] < 2000 and 10 <= r["samples"] <= 31
    assert any(line.split(" ")[0].endswith(LEAF) for line in r["collapsed"].splitlines())
    assert "profile.py:_sample_window" not in r["collapsed"]  # its own thread is left out


def test_sampling_honours_cancel_and_deadline(d: Dispatcher) -> None:
    started = time.monotonic()
    out = run(d, {"sample_s": 30}, deadline_s=0.3)
    assert out.error is not None and out.error.code == "DEADLINE_EXCEEDED"
    assert out.handler_stopped and time.monotonic() - started < 3

    async def cancelled() -> Outcome:
        ctx = d.make_context(call_id="p1", command="common:profile")
        task = asyncio.ensure_future(d.run(ctx, json.dumps({"sample_s": 30, "interval_ms": 50})))
        await asyncio.sleep(0.2)
        assert d.cancel("p1")
        return await asyncio.wait_for(task, 5)

    out = asyncio.run(cancelled())
    assert out.error is not None and out.error.code == "CANCELLED" and out.handler_stopped


def test_a_cancelled_profiled_call_ends_cancelled(d: Dispatcher) -> None:
    async def cancelled() -> Outcome:
        ctx = d.make_context(call_id="p2", command="common:profile")
        task = asyncio.ensure_future(d.run(ctx, json.dumps({"command": "prof:sleeps", "args": {"seconds": 30}})))
        await asyncio.sleep(0.2)
        assert d.cancel("p2")
        return await asyncio.wait_for(task, 5)

    started = time.monotonic()
    out = asyncio.run(cancelled())
    assert out.error is not None and out.error.code == "CANCELLED" and out.handler_stopped
    assert time.monotonic() - started < 3


def test_one_profile_at_a_time(d: Dispatcher) -> None:
    async def both() -> list[Outcome]:
        first = asyncio.ensure_future(run_async({"sample_s": 0.5}))
        await asyncio.sleep(0.1)
        second = await run_async({"command": "prof:work", "args": {"seconds": 0}})
        return [await first, second]

    async def run_async(args: dict[str, Any]) -> Outcome:
        ctx = d.make_context(call_id=uuid.uuid4().hex, command="common:profile")
        return await d.run(ctx, json.dumps(args))

    first, second = asyncio.run(both())
    assert first.error is None
    assert second.error is not None and second.error.code == "FAILED_PRECONDITION"
    assert "another common:profile" in second.error.message
    assert ok(d, {"command": "prof:work", "args": {"seconds": 0}})["error"] == ""  # free again


def test_texts_are_cut_at_a_line_boundary() -> None:
    text = "".join(f"frame;{i} {i}\n" for i in range(100_000))
    cut, was = _cap_lines(text, MAX_COLLAPSED_BYTES)
    assert was and len(cut.encode()) <= MAX_COLLAPSED_BYTES and cut.endswith("\n")
    assert text.startswith(cut)
    assert _cap_lines("a\nb\n", 100) == ("a\nb\n", False)
    assert _cap_lines("é" * 10 + "\n", 5) == ("", True)


def test_describe_lists_health_and_profile() -> None:
    d = Dispatcher(MockBridge(), max_message_bytes=1 << 20)
    commands = {c["name"]: c for c in d.describe()["commands"]}
    assert {"common:health", "common:profile"} <= set(commands)
    assert not commands["common:profile"]["streaming"]
    schema = commands["common:profile"]["schema"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"command", "args", "resource_id", "inputs", "sample_s", "interval_ms"}
    assert not d.is_inline("common:profile") and not d.is_inline("common:health")
