"""Property-based fuzzing of every public RPC through a real server: bad input always gets a clean answer.

Every method of ``mlbridge.v1.MLBridge`` gets requests drawn from strategies
for its fields (control characters, ~20 KB strings, JSON and not-JSON text,
deep nesting, NaN, 1e999, escaped lone surrogates, limits of int64, odd
attachments, negative and huge timeouts), against a server without a policy
and one with a policy and a token (so the edge's steps run too); so do
answers to a request a live streaming call sent, the DSPex legacy commands
(args of their shapes with bad values) and bearer tokens. Property: the call
ends OK or with a specific status, never INTERNAL or UNKNOWN, and
RESOURCE_EXHAUSTED only for a quota or size cap; nothing is logged at ERROR;
the server answers ``mock:echo`` after each batch. Then malformed bytes
(random, truncated, invalid UTF-8, broken protobuf framing) to every method
through a raw channel: INVALID_ARGUMENT, or a clean answer where the bytes
happen to parse; and garbage to the health and reflection services, which
must leave the server serving. Deterministic (``derandomize``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.compat.dspex import LEGACY_COMMANDS as LEGACY
from orchestrator.proto import mlbridge_pb2 as pb
from orchestrator.proto import mlbridge_pb2_grpc as pb_grpc
from tests.harness import ServerThread, make_config

TOKEN = "fuzz-token-0123456789"
SERVICE = pb.DESCRIPTOR.services_by_name["MLBridge"]
METHODS = [m.name for m in SERVICE.methods]
STREAMING = {m.name for m in SERVICE.methods if m.server_streaming}
#: The client's own deadline on each fuzzed call: nothing a fuzzed request asks for should take this long.
CLIENT_DEADLINE_S = 20.0

POLICY = f"""
version: 1
defaults:
  bridges: [mock, dspy]
  rules:
    - {{name: no-slow-mock, effect: deny, commands: ["mock:spin", "mock:sleep", "mock:allocate", "mock:crash"]}}
    - {{name: everything-else, effect: allow}}
  quotas: {{max_concurrent_calls: 16, max_calls_per_minute: 100000, max_resources: 30, max_payload_bytes: 16384}}
  limits: {{call_timeout_s: 10}}
tenants:
  fuzz:
    tokens: ["sha256:{hashlib.sha256(TOKEN.encode()).hexdigest()}"]
"""


class Errors(logging.Handler):
    """Keeps every log record at ERROR or above: bad input must not produce one."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[str]:
        out = [f"{r.name}: {r.getMessage()}" for r in self.records]
        self.records.clear()
        return out


@dataclass
class Target:
    """A running server and how to call it."""

    name: str
    srv: ServerThread
    channel: grpc.Channel
    stub: pb_grpc.MLBridgeStub
    metadata: tuple[tuple[str, str], ...]
    resource_id: str
    errors: Errors

    def echo_ok(self) -> None:
        """The server still serves, and logged no error since the last check."""
        reply = self.stub.Call(pb.CallRequest(bridge="mock", command="mock:echo", args_json='{"still":"serving"}'),
                               metadata=self.metadata, timeout=30)
        assert json.loads(reply.result_json) == {"still": "serving"}
        assert not (logged := self.errors.take()), f"errors logged for bad input: {logged[:5]}"


