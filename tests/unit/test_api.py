"""Every public API call through the real gRPC server, process backend."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from orchestrator import (
    AsyncMLBridge,
    Cancelled,
    DeadlineExceeded,
    FrameworkError,
    InvalidArgument,
    MLBridge,
    NotFound,
    UnknownCommand,
)
from orchestrator.proto import mlbridge_pb2 as pb
from orchestrator.proto import mlbridge_pb2_grpc as pb_grpc
from runtimes.wire.errors import (
    AlreadyExists,
    BridgeNotFound,
    InvalidResult,
    PayloadTooLarge,
    WorkerDied,
)
from tests.harness import Background, ServerThread, make_config

MAX = 256 * 1024


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    cfg = make_config(tmp_path_factory.mktemp("api"), max_message_bytes=MAX,
                      bridges={"mock": {"runtime": "mock", "pool_size": 2, "cancel_grace_s": 1.0,
                                        "call_timeout_s": 30}})
    with ServerThread(cfg) as s:
        yield s


@pytest.fixture()
def mb(srv: ServerThread):
    with MLBridge.connect(srv.target, max_message_bytes=4 * MAX) as client:
        yield client


def test_list_bridges_and_describe(mb: MLBridge) -> None:
    bridges = mb.list_bridges()
    assert [b["name"] for b in bridges] == ["mock"]
    assert bridges[0]["is_default"] and bridges[0]["workers_ready"] >= 1
    d = mb.describe("mock")
    names = {c["name"] for c in d["commands"]}
    assert {"common:ping", "common:describe", "mock:echo", "mock:stream", "mock:sleep"} <= names
    assert {t["name"] for t in d["resource_types"]} == {"counter", "ticker", "journal"}
    sleep = next(c for c in d["commands"] if c["name"] == "mock:sleep")
    assert sleep["schema"]["required"] == ["seconds"]
    assert next(c for c in d["commands"] if c["name"] == "mock:stream")["streaming"] is True
    assert d["packages"]["grpcio"]


def test_call_echo_and_common_ping(mb: MLBridge) -> None:
    assert mb.call("mock", "mock:echo", {"x": 1, "nested": {"y": [1, 2]}}) == {"x": 1, "nested": {"y": [1, 2]}}
    pong = mb.call("mock", "common:ping")
    assert pong["pong"] is True and pong["bridge"] == "mock"
    # An empty bridge routes by namespace, then to the default bridge.
    assert mb.call("", "mock:echo", {"a": 2}) == {"a": 2}


def test_resource_lifecycle(mb: MLBridge) -> None:
    rid = mb.create_resource("mock", "counter", {"start": 10})
    assert rid.startswith("res_")
    assert mb.execute_resource(rid, {"add": 5}) == {"value": 15}
    assert mb.execute_resource(rid, {"add": 1}) == {"value": 16}  # state kept in its worker
    listed = mb.list_resources("mock", "counter")
    assert rid in [r["resource_id"] for r in listed]
    assert mb.list_resources("mock", "ticker") == [] or rid not in [r["resource_id"] for r in mb.list_resources("mock", "ticker")]
    assert mb.delete_resource(rid) is True
    with pytest.raises(NotFound):
        mb.execute_resource(rid, {})
    with pytest.raises(NotFound):
        mb.delete_resource(rid)


def test_client_chosen_resource_id_and_duplicates(mb: MLBridge) -> None:
    rid = f"my-counter-{uuid.uuid4().hex[:6]}"
    assert mb.create_resource("mock", "counter", {}, resource_id=rid) == rid
    with pytest.raises(AlreadyExists):
        mb.create_resource("mock", "counter", {}, resource_id=rid)
    with pytest.raises(InvalidArgument, match="must match"):
        mb.create_resource("mock", "counter", {}, resource_id="../etc/passwd")
    mb.delete_resource(rid)


def test_stream_resource_with_progress(mb: MLBridge) -> None:
    rid = mb.create_resource("mock", "ticker", {"label": "L"})
    events = list(mb.stream_resource(rid, {"n": 3}))
    kinds = [e.kind for e in events]
    assert kinds == ["progress", "chunk"] * 3 + ["result"]
    assert [(e.step, e.total) for e in events if e.kind == "progress"] == [(1, 3), (2, 3), (3, 3)]
    assert [e.data["tick"] for e in events if e.kind == "chunk"] == [1, 2, 3]
    assert events[-1].data == {"ticks": 3}
    # Unary execution of a streaming resource returns its final value.
    assert mb.execute_resource(rid, {"n": 2}) == {"ticks": 2}


def test_call_stream_command(mb: MLBridge) -> None:
    events = list(mb.call_stream("mock", "mock:stream", {"n": 4}))
    assert [e.data["token"] for e in events if e.kind == "chunk"] == ["t0", "t1", "t2", "t3"]
    assert events[-1].kind == "result" and events[-1].data == {"count": 4}
    assert sum(1 for e in events if e.kind == "progress") == 4


def test_cancel_running_call(mb: MLBridge) -> None:
    call_id = uuid.uuid4().hex
    started = time.monotonic()
    with Background(lambda: mb.call("mock", "mock:sleep", {"seconds": 30}, call_id=call_id)) as call:
        for _ in range(200):
            if mb.cancel(call_id):
                break
            time.sleep(0.02)
        else:
            pytest.fail("the call never showed up as in flight")
        assert isinstance(call.error(), Cancelled)
    assert time.monotonic() - started < 5
    assert mb.cancel(call_id) is False  # finished calls are not found
    assert mb.call("mock", "mock:echo", {"ok": 1}) == {"ok": 1}


def test_cancel_of_a_call_that_ignores_it_replaces_the_worker(mb: MLBridge, srv: ServerThread) -> None:
    call_id = uuid.uuid4().hex
    with Background(lambda: mb.call("mock", "mock:spin", {"seconds": 20}, call_id=call_id)) as call:
        for _ in range(200):
            if mb.cancel(call_id):
                break
            time.sleep(0.02)
        exc = call.error()
    assert isinstance(exc, Cancelled)
    assert exc.details.get("worker_replaced") is True
    assert mb.call("mock", "mock:echo", {"after": True}) == {"after": True}


def test_deadline_exceeded(mb: MLBridge) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        mb.call("mock", "mock:sleep", {"seconds": 20}, timeout=0.5)
    assert time.monotonic() - started < 3


def test_framework_error_translation(mb: MLBridge) -> None:
    with pytest.raises(FrameworkError) as info:
        mb.call("mock", "mock:fail", {"message": "model exploded"})
    assert info.value.code == "FRAMEWORK_ERROR"
    # Errors mlbridge (here, a bridge's translate_error) raises read CODE: message.
    assert str(info.value) == "FRAMEWORK_ERROR: mock framework failed: model exploded"
    assert info.value.details["framework_error"] == "MockFrameworkError"
    with pytest.raises(FrameworkError, match=r"^builtins\.ValueError: unexpected$"):
        mb.call("mock", "mock:crash")
    assert mb.call("mock", "mock:echo", {"still": "serving"}) == {"still": "serving"}


def test_unknown_commands_bridges_and_resources(mb: MLBridge) -> None:
    with pytest.raises(UnknownCommand, match=r"namespaces here: common, mock"):
        mb.call("mock", "nope:thing")
    with pytest.raises(UnknownCommand, match=r"mock commands: .*mock:echo"):
        mb.call("mock", "mock:nope")
    with pytest.raises(UnknownCommand, match="namespace:operation"):
        mb.call("mock", "echo")
    with pytest.raises(BridgeNotFound, match="bridges: mock"):
        mb.call("nobridge", "x:y")
    with pytest.raises(NotFound):
        mb.execute_resource("res_doesnotexist", {})
    with pytest.raises(InvalidArgument, match="no resource type 'nope'"):
        mb.create_resource("mock", "nope", {})
    with pytest.raises(InvalidArgument, match="CreateResource"):
        mb.call("mock", "common:create_resource", {})


def _raw_call_request(bridge: str, command: str, args_json: bytes) -> bytes:
    """A CallRequest on the wire, built by hand: a client may send any bytes, UTF-8 or not."""

    def field(number: int, data: bytes) -> bytes:
        return bytes([number << 3 | 2, len(data)]) + data

    return field(1, bridge.encode()) + field(2, command.encode()) + field(3, args_json)


def test_malformed_payloads(srv: ServerThread) -> None:
    with grpc.insecure_channel(srv.target) as ch:
        raw_call = ch.unary_unary("/mlbridge.v1.MLBridge/Call", response_deserializer=pb.CallReply.FromString)
        for bad, pattern in [(b"{not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object"),
                             (b"\xff\xfe", "not valid JSON")]:
            with pytest.raises(grpc.RpcError) as info:
                raw_call(_raw_call_request("mock", "mock:echo", bad))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert pattern in info.value.details()
        stub = pb_grpc.MLBridgeStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Call(pb.CallRequest(bridge="mock", command="mock:sleep", args_json='{"seconds": "long"}'))
        assert "must be number" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateResource(pb.CreateResourceRequest(bridge="mock", type="counter", config_json='{"start": "x"}'))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with MLBridge.connect(srv.target) as mb, pytest.raises(InvalidArgument, match="must be a dict"):
        mb.call("mock", "mock:echo", [1, 2])  # type: ignore[arg-type]


def test_oversized_messages_both_ways(mb: MLBridge) -> None:
    with pytest.raises(PayloadTooLarge):
        mb.call("mock", "mock:echo", {"data": "x" * (MAX + 10)})  # request over the server's cap
    with pytest.raises(PayloadTooLarge, match="over the"):
        mb.call("mock", "mock:blob", {"size": MAX * 2})  # reply over the runtime's cap
    assert mb.call("mock", "mock:blob", {"size": 1000})["data"] == "x" * 1000


def test_unserialisable_result(mb: MLBridge) -> None:
    with pytest.raises(InvalidResult, match="not JSON-serialisable"):
        mb.call("mock", "mock:unserialisable")


def test_attachments_travel_as_bytes(mb: MLBridge) -> None:
    blob = bytes(range(256)) * 10
    res = mb.call_detailed("mock", "mock:attach", attachments={"data.bin": blob})
    assert res.result == {"sizes": {"data.bin": 2560}}
    assert res.attachments["data.bin"] == blob[::-1]


def test_worker_death_is_reported_and_resource_rehydrated(mb: MLBridge, srv: ServerThread) -> None:
    rid = mb.create_resource("mock", "counter", {"start": 100})
    assert mb.execute_resource(rid, {"add": 1}) == {"value": 101}
    rec = srv.orch.registry.get("default", rid)
    pool = srv.orch.pools["mock"]
    worker = pool.workers[rec.worker_id]
    call_id = uuid.uuid4().hex
    with Background(lambda: mb.call("mock", "mock:sleep", {"seconds": 20}, call_id=call_id)) as call:
        while call_id not in srv.orch.runner.inflight:
            time.sleep(0.01)
        worker.handle.ref.kill()  # the runtime process dies mid-call
        exc = call.error()
    assert isinstance(exc, WorkerDied)
    assert "SIGKILL" in str(exc) and "being replaced" in str(exc)
    # The resource is re-created from its spec on a live worker.
    assert mb.execute_resource(rid, {"add": 1}) == {"value": 101}
    assert srv.orch.registry.get("default", rid).worker_id != worker.id


def test_stats(mb: MLBridge) -> None:
    mb.call("mock", "mock:echo", {})
    s = mb.stats()
    assert s["calls_total"] >= 1 and s["backend"] == "process"
    assert any(w["tenant"] == "default" and w["calls"] >= 1 for w in s["workers"])
    assert s["bridges"]["mock"]["ready"] >= 1


def test_health_and_reflection(srv: ServerThread) -> None:
    with grpc.insecure_channel(srv.target) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="mlbridge.v1.MLBridge"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        services = {s.name for s in replies[0].list_services_response.service}
        assert {"mlbridge.v1.MLBridge", "grpc.health.v1.Health"} <= services


def test_adapter(mb: MLBridge) -> None:
    mock = mb.get_adapter("mock")
    assert "echo" in mock.operations and "echo" in dir(mock)
    assert mock.echo(a=1) == {"a": 1}
    rid = mock.create("counter", {"start": 2})
    assert mb.execute_resource(rid) == {"value": 3}
    with pytest.raises(AttributeError, match="no operation 'fly'"):
        mock.fly()


def test_async_client(srv: ServerThread) -> None:
    async def main() -> None:
        async with AsyncMLBridge.connect(srv.target) as amb:
            assert await amb.call("mock", "mock:echo", {"z": 3}) == {"z": 3}
            rid = await amb.create_resource("mock", "ticker", {})
            events = [e async for e in amb.stream_resource(rid, {"n": 2})]
            assert events[-1].data == {"ticks": 2}
            assert rid in [r["resource_id"] for r in await amb.list_resources("mock")]
            assert await amb.delete_resource(rid)
            with pytest.raises(UnknownCommand):
                await amb.call("mock", "mock:nope")
            assert (await amb.describe("mock"))["bridge"] == "mock"
            assert (await amb.stats())["calls_total"] > 0
            assert [b["name"] for b in await amb.list_bridges()] == ["mock"]
            assert await amb.cancel("nothing") is False

    asyncio.run(main())


def test_wire_error_details_are_standard_grpc(srv: ServerThread) -> None:
    """Any gRPC client sees a standard status plus a google.rpc.ErrorInfo with the mlbridge code."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    with grpc.insecure_channel(srv.target) as ch:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.MLBridgeStub(ch).Call(pb.CallRequest(bridge="mock", command="nope:x"))
        status = rpc_status.from_call(info.value)
        detail = error_details_pb2.ErrorInfo()
        status.details[0].Unpack(detail)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert detail.reason == "UNKNOWN_COMMAND" and json.loads(detail.metadata["namespaces"]) == ["common", "mock"]


