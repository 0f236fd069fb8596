"""The wire kernel: one error table, one version, errors as CODE: message, JSON as text."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

import orchestrator
import runtimes
from orchestrator.errors import STATUS_BY_CODE
from orchestrator.proto import mlbridge_pb2 as pb
from runtimes.core import Bridge
from runtimes.wire import __version__, errors
from runtimes.wire.payload import encode_capped, nbytes, parse_object
from runtimes.wire.proto import common_pb2, runtime_pb2

ROOT = Path(__file__).resolve().parents[2]


def test_one_version_read_everywhere() -> None:
    assert orchestrator.__version__ == runtimes.__version__ == __version__
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" in project["dynamic"] and "version" not in project
    from importlib import metadata

    assert metadata.version("mlbridge") == __version__


def test_every_code_has_one_grpc_status() -> None:
    codes = {cls.code for cls in _subclasses(errors.MLBridgeError)}
    assert codes == set(errors.GRPC_STATUS) == set(STATUS_BY_CODE)
    assert STATUS_BY_CODE["OUT_OF_MEMORY"] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert STATUS_BY_CODE["UNKNOWN_COMMAND"] == grpc.StatusCode.INVALID_ARGUMENT


def _subclasses(cls: type) -> list[type]:
    return [cls] + [s for sub in cls.__subclasses__() for s in _subclasses(sub)]


def test_own_errors_read_code_colon_message() -> None:
    assert errors.NotFound("resource 'x' not found").flat() == "NOT_FOUND: resource 'x' not found"
    assert errors.OutOfMemory("killed").flat() == "OUT_OF_MEMORY: killed"


def test_foreign_errors_keep_their_class() -> None:
    class Exploded(RuntimeError):
        pass

    class B(Bridge):
        name = "b"

    err = B().to_error(Exploded("model exploded"))
    assert isinstance(err, errors.FrameworkError)
    assert err.flat() == f"{__name__}.test_foreign_errors_keep_their_class.<locals>.Exploded: model exploded"
    rebuilt = errors.error_from_wire(err.code, err.flat())
    assert rebuilt.flat() == err.flat() and isinstance(rebuilt, errors.FrameworkError)


def test_payload_fields_are_plain_json_text() -> None:
    """What grpcurl and other languages' clients see: the JSON itself, not base64."""
    req = pb.CallRequest(command="mock:echo", args_json='{"x": "é"}')
    as_json = json.loads(json_format.MessageToJson(req))
    assert as_json["argsJson"] == '{"x": "é"}'
    parsed = json_format.Parse('{"command": "mock:echo", "argsJson": "{\\"y\\": 2}"}', pb.CallRequest())
    assert json.loads(parsed.args_json) == {"y": 2}
    # Wire-compatible with the bytes fields they were: a length-delimited field 3 either way.
    old_client_bytes = b"\x1a\x07" + b'{"x":1}'
    assert pb.CallRequest.FromString(old_client_bytes).args_json == '{"x":1}'
    assert pb.CallRequest(args_json='{"x":1}').SerializeToString() == old_client_bytes


def test_shared_messages_are_defined_once() -> None:
    for name in ("Chunk", "Progress", "ClientRequest", "AnswerRequest", "AnswerReply", "CommandInfo",
                 "ResourceTypeInfo"):
        assert getattr(pb, name) is getattr(common_pb2, name), name
        assert not hasattr(runtime_pb2, name) or getattr(runtime_pb2, name) is getattr(common_pb2, name)
    ev = runtime_pb2.StreamEvent(chunk=common_pb2.Chunk(data_json='"tok"'))
    assert pb.StreamEvent.FromString(ev.SerializeToString()).chunk.data_json == '"tok"'


def test_payload_helpers() -> None:
    assert parse_object("") == {}
    with pytest.raises(errors.InvalidArgument, match="must be a JSON object"):
        parse_object("[1]")
    with pytest.raises(errors.InvalidArgument, match="not valid JSON"):
        parse_object("{")
    assert nbytes("ab") == 2 and nbytes("é") == 2
    assert encode_capped({"a": "é"}, 100, "x") == '{"a":"é"}'
    with pytest.raises(errors.PayloadTooLarge) as info:
        encode_capped("é" * 10, 20, "result")
    assert info.value.details == {"size": 22, "limit": 20}
    with pytest.raises(errors.InvalidResult):
        encode_capped(float("nan"), 100, "result")
    with pytest.raises(errors.InvalidResult):
        encode_capped("\ud800", 100, "result")  # a lone surrogate cannot go on the wire