@pytest.fixture(scope="module", params=["open", "policy"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    fields: dict[str, Any] = {}
    metadata: tuple[tuple[str, str], ...] = ()
    if request.param == "policy":
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY)
        policy.chmod(0o600)
        fields["policy"] = str(policy)
        metadata = (("authorization", f"Bearer {TOKEN}"),)
    cfg = make_config(tmp, bridges={"mock": {"runtime": "mock", "pool_size": 1},
                                    "dspy": {"runtime": "dspy", "pool_size": 1}}, default_bridge="mock", **fields)
    errors = Errors()
    logging.getLogger().addHandler(errors)
    try:
        with ServerThread(cfg) as srv, grpc.insecure_channel(srv.target) as channel:
            stub = pb_grpc.MLBridgeStub(channel)
            rid = stub.CreateResource(pb.CreateResourceRequest(bridge="mock", type="counter", config_json="{}"),
                                      metadata=metadata, timeout=60).resource_id
            errors.take()
            yield Target(request.param, srv, channel, stub, metadata, rid, errors)
    finally:
        logging.getLogger().removeHandler(errors)


# -- strategies ------------------------------------------------------------------------------------------------
#: Keys whose values make mock commands slow or large (mock:stream's n, mock:blob's size, ...): left out of
#: generated objects, so an example is about bad input, not about asking for a long job.
COSTLY_KEYS = frozenset({"n", "size", "seconds", "mb", "delay", "questions", "question", "count", "value"})

_chars = st.characters(exclude_categories=["Cs"])  # protobuf strings cannot hold lone surrogates
control = st.text(st.characters(min_codepoint=0, max_codepoint=0x1F) | st.sampled_from("\x7f\u2028\u2029\ufeff"),
                  max_size=20)
huge = st.builds(lambda c, n: c * n, st.text(_chars, min_size=1, max_size=3), st.integers(5_000, 7_000))
text = st.one_of(st.just(""), st.text(_chars, max_size=40), control, huge,
                 st.sampled_from(["mock", "dspy", "..", "../../etc/passwd", "mock:echo", "*", "%s%n", "\x00",
                                  "a" * 300, "\u202e", "NaN", "null", " mock "]))

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(_chars, max_size=30))
keys = st.text(_chars, max_size=12).filter(lambda k: k not in COSTLY_KEYS)