def test_replayed_registration_survives_worker_death(tmp_path) -> None:
    """A user-registered resource type is replayed on the replacement worker; its resources come back."""
    cfg = make_config(tmp_path, default_bridge="custom",
                      bridges={"custom": {"runtime": "custom", "pool_size": 1,
                                          "env": {"MLBRIDGE_SCRATCH": str(tmp_path / "scratch")}}})
    code = ("class Acc:\n"
            "    def create(self, config):\n        self.total = config.get('start', 0)\n"
            "    def execute(self, inputs):\n        self.total += inputs['x']\n        return {'total': self.total}\n")
    with ServerThread(cfg) as srv, MLBridge.connect(srv.target) as mb:
        mb.call("custom", "custom:register_type", {"name": "acc", "code": code, "class": "Acc"})
        rid = mb.create_resource("custom", "acc", {"start": 10})
        assert mb.execute_resource(rid, {"x": 5}) == {"total": 15}
        worker = next(iter(srv.orch.pools["custom"].claimed("default")))
        worker.handle.ref.kill()
        with pytest.raises(WorkerDied):
            mb.call("custom", "custom:run", {"code": "import time\ndef main(i):\n    time.sleep(5)"})
        # Replacement worker: the type is registered again and the resource re-created from its spec.
        assert mb.execute_resource(rid, {"x": 1}) == {"total": 11}
        types = {t["name"] for t in mb.call("custom", "custom:list_types")["types"]}
        assert "acc" in types


