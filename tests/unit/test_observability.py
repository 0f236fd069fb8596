"""Metrics, per-bridge health, usage accounting and traces of a real orchestrator (process backend).

Two tenants with a policy; two bridges, one of whose health hook fails; the
Prometheus endpoint scraped over HTTP; spans captured by OpenTelemetry's
in-memory exporter.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import time
import urllib.request
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import MLBridge
from orchestrator.app import App
from orchestrator.cli import main as cli_main
from orchestrator.observe import Tracing
from orchestrator.observe.bridge_series import MAX_SETS_PER_METRIC, BridgeSeries
from orchestrator.observe.metrics import MAX_COMMANDS, OrchestratorMetrics
from orchestrator.observe.tracing import parse_traceparent
from orchestrator.proto import mlbridge_pb2 as pb
from orchestrator.proto import mlbridge_pb2_grpc as pb_grpc
from runtimes.wire.errors import FrameworkError, PermissionDenied, Unauthenticated
from tests.harness import ServerThread, digest, make_config

POLICY = f"""
version: 1
defaults:
  bridges: [mock, mock2, custom]
  rules:
    - {{name: read-only, effect: allow, actions: [list_bridges, describe, list_resources, stats, cancel]}}
    - {{name: calls, effect: allow, actions: [call, create_resource, execute_resource, delete_resource]}}
    - {{name: no-crash, effect: deny, commands: ["mock:crash"]}}
  quotas: {{max_concurrent_calls: 8, max_calls_per_minute: 10000, max_resources: 3, max_workers: 2}}
tenants:
  alice:
    tokens: ["{digest('alice-token')}"]
  bob:
    tokens: ["{digest('bob-token')}"]
    rules:
      - {{name: read-only, effect: allow, actions: [list_bridges, describe, list_resources, stats, cancel]}}
      - {{name: calls, effect: allow, actions: [call, create_resource, execute_resource, delete_resource]}}
      - {{name: bob-may-profile, effect: allow, actions: [call], commands: ["common:profile"]}}