def _containers(kids: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(kids, max_size=4) | st.dictionaries(keys, kids, max_size=4)


json_values = st.recursive(scalars, _containers, max_leaves=20)


def _deep(depth: int, opener: str) -> str:
    closer = {"[": "]", "{": "}"}[opener]
    if opener == "[":
        return '{"x": ' + "[" * depth + "]" * depth + "}"
    return '{"x": ' + '{"a": ' * depth + "1" + closer * depth + "}"


json_text = st.one_of(
    st.just(""),
    st.builds(json.dumps, st.dictionaries(keys, json_values, max_size=5)),
    st.builds(json.dumps, json_values),  # not always an object
    st.builds(_deep, st.integers(50, 5_000), st.sampled_from("[{")),
    st.sampled_from(['{"x": NaN}', '{"x": Infinity}', '{"x": -Infinity}', "[NaN]", '{"x": "\\ud800"}',
                     '{"\\udfff": 1}', '{"x": "\\ud83d\\ude00"}', '{"x": "\\uDBFF"}', "{", "}", "{]", "nul",
                     '{"x": 1e999}', '{"x": -1e999}', '{"x": 123456789012345678901234567890}', '{"x": 1}{"y": 2}',
                     '{"a": 1, "a": 2}', "\ufeff{}", '{"x": "\x00"}', "'single'", '{"code": "import os"}',
                     '{"code": 1}', '"just a string"', "[]", "0", "true", "{" * 200_000]),
    st.text(_chars, max_size=200),  # mostly not JSON
    st.builds(lambda s: '{"x": "' + s + '"}', st.text(st.sampled_from('\\"u0dD8fF{}[]'), max_size=30)),
    huge,
)


@st.composite
def mostly(draw: st.DrawFn, valid: list[str], other: st.SearchStrategy[str]) -> str:
    """One of ``valid`` most of the time, so that most requests get past routing to the payload checks."""
    return draw(other) if draw(st.integers(0, 3)) == 2 else draw(st.sampled_from(valid))


ids = mostly(["RID"], st.one_of(text, st.sampled_from(["counter", "nope", "dspex-default-lm"])))
bridges = mostly(["", "mock"], st.one_of(text, st.sampled_from(["dspy", "MOCK", "custom"])))
commands = mostly(["mock:echo", "mock:attach", "mock:stream", "mock:note"], st.one_of(
    text,
    st.sampled_from(["mock:echo", "mock:fail", "mock:stream", "mock:attach", "mock:whoami", "mock:note",
                     "mock:observe", "mock:span", "common:ping", "common:describe", "common:stats",
                     "common:list_resources", "common:nope", "mock:", ":echo", "mock:echo:extra", "dspy:stats",
                     "ping", "configure_lm", "create_program", "execute_program", "list_programs",
                     "get_program_info", "delete_program", "get_stats", "cleanup", "reset_state"]),
))
int64 = st.one_of(st.integers(-(2 ** 63), 2 ** 63 - 1),
                  st.sampled_from([0, -1, 1, 2, 999, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 53 + 1, 2 ** 62,
                                   2 ** 63 - 1, -(2 ** 63), -(2 ** 31)]))
timeouts = st.one_of(st.just(0), st.integers(1_000, 60_000), int64)
attachments = st.dictionaries(
    st.one_of(st.text(_chars, max_size=20), control, st.just(""), st.text(_chars, min_size=200, max_size=400)),
    st.one_of(st.binary(max_size=64), st.builds(bytes, st.integers(0, 20_000)),
              st.sampled_from([b"\xff\xfe\x00", b"\x00" * 1000])),
    max_size=4,
)
call_ids = st.one_of(st.just(""), text, st.sampled_from(["c1", "x" * 10_000]))


def _rid(target: Target, value: str) -> str:
    return target.resource_id if value == "RID" else value


REQUESTS: dict[str, Callable[[Target], st.SearchStrategy[Any]]] = {
    "ListBridges": lambda t: st.just(pb.ListBridgesRequest()),
    "DescribeBridge": lambda t: st.builds(pb.DescribeBridgeRequest, bridge=bridges),
    "CreateResource": lambda t: st.builds(
        pb.CreateResourceRequest, bridge=bridges,
        type=mostly(["counter", "ticker", "journal"], st.one_of(text, st.sampled_from(["program", "lm"]))),
        config_json=json_text, attachments=attachments, resource_id=st.one_of(st.just(""), text),
        call_id=call_ids, timeout_ms=timeouts),
    "ExecuteResource": lambda t: st.builds(
        lambda rid, **kw: pb.ExecuteResourceRequest(resource_id=_rid(t, rid), **kw), ids,
        inputs_json=json_text, attachments=attachments, call_id=call_ids, timeout_ms=timeouts),
    "ExecuteResourceStream": lambda t: st.builds(
        lambda rid, **kw: pb.ExecuteResourceRequest(resource_id=_rid(t, rid), **kw), ids,
        inputs_json=json_text, attachments=attachments, call_id=call_ids, timeout_ms=timeouts),
    "ListResources": lambda t: st.builds(pb.ListResourcesRequest, bridge=bridges,
                                         type=st.one_of(text, st.just("counter"))),
    "DeleteResource": lambda t: st.builds(lambda rid: pb.DeleteResourceRequest(resource_id=rid), ids),
    "Call": lambda t: st.builds(pb.CallRequest, bridge=bridges, command=commands, args_json=json_text,
                                attachments=attachments, call_id=call_ids, timeout_ms=timeouts),
    "CallStream": lambda t: st.builds(pb.CallRequest, bridge=bridges, command=commands, args_json=json_text,
                                      attachments=attachments, call_id=call_ids, timeout_ms=timeouts),
    "Cancel": lambda t: st.builds(pb.CancelRequest, call_id=call_ids),
    "Answer": lambda t: st.builds(pb.AnswerRequest, call_id=call_ids, request_id=text, result_json=json_text,
                                  error=text),
    "GetStats": lambda t: st.builds(pb.GetStatsRequest, usage_tenant=text, usage_since_unix_ms=int64),
}


def test_every_public_method_has_a_strategy() -> None:
    assert set(REQUESTS) == set(METHODS)


@pytest.mark.parametrize("char", ["x", "%", "\n", "é", "\u0800", "\U0001F600", "\ud800"])
def test_an_error_fits_the_trailers_whatever_its_characters(char: str) -> None:
    """The status text and ErrorInfo stay under the 8 KiB a client takes, even at 9 bytes a character."""
    import base64
    from urllib.parse import quote

    from orchestrator.errors import to_rpc_status, wire_message
    from runtimes.wire.errors import InvalidArgument

    err = InvalidArgument(char * 10_000, details={char * 200 + str(i): char * 5_000 for i in range(30)})
    message = wire_message(err)
    sent = len(quote(message.encode("utf-8"), safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"))
    details = len(base64.b64encode(to_rpc_status(err).SerializeToString()))
    assert sent + details < 8192 - 300, (sent, details)
    assert "more characters" in message


# -- the property ---------------------------------------------------------------------------------------------
#: mlbridge codes a RESOURCE_EXHAUSTED status may carry: quotas and size caps, never gRPC's own by accident.
QUOTA_REASONS = {"RESOURCE_EXHAUSTED", "PAYLOAD_TOO_LARGE"}


def reason(err: grpc.RpcError) -> str | None:
    """The mlbridge code in the status's ErrorInfo; None when the status is gRPC's own."""
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except ValueError:  # a status of gRPC's own whose code differs from the one in the trailers
        return None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return None


def check_clean(err: grpc.RpcError, what: str) -> None:
    """The property: a specific status, never INTERNAL / UNKNOWN / an accidental RESOURCE_EXHAUSTED."""
    code, details = err.code(), err.details()
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), f"{what}: {code.name}: {details}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert reason(err) in QUOTA_REASONS, f"{what}: RESOURCE_EXHAUSTED not from a quota: {details}"
    if code == grpc.StatusCode.UNAVAILABLE:
        assert reason(err) is not None, f"{what}: the server went away: {details}"
    assert details, f"{what}: {code.name} without a message"


def invoke(target: Target, method: str, request: Any, metadata: tuple[tuple[str, str], ...] | None = None
           ) -> str:
    """Call ``method`` with ``request``; a failure must pass :func:`check_clean`. Returns the status's name."""
    fn = getattr(target.stub, method)
    md = target.metadata if metadata is None else metadata
    try:
        if method in STREAMING:
            for _ in fn(request, metadata=md, timeout=CLIENT_DEADLINE_S):
                pass
        else:
            fn(request, metadata=md, timeout=CLIENT_DEADLINE_S)
    except grpc.RpcError as err:
        check_clean(err, f"{method}({_short(request)})")
        return str(err.code().name)
    return "OK"


def _short(request: Any) -> str:
    text = str(request)
    return text if len(text) < 300 else text[:300] + f"... ({len(text)} characters)"


FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture, HealthCheck.large_base_example])