def test_idle_worker_that_dies_or_hangs_is_replaced(tmp_path) -> None:
    """A worker dying or freezing while idle is replaced before any call lands on it."""
    import os
    import signal

    cfg = make_config(tmp_path, bridges={"mock": {"runtime": "mock", "pool_size": 1}})
    with ServerThread(cfg) as srv, MLBridge.connect(srv.target) as mb:
        mb.call("mock", "mock:echo", {})
        pool = srv.orch.pools["mock"]
        for how in ("kill", "freeze"):
            victim = pool.claimed("default")[0]
            pid = victim.handle.ref.pid
            os.kill(pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
            deadline = time.monotonic() + 15
            while victim.id in pool.workers and time.monotonic() < deadline:
                time.sleep(0.1)
            assert victim.id not in pool.workers, how
            assert victim.death.startswith("died while idle" if how == "kill" else "stopped answering"), victim.death
            # The next call goes to a new worker and succeeds.
            assert mb.call("mock", "mock:echo", {"after": how}) == {"after": how}
            if how == "freeze":
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.mark.parametrize("command", ["mock:sleep", "mock:spin"])
def test_client_going_away_stops_the_handler(srv: ServerThread, command: str) -> None:
    """A client that gives up mid-call cancels it in the runtime; a handler that ignores that costs its worker."""
    pool = srv.orch.pools["mock"]
    with grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.MLBridgeStub(ch)
        stub.Call(pb.CallRequest(bridge="mock", command="mock:echo", args_json=b"{}"))
        worker = pool.claimed("default")[0]
        fut = stub.Call.future(pb.CallRequest(bridge="mock", command=command, args_json=b'{"seconds": 20}',
                                              call_id=uuid.uuid4().hex))
        deadline = time.monotonic() + 5
        while not srv.orch.runner.inflight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.orch.runner.inflight
        fut.cancel()
    deadline = time.monotonic() + 10
    if command == "mock:sleep":  # cooperative: the handler stops, the worker stays
        with MLBridge.connect(srv.target) as mb:
            while mb.call("mock", "common:stats")["in_flight"] > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert mb.call("mock", "common:stats")["in_flight"] == 1  # only this stats call
        assert worker.id in pool.workers
    else:  # ignores cancellation: its worker is replaced
        while worker.id in pool.workers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.id not in pool.workers
        assert "kept running after its client went away" in worker.death


def test_idle_claimed_worker_is_released_and_resources_come_back(tmp_path) -> None:
    cfg = make_config(tmp_path, bridges={"mock": {"runtime": "mock", "pool_size": 1, "release_idle_s": 1}})
    with ServerThread(cfg) as srv, MLBridge.connect(srv.target) as mb:
        rid = mb.create_resource("mock", "counter", {"start": 5})
        pool = srv.orch.pools["mock"]
        first = pool.claimed("default")[0]
        deadline = time.monotonic() + 15
        while first.id in pool.workers and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first.id not in pool.workers and first.death.startswith("released after 1s idle")
        while first.handle.ref.returncode is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.handle.ref.returncode is not None  # destroyed, not parked
        assert pool.claimed("default") == []
        # Next use: a fresh worker, the resource re-created from its spec.
        assert mb.execute_resource(rid, {"add": 1}) == {"value": 6}
        assert pool.claimed("default")[0].id != first.id
