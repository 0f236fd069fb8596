"""Bridge metrics, token usage and spans: the SDK, and what the real dispatcher puts in reply metadata."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import uuid
from typing import Any

import pytest

from runtimes.core import Bridge, CallContext, command
from runtimes.core.dispatch import MAX_METRICS_BYTES, Dispatcher, Outcome
from runtimes.core.server import RuntimeServicer, _ctx_fields
from runtimes.core.telemetry import MAX_METRICS, MAX_SERIES, BridgeMetrics
from runtimes.core.tracing import MAX_SPANS, NO_SPAN, CallTrace, parse_traceparent
from runtimes.mock import MockBridge
from runtimes.wire import metadata as meta
from runtimes.wire import spans as wire_spans
from runtimes.wire.proto import runtime_pb2 as pb

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TP = f"00-{TRACE}-{PARENT}-01"


def spans_of(metadata: Any) -> list[dict[str, Any]]:
    """The spans of a reply: the handler span first (named "(handler)": its name is the orchestrator's), then
    the bridge's, as :mod:`runtimes.wire.spans` carries them."""
    decoded = wire_spans.decode(metadata[meta.SPANS])
    assert decoded is not None, metadata[meta.SPANS]
    head, spans = decoded
    handler = {"name": "(handler)", "span_id": f"{head['span_id']:016x}", "start_ns": head["start_ns"],
               "end_ns": head["end_ns"], "error": head["error"], "dropped": head["dropped"]}
    return [handler, *spans]


class Probe(Bridge):
    """A bridge whose commands use every telemetry feature."""

    name = "probe"

    def __init__(self) -> None:
        super().__init__()
        self.hits = self.metrics.counter("hits", "Hits", labels=("route",))

    @command(inline=True)
    def plain(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return {}

    @command()
    def count(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        for route in args.get("routes", ["a"]):
            self.hits.inc(route=route)
        ctx.record_tokens(tokens_in=args.get("in", 0), tokens_out=args.get("out", 0))
        if args.get("fail"):
            raise RuntimeError("boom")
        return {}

    @command()
    def nested(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        with ctx.span("outer", size=3, ratio=0.5, ok=True, obj=[1, 2], big="x" * 1000) as outer:
            outer.set_attribute("later", "yes")
            with ctx.span("inner"):
                pass
            seen: list[str] = []

            def other_thread() -> None:
                with ctx.span("in-thread"):  # another thread: a child of the handler span
                    seen.append("done")

            t = threading.Thread(target=other_thread)
            t.start()
            t.join()
        with pytest.raises(KeyError), ctx.span("failing"):
            raise KeyError("x")
        return {"traced": ctx.trace is not None}

    @command()
    async def async_spans(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        async def branch(name: str) -> None:
            with ctx.span(name):
                await asyncio.sleep(0.01)
                with ctx.span(f"{name}.child"):
                    await asyncio.sleep(0)

        with ctx.span("root"):
            await asyncio.gather(branch("a"), branch("b"))
        return {}

    @command()
    def many_spans(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        for i in range(args["n"]):
            with ctx.span(f"s{i}"):
                pass
        return {}

    @command()
    def stream(self, ctx: CallContext, args: dict[str, Any]) -> Any:
        for i in range(3):
            with ctx.span(f"chunk{i}"):
                self.hits.inc(route="stream")
            yield {"i": i}
        ctx.record_tokens(tokens_out=3)
        return {"n": 3}

    @command()
    def noisy(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        for i in range(args["n"]):
            self.hits.inc(route=f"r{i}-" + "x" * 60)
        return {}


def run(d: Dispatcher, command: str, args: dict[str, Any] | None = None, **fields: Any) -> Outcome:
    async def go() -> Outcome:
        ctx = d.make_context(call_id=uuid.uuid4().hex, command=command, **fields)
        return await d.run(ctx, json.dumps(args or {}))

    return asyncio.run(go())


def stream(d: Dispatcher, command: str, args: dict[str, Any] | None = None,
           **fields: Any) -> tuple[list[Any], Outcome]:
    async def go() -> list[tuple[str, Any]]:
        f = {"call_id": uuid.uuid4().hex, "command": command, **fields}
        return [ev async for ev in d.stream(f, json.dumps(args or {}))]

    events = asyncio.run(go())
    assert events[-1][0] == "final"
    return [p for k, p in events if k == "chunk"], events[-1][1]


@pytest.fixture
def d() -> Dispatcher:
    return Dispatcher(Probe(), max_message_bytes=1 << 20)


# -- the metrics SDK ------------------------------------------------------------------------------
def test_counter_and_histogram_report_deltas_in_the_wire_format() -> None:
    m = BridgeMetrics()
    assert m.take() is None and not m.pending
    tokens = m.counter("tokens_generated", "Tokens generated", labels=("model",))
    batch = m.histogram("batch_size", "Requests per model invocation", buckets=(1, 2, 4), labels=())
    assert m.take() is None  # declaring is not a change
    tokens.inc(5, model="m")
    tokens.inc(model="m")
    tokens.inc(2.5, model=7)  # label values are strings
    batch.observe(2)
    batch.observe(0.5)
    batch.observe(4)
    batch.observe(100)
    assert m.pending
    report = m.take()
    assert report == {"v": 1, "series": [
        {"name": "tokens_generated", "kind": "counter", "help": "Tokens generated", "labels": {"model": "m"},
         "value": 6.0},
        {"name": "tokens_generated", "kind": "counter", "help": "Tokens generated", "labels": {"model": "7"},
         "value": 2.5},
        {"name": "batch_size", "kind": "histogram", "help": "Requests per model invocation", "buckets": [1, 2, 4],
         "labels": {}, "counts": [1, 1, 1, 1], "sum": 106.5, "count": 4}],
        "dropped": 0}
    assert json.loads(json.dumps(report)) == report
    assert m.take() is None and not m.pending  # deltas were reset
    batch.observe(1)  # a bound belongs to its own bucket (le)
    assert m.take()["series"][0]["counts"] == [1, 0, 0, 0]  # type: ignore[index]


def test_redeclaring_returns_the_same_metric_or_refuses_a_different_one() -> None:
    m = BridgeMetrics()
    c = m.counter("calls", "Calls", labels=("kind",))
    assert m.counter("calls", "other help", labels=["kind"]) is c
    h = m.histogram("sizes", buckets=(1, 2))
    assert m.histogram("sizes", buckets=[1.0, 2.0]) is h
    with pytest.raises(ValueError, match="declared before as a counter"):
        m.histogram("calls", labels=("kind",))
    with pytest.raises(ValueError, match="declared before"):
        m.counter("calls", labels=("other",))
    with pytest.raises(ValueError, match="buckets"):
        m.histogram("sizes", buckets=(1, 2, 3))
    assert m.names() == ["calls", "sizes"]


@pytest.mark.parametrize("name, needle", [
    ("Tokens", "must match"), ("1abc", "must match"), ("a-b", "must match"), ("", "must match"),
    ("x" * 64, "must match"), ("calls_total", "must not end in"), ("lat_bucket", "must not end in"),
    ("lat_sum", "must not end in"), ("lat_count", "must not end in"),
])
def test_bad_metric_names_are_refused(name: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        BridgeMetrics().counter(name)


@pytest.mark.parametrize("labels, needle", [
    (("a", "b", "c", "d", "e"), "at most 4"), (("tenant",), "reserved"), (("bridge",), "reserved"),
    (("le",), "reserved"), (("worker",), "reserved"), (("Model",), "must match"), (("a" * 32,), "must match"),
    (("a", "a"), "twice"), ("model", "not a string"),
])
def test_bad_label_names_are_refused(labels: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        BridgeMetrics().counter("c", labels=labels)


@pytest.mark.parametrize("buckets, needle", [
    ((), "1 to 32"), (tuple(range(33)), "1 to 32"), ((1, 1), "strictly increasing"), ((2, 1), "strictly"),
    ((1, math.inf), "finite"), ((1, math.nan), "finite"), ((1, "2"), "number"), ((True,), "number"),
])
def test_bad_buckets_are_refused(buckets: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        BridgeMetrics().histogram("h", buckets=buckets)


def test_at_most_32_metrics() -> None:
    m = BridgeMetrics()
    for i in range(MAX_METRICS):
        m.counter(f"m{i}")
    assert m.counter("m0") is m.counter("m0")  # re-declaring is not one more
    with pytest.raises(ValueError, match="at most 32 metrics"):
        m.counter("one_more")


def test_bad_increments_and_observations_raise_and_count_nothing() -> None:
    m = BridgeMetrics()
    c = m.counter("c", labels=("kind",))
    h = m.histogram("h", buckets=(1,))
    for bad in (-1, -0.5, math.inf, math.nan, "3", None, True):
        with pytest.raises(ValueError):
            c.inc(bad, kind="a")  # type: ignore[arg-type]
    for bad_labels in ({}, {"kind": "a", "other": "b"}, {"other": "b"}):
        with pytest.raises(ValueError, match="exactly the labels"):
            c.inc(1, **bad_labels)
    for bad in (math.inf, -math.inf, math.nan, "1"):
        with pytest.raises(ValueError):
            h.observe(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly the labels"):
        h.observe(1, kind="a")
    assert m.take() is None
    h.observe(-5)  # negative observations are fine
    c.inc(0, kind="a")
    assert len(m.take()["series"]) == 2  # type: ignore[index]


def test_label_values_are_cut_and_label_sets_over_the_limit_are_dropped_and_counted() -> None:
    m = BridgeMetrics()
    c = m.counter("c", labels=("k",))
    c.inc(1, k="v" * 100)
    assert m.take()["series"][0]["labels"] == {"k": "v" * 64}  # type: ignore[index]
    for i in range(MAX_SERIES + 10):
        c.inc(1, k=str(i))  # never raises
    report = m.take()
    assert report is not None
    assert len(report["series"]) == MAX_SERIES - 1 and report["dropped"] == 11  # "v"*64 was one of the 64
    assert m.dropped == 11
    c.inc(1, k="0")  # a known series still counts
    c.inc(1, k="new")  # a new one is still dropped
    report = m.take()
    assert report is not None and [s["labels"] for s in report["series"]] == [{"k": "0"}]
    assert report["dropped"] == 1 and m.dropped == 12


def test_counting_from_many_threads_loses_nothing() -> None:
    m = BridgeMetrics()
    c = m.counter("c", labels=("t",))
    h = m.histogram("h", buckets=(1, 10))
    taken: list[dict[str, Any]] = []

    def work(t: int) -> None:
        for i in range(2000):
            c.inc(1, t=t % 3)
            h.observe(i % 20)
            if i % 500 == 0 and (r := m.take()) is not None:
                taken.append(r)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if (r := m.take()) is not None:
        taken.append(r)
    series = [s for r in taken for s in r["series"]]
    assert sum(s["value"] for s in series if s["kind"] == "counter") == 16000
    assert sum(s["count"] for s in series if s["kind"] == "histogram") == 16000
    per_bucket = [sum(s["counts"][i] for s in series if s["kind"] == "histogram") for i in range(3)]
    assert per_bucket == [8 * 100 * 2, 8 * 100 * 9, 8 * 100 * 9]


# -- the dispatcher: metrics and usage in reply metadata ---------------------------------------------
def test_a_call_that_counts_nothing_carries_no_telemetry(d: Dispatcher) -> None:
    out = run(d, "probe:plain")
    assert out.error is None and out.metadata == {}
    out = run(d, "common:ping")
    assert out.metadata == {}


def test_metrics_and_usage_ride_on_replies_success_or_error(d: Dispatcher) -> None:
    out = run(d, "probe:count", {"routes": ["a", "a", "b"], "in": 3, "out": 4})
    assert out.error is None
    report = json.loads(out.metadata[meta.METRICS])
    assert report["v"] == 1 and report["dropped"] == 0
    assert {s["labels"]["route"]: s["value"] for s in report["series"]} == {"a": 2.0, "b": 1.0}
    assert json.loads(out.metadata[meta.USAGE]) == {"tokens_in": 3, "tokens_out": 4}
    out = run(d, "probe:count", {"routes": ["c"], "out": 1, "fail": True})
    assert out.error is not None and out.error.code == "FRAMEWORK_ERROR"
    assert json.loads(out.metadata[meta.METRICS])["series"][0]["labels"] == {"route": "c"}
    assert json.loads(out.metadata[meta.USAGE]) == {"tokens_in": 0, "tokens_out": 1}
    out = run(d, "probe:count", {"routes": []})
    assert out.metadata == {}  # nothing counted, no tokens: nothing sent


def test_metrics_counted_elsewhere_go_out_with_the_next_reply_even_housekeeping(d: Dispatcher) -> None:
    d.bridge.hits.inc(route="background")  # type: ignore[attr-defined]
    out = run(d, "common:ping")
    assert json.loads(out.metadata[meta.METRICS])["series"][0]["labels"] == {"route": "background"}
    d.bridge.hits.inc(route="background")  # type: ignore[attr-defined]
    out = run(d, "nope:nothing")  # even an error before any handler ran
    assert out.error is not None and out.error.code == "UNKNOWN_COMMAND" and meta.METRICS in out.metadata


def test_streaming_calls_carry_telemetry_in_the_final_reply(d: Dispatcher) -> None:
    chunks, final = stream(d, "probe:stream", traceparent=TP)
    assert chunks == [{"i": 0}, {"i": 1}, {"i": 2}] and final.error is None
    assert json.loads(final.metadata[meta.METRICS])["series"][0]["value"] == 3.0
    assert json.loads(final.metadata[meta.USAGE]) == {"tokens_in": 0, "tokens_out": 3}
    spans = spans_of(final.metadata)
    assert [s["name"] for s in spans] == ["(handler)", "chunk0", "chunk1", "chunk2"]


def test_a_metrics_report_over_64_kib_is_dropped_logged_and_counted(d: Dispatcher,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    m = d.bridge.metrics
    for i in range(MAX_METRICS - 1):
        h = m.histogram(f"h{i}", buckets=tuple(range(1, 33)), labels=("k",))
        for k in range(20):
            h.observe(1, k="k" * 60 + str(k))
    with caplog.at_level(logging.WARNING, logger="mlbridge.runtime"):
        out = run(d, "probe:plain")
    assert meta.METRICS not in out.metadata
    assert len([r for r in caplog.records if "metrics report" in r.getMessage()]) == 1
    assert m.dropped == (MAX_METRICS - 1) * 20 and d.metrics_reports_dropped == 1
    assert d.stats()["metrics_dropped"] == m.dropped
    out = run(d, "probe:plain")  # the next report says how many series were lost
    report = json.loads(out.metadata[meta.METRICS])
    assert report["series"] == [] and report["dropped"] == (MAX_METRICS - 1) * 20
    assert len(out.metadata[meta.METRICS]) < MAX_METRICS_BYTES


def test_record_tokens_accumulates_and_refuses_bad_counts() -> None:
    ctx = CallContext(call_id="c", command="x:y")
    ctx.record_tokens(tokens_in=2)
    ctx.record_tokens(3, 4)
    assert (ctx.tokens_in, ctx.tokens_out) == (5, 4)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="int >= 0"):
            ctx.record_tokens(tokens_in=bad)  # type: ignore[arg-type]


def test_mock_observe_feeds_histogram_counter_and_usage() -> None:
    d = Dispatcher(MockBridge(), max_message_bytes=1 << 20)
    out = run(d, "mock:observe", {"value": 7, "count": 3, "tokens_in": 10, "tokens_out": 2})
    assert out.error is None and json.loads(out.result) == {"observed": 3, "kind": "a"}
    series = {s["name"]: s for s in json.loads(out.metadata[meta.METRICS])["series"]}
    assert series["mock_values"]["buckets"] == [1, 2, 5, 10, 20, 50, 100]
    assert series["mock_values"]["counts"] == [0, 0, 0, 3, 0, 0, 0, 0] and series["mock_values"]["sum"] == 21
    assert series["mock_observed"]["labels"] == {"kind": "a"} and series["mock_observed"]["value"] == 3
    assert json.loads(out.metadata[meta.USAGE]) == {"tokens_in": 10, "tokens_out": 2}
    out = run(d, "mock:observe", {"value": 1000.5, "kind": "b"})
    series = {s["name"]: s for s in json.loads(out.metadata[meta.METRICS])["series"]}
    assert series["mock_values"]["counts"][-1] == 1 and series["mock_observed"]["labels"] == {"kind": "b"}
    assert meta.USAGE not in out.metadata
    for bad in ({"value": 1, "count": -1}, {"value": 1, "kind": "x" * 17}, {"value": 1, "tokens_in": -2},
                {"value": "1"}, {}):
        out = run(d, "mock:observe", bad)
        assert out.error is not None and out.error.code == "INVALID_ARGUMENT", bad
    assert "mock:observe" in {c["name"] for c in d.describe()["commands"]}


# -- spans --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("header, expected", [
    (TP, (TRACE, PARENT)),
    (f"00-{TRACE}-{PARENT}-03", (TRACE, PARENT)),
    (f"01-{TRACE}-{PARENT}-01-future", (TRACE, PARENT)),
    (f"00-{TRACE}-{PARENT}-00", None),  # not sampled
    (f"00-{'0' * 32}-{PARENT}-01", None),
    (f"00-{TRACE}-{'0' * 16}-01", None),
    (f"ff-{TRACE}-{PARENT}-01", None),
    (f"00-{TRACE.upper()}-{PARENT}-01", None),
    (f"00-{TRACE}-{PARENT}-01-x", None),  # version 00 has exactly four fields
    (f"00-{TRACE[:-1]}-{PARENT}-01", None),
    (f"00_{TRACE}_{PARENT}_01", None),
    (f"00-{TRACE}-{PARENT}-0g", None),
    ("", None), ("garbage", None),
])
def test_traceparent_parsing(header: str, expected: tuple[str, str] | None) -> None:
    assert parse_traceparent(header) == expected
    assert (CallTrace.from_traceparent(header) is None) == (expected is None)


def test_untraced_calls_have_a_free_no_op_span(d: Dispatcher) -> None:
    ctx = d.make_context(call_id="c", command="probe:nested")
    assert ctx.trace is None and ctx.span("x", a=1) is NO_SPAN
    with ctx.span("x") as s:
        s.set_attribute("k", "v")
    with pytest.raises(KeyError), ctx.span("x"):
        raise KeyError("propagates")
    out = run(d, "probe:nested", traceparent=f"00-{TRACE}-{PARENT}-00")  # unsampled: not traced
    assert out.error is None and json.loads(out.result) == {"traced": False} and out.metadata == {}


def test_handler_span_and_nested_bridge_spans(d: Dispatcher) -> None:
    out = run(d, "probe:nested", traceparent=TP)
    assert out.error is None and json.loads(out.result) == {"traced": True}
    spans = spans_of(out.metadata)
    by_name = {s["name"]: s for s in spans}
    handler = spans[0]
    assert handler["error"] == "" and handler["dropped"] == 0
    assert set(by_name) == {"(handler)", "outer", "inner", "in-thread", "failing"}
    for s in spans:
        assert len(s["span_id"]) == 16 and int(s["span_id"], 16) != 0
    for s in spans[1:]:
        assert set(s) == {"name", "span_id", "parent_span_id", "start_ns", "end_ns", "attributes",
                          "error"}
        assert handler["start_ns"] <= s["start_ns"] <= s["end_ns"] <= handler["end_ns"]
    assert len({s["span_id"] for s in spans}) == len(spans)
    assert by_name["outer"]["parent_span_id"] == handler["span_id"]
    assert by_name["inner"]["parent_span_id"] == by_name["outer"]["span_id"]
    assert by_name["in-thread"]["parent_span_id"] == handler["span_id"]
    assert by_name["failing"]["error"] == "KeyError"
    assert by_name["failing"]["attributes"] == {"error.type": "KeyError"}
    attrs = by_name["outer"]["attributes"]
    assert attrs == {"size": 3, "ratio": 0.5, "ok": True, "obj": "[1, 2]", "big": "x" * 256, "later": "yes"}


def test_async_handler_spans_nest_per_task(d: Dispatcher) -> None:
    out = run(d, "probe:async_spans", traceparent=TP)
    assert out.error is None
    spans = {s["name"]: s for s in spans_of(out.metadata)}
    assert spans["root"]["parent_span_id"] == spans["(handler)"]["span_id"]
    for b in ("a", "b"):
        assert spans[b]["parent_span_id"] == spans["root"]["span_id"]
        assert spans[f"{b}.child"]["parent_span_id"] == spans[b]["span_id"]


def test_failed_call_span_carries_the_error_code() -> None:
    d = Dispatcher(MockBridge(), max_message_bytes=1 << 20)
    out = run(d, "mock:span", {"names": ["a", "b"], "fail": True, "attributes": {"k": 1}}, traceparent=TP)
    assert out.error is not None and out.error.code == "FRAMEWORK_ERROR"
    spans = spans_of(out.metadata)
    assert spans[0]["error"] == "FRAMEWORK_ERROR"
    by_name = {s["name"]: s for s in spans}
    assert by_name["b"]["error"] == "MockFrameworkError" and by_name["b"]["attributes"]["k"] == 1
    assert by_name["b"]["parent_span_id"] == by_name["a"]["span_id"]
    assert run(d, "common:create_resource", {"start": 1}, resource_id="c1", resource_type="counter").error is None
    out = run(d, "common:execute_resource", {}, resource_id="c1", traceparent=TP)
    handler = spans_of(out.metadata)[0]
    assert handler["error"] == "" and handler["start_ns"] <= handler["end_ns"]


def test_at_most_128_spans_per_call(d: Dispatcher) -> None:
    out = run(d, "probe:many_spans", {"n": 300}, traceparent=TP)
    spans = spans_of(out.metadata)
    assert len(spans) == MAX_SPANS
    assert spans[0]["dropped"] == 300 - (MAX_SPANS - 1)
    out = run(d, "probe:many_spans", {"n": 5}, traceparent=TP)
    assert spans_of(out.metadata)[0]["dropped"] == 0


def test_spans_after_the_call_ended_are_ignored() -> None:
    trace = CallTrace(TRACE, PARENT)
    with trace.span("a", {}):
        pass
    text = trace.finish("")
    with trace.span("late", {}):
        pass
    decoded = wire_spans.decode(text)
    assert decoded is not None and [s["name"] for s in decoded[1]] == ["a"] and len(trace.spans) == 1


def test_the_servicer_parses_traceparent_for_unary_and_streaming_calls() -> None:
    d = Dispatcher(MockBridge(), max_message_bytes=1 << 20)
    servicer = RuntimeServicer(d)
    req = pb.CallRequest(call_id="c1", command="mock:span", args_json='{"names": ["x"]}', traceparent=TP)
    assert _ctx_fields(req)["traceparent"] == TP

    async def go() -> tuple[pb.CallReply, list[pb.StreamEvent]]:
        reply = await servicer.Call(req, None)  # type: ignore[arg-type]
        sreq = pb.CallRequest(call_id="c2", command="mock:stream", args_json='{"n": 2}', traceparent=TP)
        events = [ev async for ev in servicer.CallStream(sreq, None)]  # type: ignore[arg-type]
        return reply, events

    reply, events = asyncio.run(go())
    assert reply.ok
    spans = spans_of(reply.metadata)
    assert [s["name"] for s in spans] == ["(handler)", "x"] and spans[1]["parent_span_id"] == spans[0]["span_id"]
    final = events[-1].final
    assert final.ok and spans_of(final.metadata)[0]["end_ns"] > 0
    assert all(not ev.HasField("final") for ev in events[:-1])
    untraced = pb.CallRequest(call_id="c3", command="mock:echo", args_json="{}")
    assert asyncio.run(servicer.Call(untraced, None)).metadata == {}  # type: ignore[arg-type]


# -- the bridges' own metrics ---------------------------------------------------------------------------
def test_langchain_counts_llm_calls_and_records_usage() -> None:
    pytest.importorskip("langchain_core")
    from runtimes.langchain import LangChainBridge
    from tests.harness import InProcessRuntime

    rt = InProcessRuntime(LangChainBridge())
    rt.ok("common:ping")
    assert meta.METRICS not in rt.metadata  # the warm-up chain counted nothing
    chain = {"prompt": {"template": "say {x}"}, "parser": "str",
             "model": {"provider": "fake", "responses": ["one two three"], "usage": True, "cycle": True}}
    assert rt.ok("langchain:invoke", {"runnable": chain, "input": {"x": "hi there"}}) == {"output": "one two three"}
    series = json.loads(rt.metadata[meta.METRICS])["series"]
    assert series == [{"name": "llm_calls", "kind": "counter", "help": "Chat model and LLM calls",
                       "labels": {"provider": "fake"}, "value": 1.0}]
    assert json.loads(rt.metadata[meta.USAGE]) == {"tokens_in": 3, "tokens_out": 3}
    out = rt.ok("langchain:batch", {"runnable": chain, "inputs": [{"x": "a"}, {"x": "b"}]})
    assert len(out["outputs"]) == 2
    assert json.loads(rt.metadata[meta.METRICS])["series"][0]["value"] == 2.0
    assert json.loads(rt.metadata[meta.USAGE]) == {"tokens_in": 4, "tokens_out": 6}
    events: list[Any] = []

    async def go() -> None:
        fields = {"call_id": "s", "command": "langchain:stream"}
        async for ev in rt.d.stream(fields, json.dumps({"runnable": chain, "input": {"x": "z"}})):
            events.append(ev)

    asyncio.run(go())
    final = events[-1][1]
    assert final.error is None and json.loads(final.metadata[meta.USAGE]) == {"tokens_in": 2, "tokens_out": 3}
    plain = {**chain, "model": {"provider": "fake", "responses": ["x"]}}
    rt.ok("langchain:invoke", {"runnable": plain, "input": {"x": "y"}})
    assert meta.USAGE not in rt.metadata and meta.METRICS in rt.metadata  # no usage reported: none recorded


def test_dspy_counts_lm_calls() -> None:
    pytest.importorskip("dspy")
    from runtimes.dspy import DSPyBridge
    from tests.harness import InProcessRuntime

    rt = InProcessRuntime(DSPyBridge())
    rt.ok("dspy:configure_lm", {"provider": "dummy", "answers": [{"answer": "a"}, {"answer": "b"}]})
    rt.create("program", "p", {"signature": "question -> answer"})
    assert rt.execute("p", {"question": "q1"}) == {"answer": "a"}
    series = json.loads(rt.metadata[meta.METRICS])["series"]
    assert series == [{"name": "lm_calls", "kind": "counter", "help": "LM calls made by DSPy programs",
                       "labels": {"model": "dummy"}, "value": 1.0}]
    rt.create("lm", "lm2", {"provider": "dummy", "answers": [{"answer": "c"}]})
    rt.create("program", "p2", {"signature": "question -> answer", "lm": "lm2"})
    assert rt.execute("p2", {"question": "q"}) == {"answer": "c"}
    assert json.loads(rt.metadata[meta.METRICS])["series"][0]["value"] == 1.0


def test_transformers_metrics_and_usage() -> None:
    pytest.importorskip("transformers")
    from runtimes.transformers import TransformersBridge
    from tests.harness import InProcessRuntime
    from tests.tiny_models import grant_for, tiny_model

    grants = [grant_for(tiny_model("gpt2"), "gpt"), grant_for(tiny_model("bert-classifier"), "clf")]
    rt = InProcessRuntime(TransformersBridge(), models=grants)
    rt.create("model", "g", {"model": "gpt"})
    series = {s["name"]: s for s in json.loads(rt.metadata[meta.METRICS])["series"]}
    assert series["model_load_seconds"]["count"] == 1 and series["model_load_seconds"]["sum"] > 0
    assert series["model_load_seconds"]["buckets"][0] == 0.05
    greedy = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
    out = rt.execute("g", {"inputs": "the cat sat", "parameters": greedy})
    assert len(out["output"]["token_ids"]) == 5 and "prompt_tokens" not in out["output"]
    usage = json.loads(rt.metadata[meta.USAGE])
    assert usage["tokens_out"] == 5 and usage["tokens_in"] > 0
    series = {s["name"]: s for s in json.loads(rt.metadata[meta.METRICS])["series"]}
    assert series["tokens_generated"]["labels"] == {"model": "gpt"} and series["tokens_generated"]["value"] == 5
    rt.create("pipeline", "tg", {"task": "text-generation", "model": "gpt"})
    rt.execute("tg", {"inputs": ["the cat", "a dog"], "parameters": greedy})
    usage = json.loads(rt.metadata[meta.USAGE])
    assert usage["tokens_out"] == 10 and usage["tokens_in"] > 0
    rt.create("pipeline", "clf", {"task": "text-classification", "model": "clf",
                                  "batching": {"max_batch_size": 8, "max_batch_time_ms": 50}})

    async def burst() -> list[Outcome]:
        async def one(i: int) -> Outcome:
            ctx = rt.d.make_context(call_id=f"b{i}", command="common:execute_resource", resource_id="clf")
            return await rt.d.run(ctx, json.dumps({"inputs": f"text {i}"}))
        return list(await asyncio.gather(*[one(i) for i in range(6)]))

    outs = asyncio.run(burst())
    assert all(o.error is None for o in outs)
    reports = [json.loads(o.metadata[meta.METRICS]) for o in outs if meta.METRICS in o.metadata]
    batches = [s for r in reports for s in r["series"] if s["name"] == "batch_size"]
    assert sum(s["sum"] for s in batches) == 6  # every request was in one invocation
    assert batches[0]["buckets"] == [1, 2, 4, 8, 16, 32, 64] and meta.USAGE not in outs[0].metadata