@pytest.mark.parametrize("method", METHODS)
def test_fuzzed_requests_get_a_specific_status(target: Target, method: str) -> None:
    codes: Counter[str] = Counter()

    @FUZZ
    @given(request=REQUESTS[method](target))
    def run(request: Any) -> None:
        codes[invoke(target, method, request)] += 1

    run()
    print(f"{target.name} {method}: {dict(codes)}")
    target.echo_ok()


tokens = st.one_of(st.just(None), st.just(""), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                                                        max_size=200))


@pytest.mark.parametrize("target", ["policy"], indirect=True)  # without a policy no token is wrong
@pytest.mark.parametrize("method", ["ListBridges", "Call", "CallStream", "GetStats"])
def test_fuzzed_tokens_are_unauthenticated_or_served(target: Target, method: str) -> None:
    request = {"ListBridges": pb.ListBridgesRequest(), "GetStats": pb.GetStatsRequest()}.get(
        method, pb.CallRequest(bridge="mock", command="mock:echo", args_json="{}"))

    @settings(FUZZ, max_examples=25)
    @given(token=tokens, scheme=st.sampled_from(["Bearer ", "bearer ", "Basic ", "", "Bearer  "]))
    def run(token: str | None, scheme: str) -> None:
        md = () if token is None else (("authorization", f"{scheme}{token}".strip()),)
        codes[invoke(target, method, request, md)] += 1

    codes: Counter[str] = Counter()
    run()
    print(f"{target.name} {method} with fuzzed tokens: {dict(codes)}")
    target.echo_ok()


