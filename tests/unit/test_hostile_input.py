"""Bad input gets its own clear error, whatever its size: nothing becomes INTERNAL, UNKNOWN or RESOURCE_EXHAUSTED."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator import MLBridge, MLBridgeError
from orchestrator.errors import MAX_MESSAGE_CHARS
from tests.harness import ServerThread, make_config


@pytest.fixture(scope="module")
def mb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLBridge]:
    tmp = tmp_path_factory.mktemp("hostile")
    cfg = make_config(tmp, bridges={"mock": {"runtime": "mock", "pool_size": 1}}, default_bridge="mock")
    with ServerThread(cfg) as srv, MLBridge.connect(srv.target) as client:
        yield client


LONG = "x" * 10_000


@pytest.mark.parametrize("call", [
    lambda mb: mb.execute_resource(LONG, {}),
    lambda mb: mb.delete_resource(LONG),
    lambda mb: mb.create_resource("mock", "counter", {}, resource_id=LONG),
    lambda mb: mb.call("mock", "mock:" + LONG),
    lambda mb: mb.call(LONG, "mock:echo"),
    lambda mb: mb.create_resource("mock", LONG, {}),
], ids=["execute", "delete", "create-id", "command", "bridge", "type"])
def test_a_long_id_gets_the_real_error_with_its_echo_clipped(mb: MLBridge, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MLBridgeError) as info:
        call(mb)
    err = info.value
    assert err.code in ("NOT_FOUND", "INVALID_ARGUMENT", "UNKNOWN_COMMAND", "UNKNOWN_BRIDGE"), err.flat()
    assert len(err.flat()) <= MAX_MESSAGE_CHARS + 40
    assert "more characters" in err.flat()
    assert mb.call("mock", "mock:echo", {"still": "serving"}) == {"still": "serving"}


@pytest.mark.parametrize("text, rule", [
    ('{"x": NaN}', "holds NaN"),
    ('{"x": [1, Infinity]}', "holds Infinity"),
    ('{"x": -Infinity}', "holds -Infinity"),
    ('{"x": "\\ud800"}', "lone UTF-16 surrogate"),
    ('{"\\udfff": 1}', "lone UTF-16 surrogate"),
    ('{"x": ' + "[" * 150 + "]" * 150 + "}", "nested deeper than 100"),
    ('{"x": ' + "[" * 20_000 + "]" * 20_000 + "}", "nested deeper than 100"),
], ids=["nan", "infinity", "-infinity", "surrogate", "surrogate-key", "deep", "very-deep"])
def test_payloads_json_does_not_allow_are_refused_at_the_edge(mb: MLBridge, text: str, rule: str) -> None:
    import grpc

    from orchestrator.proto import mlbridge_pb2 as pb
    from orchestrator.proto import mlbridge_pb2_grpc as pb_grpc

    stub = pb_grpc.MLBridgeStub(mb._channel)  # raw requests: the Python client would refuse to send some
    rid = mb.create_resource("mock", "counter", {})
    for call in (lambda: stub.Call(pb.CallRequest(bridge="mock", command="mock:echo", args_json=text)),
                 lambda: stub.CreateResource(pb.CreateResourceRequest(bridge="mock", type="counter",
                                                                      config_json=text)),
                 lambda: stub.ExecuteResource(pb.ExecuteResourceRequest(resource_id=rid, inputs_json=text))):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert rule in info.value.details()
    assert mb.call("mock", "mock:echo", {"emoji": "\U0001F600", "s": "NaN Infinity"}) == \
        {"emoji": "\U0001F600", "s": "NaN Infinity"}


def test_deep_json_to_a_dspex_command_is_invalid_argument_not_internal(mb: MLBridge) -> None:
    import grpc

    from orchestrator.proto import mlbridge_pb2 as pb
    from orchestrator.proto import mlbridge_pb2_grpc as pb_grpc

    stub = pb_grpc.MLBridgeStub(mb._channel)
    deep = '{"signature": ' + "[" * 20_000 + "]" * 20_000 + "}"
    with pytest.raises(grpc.RpcError) as info:
        stub.Call(pb.CallRequest(bridge="dspy", command="create_program", args_json=deep))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert "nested" in info.value.details()