"""

BRIDGES = {
    "mock": {"runtime": "mock", "pool_size": 1, "held": 0, "cancel_grace_s": 1.0},
    "mock2": {"runtime": "mock", "pool_size": 1, "held": 0,
              "env": {"MLBRIDGE_MOCK_UNHEALTHY": "the model weights are missing"}},
    "custom": {"runtime": "custom", "pool_size": 1, "held": 0},
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("observe")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    policy.chmod(0o600)
    cfg = make_config(tmp, bridges=BRIDGES, policy=str(policy), metrics_listen="127.0.0.1:0")
    spans = InMemorySpanExporter()
    app = App(cfg, tracing=Tracing([spans]))
    with ServerThread(cfg, app) as srv:
        yield srv, spans


@pytest.fixture()
def alice(env):
    with MLBridge.connect(env[0].target, token="alice-token") as c:
        yield c


@pytest.fixture()
def bob(env):
    with MLBridge.connect(env[0].target, token="bob-token") as c:
        yield c


def scrape(srv: ServerThread) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of the /metrics page, by sample name."""
    port = srv.app.observability.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def wait_for(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def test_calls_are_counted_by_bridge_tenant_command_and_code(env, alice, bob) -> None:
    srv, _ = env
    for i in range(3):
        alice.call("mock", "mock:echo", {"i": i})
    for i in range(2):
        bob.call("mock", "mock:echo", {"i": i})
    alice.call("mock2", "mock:echo", {})
    with pytest.raises(PermissionDenied):
        alice.call("mock", "mock:crash", {})
    with pytest.raises(Exception, match="UNKNOWN_COMMAND"):
        alice.call("mock", "mock:no_such_command_xyz", {})
    with MLBridge.connect(srv.target, token="wrong-token") as stranger, pytest.raises(Unauthenticated):
        stranger.call("mock", "mock:echo", {})
    m = scrape(srv)
    total = "mlbridge_calls_total"
    assert value(m, total, bridge="mock", tenant="alice", command="mock:echo", code="OK") == 3
    assert value(m, total, bridge="mock", tenant="bob", command="mock:echo", code="OK") == 2
    assert value(m, total, bridge="mock2", tenant="alice", command="mock:echo", code="OK") == 1
    assert value(m, total, bridge="mock", tenant="alice", code="PERMISSION_DENIED") == 1
    # An unknown command's name is never a label.
    assert value(m, total, bridge="mock", tenant="alice", command="other", code="UNKNOWN_COMMAND") == 1
    assert not any("no_such_command" in json.dumps(lab) for lab, _ in m[total])
    assert value(m, "mlbridge_policy_denials_total", tenant="alice", rule="no-crash") == 1
    assert value(m, "mlbridge_auth_failures_total") >= 1
    assert value(m, "mlbridge_call_duration_seconds_count", bridge="mock", command="mock:echo") == 5
    assert value(m, "mlbridge_call_runtime_seconds_count", bridge="mock", command="mock:echo") == 5
    assert value(m, "mlbridge_call_acquire_seconds_count", bridge="mock") >= 5
    assert value(m, "mlbridge_claim_duration_seconds_count", bridge="mock") >= 2  # alice's and bob's claims
    assert value(m, "grpc_server_handled_total", grpc_service="mlbridge.v1.MLBridge", grpc_method="Call",
                 grpc_type="unary", grpc_code="OK") >= 6
    # The server counts a status just after sending it: the client may be quicker.
    assert wait_for(lambda: value(scrape(srv), "grpc_server_handled_total", grpc_method="Call",
                                  grpc_code="UNAUTHENTICATED") >= 1, 5)
    assert value(m, "grpc_server_handling_seconds_count", grpc_method="Call") >= 8
    assert value(m, "mlbridge_build_info", backend="process") == 1


def test_live_workers_have_resource_series(env, alice) -> None:
    srv, _ = env
    alice.call("mock", "mock:echo", {})
    before = {w.id: w for p in srv.orch.pools.values() for w in p.workers.values() if w.state == "ready"}
    m = scrape(srv)
    after = {w.id for p in srv.orch.pools.values() for w in p.workers.values() if w.state == "ready"}
    live = {i: w for i, w in before.items() if i in after}  # ready throughout the scrape
    memory = {lab["worker"]: v for lab, v in m["mlbridge_worker_memory_bytes"]}
    assert set(live) <= set(memory)
    assert all(v > 1_000_000 for v in memory.values())
    assert all(lab["worker"] in {w.id for p in srv.orch.pools.values() for w in p.workers.values()}
               for lab, _ in m["mlbridge_worker_memory_bytes"])
    cpu = {lab["worker"]: v for lab, v in m["mlbridge_worker_cpu_seconds_total"]}
    assert set(live) <= set(cpu) and all(v > 0 for v in cpu.values())
    assert all(v >= 1 for _, v in m["mlbridge_worker_pids"])
    claimed = [w for w in live.values() if w.tenant == "alice" and w.bridge == "mock"]
    assert claimed and memory[claimed[0].id] > 0
    assert {lab["tenant"] for lab, _ in m["mlbridge_worker_memory_bytes"] if lab["worker"] == claimed[0].id} == {"alice"}
    assert value(m, "mlbridge_workers", bridge="mock", state="claimed") >= 1
    assert value(m, "mlbridge_worker_starts_total", bridge="mock", reason="initial", origin="cold") == 1


def test_killed_workers_are_counted_by_cause_and_replaced(env, alice) -> None:
    srv, _ = env
    alice.call("mock", "mock:echo", {})
    pool = srv.orch.pools["mock"]
    before = value(scrape(srv), "mlbridge_worker_deaths_total", bridge="mock", cause="killed")
    os.kill(pool.claimed("alice")[0].handle.ref.pid, signal.SIGKILL)
    assert wait_for(lambda: value(scrape(srv), "mlbridge_worker_deaths_total", bridge="mock", cause="killed")
                    == before + 1)
    assert alice.call("mock", "mock:echo", {"again": 1}) == {"again": 1}  # on the spare it claims
    # A dead spare's successor is started as its replacement.
    spare = wait_for(lambda: next(iter(pool._spares), None))
    os.kill(spare.handle.ref.pid, signal.SIGKILL)
    assert wait_for(lambda: value(scrape(srv), "mlbridge_worker_starts_total", bridge="mock", reason="replace") >= 1)
    assert value(scrape(srv), "mlbridge_worker_deaths_total", bridge="mock", cause="killed") == before + 2


def test_bridge_declared_series_are_forwarded_with_bridge_and_tenant(env, alice, bob) -> None:
    srv, _ = env
    alice.call("mock", "mock:observe", {"value": 3.0, "count": 2, "kind": "a", "tokens_in": 5, "tokens_out": 7})
    bob.call("mock", "mock:observe", {"value": 100.0, "kind": "b"})
    m = scrape(srv)
    assert value(m, "mlbridge_bridge_mock_observed_total", bridge="mock", tenant="alice", kind="a") == 2
    assert value(m, "mlbridge_bridge_mock_observed_total", bridge="mock", tenant="bob", kind="b") == 1
    assert value(m, "mlbridge_bridge_mock_values_count", bridge="mock", tenant="alice") == 2
    assert value(m, "mlbridge_bridge_mock_values_sum", bridge="mock", tenant="alice") == 6.0
    inf = [v for lab, v in m["mlbridge_bridge_mock_values_bucket"] if lab["tenant"] == "bob" and lab["le"] == "+Inf"]
    assert inf == [1]
    rows = {(r["tenant"], r["bridge"]): r for r in alice.stats(usage_tenant="alice")["usage"]["rows"]}
    assert rows[("alice", "mock")]["tokens_in"] >= 5 and rows[("alice", "mock")]["tokens_out"] >= 7


def _health(srv: ServerThread, service: str) -> int:
    with grpc.insecure_channel(srv.target) as ch:
        stub: Any = health_pb2_grpc.HealthStub(ch)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def test_health_answers_per_bridge_from_its_hook(env) -> None:
    srv, _ = env
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert wait_for(lambda: _health(srv, "mlbridge.bridge.mock2") == not_serving)
    assert _health(srv, "mlbridge.bridge.mock") == serving
    assert _health(srv, "mlbridge.bridge.custom") == serving
    assert _health(srv, "") == serving
    m = scrape(srv)
    assert value(m, "mlbridge_bridge_up", bridge="mock2") == 0
    assert value(m, "mlbridge_bridge_up", bridge="mock") == 1
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_main(["--address", srv.target, "--token", "alice-token", "status"]) == 0
    lines = {line.split()[0]: line for line in out.getvalue().splitlines() if line.startswith(("mock", "custom"))}
    assert "NOT_SERVING" in lines["mock2"] and "the model weights are missing" in lines["mock2"]
    assert " SERVING" in lines["mock"] and "NOT_SERVING" not in lines["mock"]


def _spans_of(env: Any, trace_id: int) -> list[Any]:
    srv, spans = env
    tracing = srv.app.observability.observer.tracing
    assert tracing is not None
    tracing.flush()
    return [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]


def test_one_trace_per_call_on_both_sides_of_the_socket(env) -> None:
    srv, spans = env
    client_trace, client_span = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
    md = (("authorization", "Bearer alice-token"),
          ("traceparent", f"00-{client_trace:032x}-{client_span:016x}-01"))
    code = "def main(inputs):\n    return sum(range(1000))"
    with grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.MLBridgeStub(ch)
        reply = stub.Call(pb.CallRequest(bridge="custom", command="custom:run", args_json=json.dumps({"code": code})),
                          metadata=md, timeout=30)
    assert json.loads(reply.result_json)["result"] == 499500
    assert not {"mlbridge-spans", "mlbridge-metrics", "mlbridge-usage"} & set(reply.metadata)  # the orchestrator's
    got = wait_for(lambda: _spans_of(env, client_trace), 5)
    by_name = {s.name: s for s in got}
    assert {"mlbridge.v1.MLBridge/Call", "policy", "claim", "runtime call", "custom:run"} <= set(by_name)
    root, runtime_call, handler = by_name["mlbridge.v1.MLBridge/Call"], by_name["runtime call"], by_name["custom:run"]
    assert root.parent is not None and root.parent.span_id == client_span  # joined the client's trace
    assert by_name["policy"].parent.span_id == root.context.span_id
    assert by_name["claim"].parent.span_id == root.context.span_id
    assert by_name["policy"].end_time <= by_name["claim"].start_time <= runtime_call.start_time
    assert runtime_call.parent.span_id == root.context.span_id
    # The handler span was recorded inside the worker, under the span the orchestrator sent.
    assert handler.attributes["mlbridge.side"] == "runtime"
    assert handler.parent.span_id == runtime_call.context.span_id
    assert handler.start_time >= runtime_call.start_time and handler.end_time <= runtime_call.end_time
    assert all(s.context.trace_id == client_trace for s in got)
    assert root.attributes["mlbridge.tenant"] == "alice"


def test_an_unsampled_client_trace_records_nothing(env) -> None:
    srv, spans = env
    trace_id = 0x1234567890ABCDEF1234567890ABCDEF
    md = (("authorization", "Bearer alice-token"), ("traceparent", f"00-{trace_id:032x}-{1:016x}-00"))
    with grpc.insecure_channel(srv.target) as ch:
        pb_grpc.MLBridgeStub(ch).Call(pb.CallRequest(bridge="mock", command="mock:echo", args_json="{}"),
                                      metadata=md, timeout=30)
    assert _spans_of(env, trace_id) == []
    assert parse_traceparent("00-" + "0" * 32 + "-" + "1" * 16 + "-01") is None
    assert parse_traceparent("garbage") is None


def test_a_refused_call_is_traced_with_its_error(env) -> None:
    srv, spans = env
    trace_id = 0xFEDCBA9876543210FEDCBA9876543210
    md = (("authorization", "Bearer alice-token"), ("traceparent", f"00-{trace_id:032x}-{2:016x}-01"))
    with grpc.insecure_channel(srv.target) as ch, pytest.raises(grpc.RpcError):
        pb_grpc.MLBridgeStub(ch).Call(pb.CallRequest(bridge="mock", command="mock:crash", args_json="{}"),
                                      metadata=md, timeout=30)
    root = next(s for s in _spans_of(env, trace_id) if s.name.endswith("/Call"))
    assert root.attributes["error.type"] == "PERMISSION_DENIED"
    assert not any(s.name == "runtime call" for s in _spans_of(env, trace_id))


def test_profiling_needs_a_rule_that_names_it(env, alice, bob) -> None:
    with pytest.raises(PermissionDenied):
        alice.call("mock", "common:profile", {"command": "mock:echo", "args": {"x": 1}})
    out = bob.call("mock", "common:profile", {"command": "mock:spin", "args": {"seconds": 0.2}})
    assert out["mode"] == "call"
    assert "spin" in out["pstats"]
    assert out["collapsed"].strip() and out["samples"] > 0


def test_usage_is_kept_per_tenant_and_survives_a_restart(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, bridges={"mock": {"runtime": "mock", "pool_size": 1, "held": 0}})
    with ServerThread(cfg) as srv:
        assert srv.app.observability.registry is None  # metrics are off unless asked for
        with MLBridge.connect(srv.target) as mb:
            for _ in range(4):
                mb.call("mock", "mock:echo", {})
            with pytest.raises(FrameworkError):
                mb.call("mock", "mock:fail", {})
            mb.call("mock", "mock:spin", {"seconds": 0.3})

        async def sample() -> None:
            srv.app.observability.observer.sample([w for p in srv.orch.pools.values() for w in p.workers.values()])

        srv.run(sample())
    with ServerThread(cfg) as srv, MLBridge.connect(srv.target) as mb:
        rows = mb.stats()["usage"]["rows"]
        (row,) = [r for r in rows if r["bridge"] == "mock"]
        assert row["tenant"] == "default"
        assert row["calls"] == 6 and row["errors"] == 1
        assert row["cpu_seconds"] >= 0.05  # the spin's CPU (wall-clock bound: less on a busy machine)
        assert row["peak_memory_bytes"] > 1_000_000
        assert row["worker_claims"] == 1
        assert mb.stats(usage_since=time.time() + 7200)["usage"]["rows"] == []


def test_command_labels_are_bounded() -> None:
    m = OrchestratorMetrics(CollectorRegistry(), ["b"])
    for i in range(MAX_COMMANDS + 10):
        m.call_done("b", "t", f"b:cmd{i}", "OK", 0.001)
    m.call_done("nosuchbridge", "t", "b:cmd0", "OK", 0.001)
    commands = {c for (b, c) in m._commands.items() for c in c}
    assert len(commands) == MAX_COMMANDS
    samples = [s for f in m.calls.collect() for s in f.samples if s.name.endswith("_total")]
    assert sum(1 for s in samples if s.labels["command"] == "other") == 1
    assert {s.labels["bridge"] for s in samples} == {"b", "other"}


def test_bridge_series_from_a_hostile_worker_are_checked_and_capped() -> None:
    dropped: list[tuple[str, str]] = []
    series = BridgeSeries(on_drop=lambda b, r: dropped.append((b, r)))

    def report(*items: Any) -> str:
        return json.dumps({"v": 1, "series": list(items)})

    ok = {"name": "tokens", "kind": "counter", "help": "h", "labels": {"model": "m"}, "value": 2}
    assert series.add("b", "t", report(ok)) == 1
    bad = [
        {**ok, "name": "Bad-Name"}, {**ok, "name": "x_total"}, {**ok, "value": -1}, {**ok, "labels": {"tenant": "x"}},
        {**ok, "labels": {"model": 5}}, {**ok, "kind": "gauge"}, {**ok, "labels": {"other": "x"}},
        {"name": "h", "kind": "histogram", "buckets": [2, 1], "counts": [0, 0, 0], "sum": 0, "labels": {}},
        {"name": "h2", "kind": "histogram", "buckets": [1], "counts": [1], "sum": 0, "labels": {}},
    ]
    assert series.add("b", "t", report(*bad)) == 0
    assert [r for _, r in dropped] == ["bad_name", "bad_name", "bad_value", "bad_labels", "bad_labels", "malformed",
                                       "conflict", "malformed", "bad_value"]
    series.add("b", "t", "not json")
    series.add("b", "t", json.dumps({"series": "nope"}))
    nan = json.dumps({"series": [{**ok, "value": float("nan")}]})
    series.add("b", "t", nan)
    assert dropped[-3:] == [("b", "malformed"), ("b", "malformed"), ("b", "bad_value")]
    many = [{**ok, "labels": {"model": f"m{i}"}, "value": 1} for i in range(MAX_SETS_PER_METRIC + 5)]
    series.add("b", "t", report(*many))
    families = list(series.collect())
    (tokens,) = [f for f in families if f.name == "mlbridge_bridge_tokens"]
    assert len([s for s in tokens.samples if s.name.endswith("_total")]) == MAX_SETS_PER_METRIC
    assert all(math.isfinite(s.value) for s in tokens.samples)


def test_spans_from_a_hostile_runtime_are_checked() -> None:
    tracing = Tracing([InMemorySpanExporter()])
    try:
        trace = tracing.begin("root")
        assert trace is not None
        parent = trace.open("runtime call")
        assert trace.add_remote("garbage", parent, "x:y", {}) == 0
        assert trace.add_remote(f"{parent.span_id:016x} 1 2 0 -", parent, "x:y", {}) == 0  # reuses the parent's id
        assert trace.add_remote("00000000000000aa 5 3 0 -", parent, "x:y", {}) == 0  # ends before it starts
        children = [
            {"name": "ok", "span_id": "00000000000000bb", "parent_span_id": "00000000000000aa", "start_ns": 2,
             "end_ns": 3, "attributes": {"k": "v" * 1000, "bad": [1]}, "error": ""},
            {"name": "orphan", "span_id": "00000000000000cc", "parent_span_id": "ffffffffffffffff", "start_ns": 2,
             "end_ns": 3, "attributes": {}, "error": ""},
            {"name": "dup", "span_id": "00000000000000bb", "start_ns": 2, "end_ns": 3},
            {"name": "bad-id", "span_id": "zz", "start_ns": 2, "end_ns": 3},
            "not a span",
        ]
        kept = trace.add_remote("00000000000000aa 1 9 3 FRAMEWORK_ERROR\n" + json.dumps(children), parent, "x:y",
                                {"mlbridge.bridge": "b"})
        assert kept == 3  # the handler span, "ok" and "orphan"
        spans = {s.name: s for s in trace.spans}
        handler = spans["x:y"]
        assert handler.parent_id == parent.span_id and handler.error == "FRAMEWORK_ERROR"
        assert handler.attributes["mlbridge.spans_dropped"] == 3 and handler.attributes["mlbridge.side"] == "runtime"
        assert spans["ok"].parent_id == handler.span_id and len(spans["ok"].attributes["k"]) == 256
        assert "bad" not in spans["ok"].attributes
        assert spans["orphan"].parent_id == handler.span_id  # an unknown parent: under the handler span
    finally:
        tracing.shutdown()


def test_the_python_client_carries_its_callers_trace(env) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    srv, _ = env
    tracer = TracerProvider().get_tracer("client")
    with tracer.start_as_current_span("client work") as span, \
            MLBridge.connect(srv.target, token="alice-token") as mb:
        assert mb.call("mock", "mock:echo", {"t": 1}) == {"t": 1}
        ctx = span.get_span_context()
    got = wait_for(lambda: _spans_of(env, ctx.trace_id), 5)
    root = next(s for s in got if s.name.endswith("/Call"))
    assert root.parent is not None and root.parent.span_id == ctx.span_id