class LiveAsk:
    """A streaming ``mock:ask`` call that waits for answers, started again whenever an answer ended it."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.calls = 0
        self.ended: Counter[str] = Counter()
        self.call_id = ""
        self.latest: list[str] = []
        self.reader: threading.Thread | None = None

    def live(self) -> tuple[str, str]:
        """(call id, id of the request it waits on), starting a call when none waits."""
        if self.reader is None or not self.reader.is_alive():
            self._start()
        return self.call_id, self.latest[-1]

    def _start(self) -> None:
        self.calls += 1
        self.call_id = f"fuzz-ask-{self.target.name}-{self.calls}"
        latest: list[str] = []
        stream = self.target.stub.CallStream(
            pb.CallRequest(bridge="mock", command="mock:ask", call_id=self.call_id,
                           args_json=json.dumps({"questions": list(range(100))})),
            metadata=self.target.metadata, timeout=60)

        def read() -> None:
            try:
                for ev in stream:
                    if ev.HasField("request"):
                        latest.append(ev.request.request_id)
                self.ended["OK"] += 1
            except grpc.RpcError as err:
                self.ended[err.code().name] += 1

        self.latest = latest
        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + 30
        while not latest and time.monotonic() < deadline:
            time.sleep(0.01)
        assert latest, "mock:ask sent no request"

    def stop(self) -> None:
        if self.reader is not None and self.reader.is_alive():
            self.target.stub.Cancel(pb.CancelRequest(call_id=self.call_id), metadata=self.target.metadata, timeout=10)
            self.reader.join(30)


def test_fuzzed_answers_to_a_live_request(target: Target) -> None:
    """Answers to a request a streaming call really sent (mock:ask): the answer path's own checks."""
    ask = LiveAsk(target)
    codes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=40)
    @given(request_id=st.one_of(st.just(None), st.just(None), text), result_json=json_text,
           error=st.one_of(st.just(""), st.just(""), text))
    def run(request_id: str | None, result_json: str, error: str) -> None:
        call_id, current = ask.live()
        codes[invoke(target, "Answer", pb.AnswerRequest(call_id=call_id, request_id=current if request_id is None
                                                        else request_id, result_json=result_json,
                                                        error=error))] += 1

    run()
    ask.stop()
    assert not {"INTERNAL", "UNKNOWN"} & set(ask.ended), ask.ended
    print(f"{target.name} Answer to a live request: {dict(codes)}; {ask.calls} mock:ask calls, "
          f"ended {dict(ask.ended)}")
    target.echo_ok()


# -- the DSPex legacy commands: args of the shapes they take, with bad values -----------------------------------
#: Strings that may hold lone surrogates: json.dumps escapes them (``"\\ud800"``), as a client's encoder would.
raw_strings = st.one_of(st.text(max_size=20), st.text(_chars, max_size=20),
                        st.sampled_from(["dummy", "question", "answer", "a -> b", "", "predict", "cot"]))
field_spec = st.one_of(raw_strings, st.fixed_dictionaries({"name": st.one_of(raw_strings, json_values)},
                                                          optional={"description": raw_strings, "type": raw_strings}),
                       json_values)
signatures = st.one_of(
    st.just("question -> answer"), raw_strings, json_values,
    st.builds(lambda a, b: f"{a} -> {b}", raw_strings, raw_strings),
    st.fixed_dictionaries({"inputs": st.lists(field_spec, max_size=3), "outputs": st.lists(field_spec, max_size=3)},
                          optional={"description": raw_strings, "name": raw_strings}),
)
dspex_args = st.one_of(
    st.fixed_dictionaries({}, optional={
        "id": raw_strings, "program_id": st.one_of(raw_strings, st.just("fuzz-program")), "signature": signatures,
        "program_type": st.one_of(raw_strings, json_values), "inputs": st.one_of(json_values, st.dictionaries(
            raw_strings, json_values, max_size=3)), "model": raw_strings, "provider": raw_strings,
        "api_key": raw_strings, "temperature": json_values, "answers": json_values, "max_tokens": json_values,
        "api_base": raw_strings, "cache": json_values}),
    json_values,
)


def test_fuzzed_dspex_legacy_commands_get_a_specific_status(target: Target) -> None:
    codes: Counter[str] = Counter()

    @FUZZ
    @given(command=st.sampled_from(sorted(LEGACY)), args=dspex_args, raw=st.one_of(st.none(), json_text))
    def run(command: str, args: Any, raw: str | None) -> None:
        text = json.dumps(args) if raw is None else raw
        codes[invoke(target, "Call", pb.CallRequest(command=command, args_json=text, timeout_ms=20_000))] += 1

    run()
    print(f"{target.name} DSPex legacy commands: {dict(codes)}")
    target.echo_ok()


# -- malformed bytes ------------------------------------------------------------------------------------------
def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    return _key(number, 2) + _varint(len(data)) + data


def malformed(rng: random.Random, valid: bytes) -> bytes:
    """One malformed encoding: random, truncated, invalid UTF-8, bad framing, or a corrupted valid message."""
    kind = rng.randrange(10)
    bad_utf8 = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"ok\x80", b"\xe2\x82"])
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 1:
        return valid[:rng.randrange(len(valid))] if valid else b"\x0a\x05ab"
    if kind == 2:  # a string field (1..6) with invalid UTF-8
        return _field(rng.randrange(1, 7), bad_utf8) + valid
    if kind == 3:  # a map entry (attachments: field 3 or 4) whose key is not UTF-8
        return valid + _field(rng.choice([3, 4]), _field(1, bad_utf8) + _field(2, b"v"))
    if kind == 4:  # a length far past the end
        return _key(rng.randrange(1, 7), 2) + _varint(rng.choice([2 ** 31, 2 ** 40, 10_000])) + b"abc"
    if kind == 5:  # an over-long varint
        return _key(rng.randrange(1, 8), 0) + b"\xff" * rng.randrange(10, 20)
    if kind == 6:  # wire types 3, 4, 6, 7: groups unbalanced, types that do not exist
        return valid + _key(rng.randrange(1, 30), rng.choice([3, 4, 6, 7])) + b"\x00"
    if kind == 7:  # field number 0, the largest field number
        return rng.choice([b"\x00\x01", b"\x02\x01a", _key(2 ** 29 - 1, 2) + b"\x01x", _key(2 ** 29, 0) + b"\x01"])
    if kind == 8:  # a valid message with random bytes flipped
        data = bytearray(valid or b"\x0a\x03abc")
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    return valid + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 30)))  # trailing garbage


EXAMPLES: dict[str, Any] = {
    "ListBridges": pb.ListBridgesRequest(),
    "DescribeBridge": pb.DescribeBridgeRequest(bridge="mock"),
    "CreateResource": pb.CreateResourceRequest(bridge="mock", type="nope", config_json="{}",
                                               attachments={"a": b"x"}, call_id="c", timeout_ms=5000),
    "ExecuteResource": pb.ExecuteResourceRequest(resource_id="nope", inputs_json="{}", attachments={"a": b"x"}),
    "ExecuteResourceStream": pb.ExecuteResourceRequest(resource_id="nope", inputs_json="{}"),
    "ListResources": pb.ListResourcesRequest(bridge="mock", type="counter"),
    "DeleteResource": pb.DeleteResourceRequest(resource_id="nope"),
    "Call": pb.CallRequest(bridge="mock", command="mock:echo", args_json='{"a":1}', attachments={"a": b"x"},
                           call_id="c", timeout_ms=5000),
    "CallStream": pb.CallRequest(bridge="mock", command="mock:echo", args_json='{"a":1}', timeout_ms=5000),
    "Cancel": pb.CancelRequest(call_id="nope"),
    "Answer": pb.AnswerRequest(call_id="nope", request_id="r", result_json="{}", error=""),
    "GetStats": pb.GetStatsRequest(usage_tenant="x", usage_since_unix_ms=1),
}
#: Malformed messages sent to each method (per server).
BYTES_PER_METHOD = 25


def raw(channel: grpc.Channel, path: str, streaming: bool) -> Callable[..., Any]:
    make = channel.unary_stream if streaming else channel.unary_unary
    return make(path, request_serializer=None, response_deserializer=None)


def send_raw(fn: Callable[..., Any], data: bytes, streaming: bool, metadata: Any,
             what: str = "") -> grpc.StatusCode:
    """Send ``data``; the status it ended with, which (unless ``what`` is empty) must pass :func:`check_clean`."""
    try:
        if streaming:
            for _ in fn(data, metadata=metadata, timeout=CLIENT_DEADLINE_S):
                pass
        else:
            fn(data, metadata=metadata, timeout=CLIENT_DEADLINE_S)
    except grpc.RpcError as err:
        if what:
            check_clean(err, what)
        code: grpc.StatusCode = err.code()
        return code
    return grpc.StatusCode.OK


@pytest.mark.parametrize("method", METHODS)
def test_malformed_bytes_are_invalid_argument(target: Target, method: str) -> None:
    rng = random.Random(f"malformed-{method}")
    request_cls = type(EXAMPLES[method])
    valid = EXAMPLES[method].SerializeToString()
    streaming = method in STREAMING
    fn = raw(target.channel, f"/{SERVICE.full_name}/{method}", streaming)
    codes: dict[str, int] = {}
    for _ in range(BYTES_PER_METHOD):
        data = malformed(rng, valid)
        try:
            request_cls.FromString(data)
            parses = True
        except Exception:  # noqa: BLE001 - DecodeError, and whatever else the parser raises
            parses = False
        code = send_raw(fn, data, streaming, target.metadata, f"{method} {data!r}")
        codes[code.name] = codes.get(code.name, 0) + 1
        if not parses:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{method} {data!r}: {code.name}"
    print(f"{target.name} {method}: {codes}")
    target.echo_ok()


def test_empty_bytes_are_the_empty_request(target: Target) -> None:
    """Zero bytes is a valid (all-default) message for every method: a clean answer, whatever it is."""
    for method in METHODS:
        send_raw(raw(target.channel, f"/{SERVICE.full_name}/{method}", method in STREAMING), b"",
                 method in STREAMING, target.metadata, f"{method} with no bytes")
    target.echo_ok()


def test_garbage_to_health_and_reflection_leaves_the_server_serving(target: Target) -> None:
    """grpc's own servicers answer with their own codes; the server must go on serving."""
    rng = random.Random("health-reflection")
    check = raw(target.channel, "/grpc.health.v1.Health/Check", False)
    watch = raw(target.channel, "/grpc.health.v1.Health/Watch", True)
    reflect: Callable[..., Any] = target.channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                           request_serializer=None, response_deserializer=None)
    seen: dict[str, int] = {}
    for i in range(20):
        data = malformed(rng, _field(1, b"mlbridge.v1.MLBridge"))
        for name, fn, streaming in (("check", check, False), ("watch", watch, True)):
            if name == "watch":  # a parsed Watch streams until its deadline: keep that short
                try:
                    for _ in fn(data, timeout=0.3):
                        pass
                    code = grpc.StatusCode.OK
                except grpc.RpcError as err:
                    code = err.code()
            else:
                code = send_raw(fn, data, streaming, ())
            seen[f"{name}:{code.name}"] = seen.get(f"{name}:{code.name}", 0) + 1
        try:
            for _ in reflect(iter([data, data[: i % 7]]), timeout=5):
                pass
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code = err.code()
        seen[f"reflection:{code.name}"] = seen.get(f"reflection:{code.name}", 0) + 1
    print(f"{target.name} health/reflection: {seen}")
    # grpc's own servicers log each request that does not parse (ERROR, with a traceback): theirs, not ours.
    grpcs_own = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/")
    target.errors.records[:] = [r for r in target.errors.records
                                if not (r.name.startswith("grpc.") and any(m in r.getMessage() for m in grpcs_own))]
    target.echo_ok()
