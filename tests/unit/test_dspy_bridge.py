"""The dspy bridge through a real runtime, offline (DSPy's DummyLM; no provider).

Most tests drive an in-process :class:`Dispatcher` (the same code the gRPC
server calls); the last group starts ``python -m runtimes.core --bridge dspy``
and talks to it over its unix socket. The one "provider" used is a local
HTTP stub that answers 401 and echoes the key back, as OpenAI does.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

pytest.importorskip("dspy")

from runtimes.dspy import DSPyBridge  # noqa: E402
from runtimes.wire.errors import MLBridgeError  # noqa: E402
from runtimes.wire.proto import runtime_pb2 as pb  # noqa: E402
from runtimes.wire.proto import runtime_pb2_grpc as pb_grpc  # noqa: E402
from tests.harness import InProcessRuntime

KEY = "sk-test-Zq8TopSecretKeyValue-0042"
MASKED = "sk-test-****0042"


class Runtime(InProcessRuntime):
    """A dspy runtime in this process; records every reply to check for leaks."""

    def __init__(self, secrets: dict[str, str] | None = None) -> None:
        super().__init__(DSPyBridge(), secrets)

    def stream(self, rid: str, inputs: dict[str, Any] | None = None) -> tuple[list[Any], list[Any], Any]:
        """(chunks, progress, final result or error) of a streaming execute."""

        async def go() -> list[tuple[str, Any]]:
            fields = {"call_id": uuid.uuid4().hex, "command": "common:execute_resource", "resource_id": rid}
            return [ev async for ev in self.d.stream(fields, json.dumps(inputs or {}).encode())]

        chunks, progress, final = [], [], None
        for kind, payload in asyncio.run(go()):
            if kind == "chunk":
                chunks.append(payload)
            elif kind == "progress":
                progress.append(payload)
            else:
                final = payload.error if payload.error is not None else json.loads(payload.result)
        self.seen.append(json.dumps([chunks, progress]) + (final.flat() if isinstance(final, MLBridgeError)
                                                           else json.dumps(final)))
        return chunks, progress, final


@pytest.fixture
def rt() -> Runtime:
    return Runtime()


def dummy(answers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"provider": "dummy", "answers": answers, **extra}


# -- describe and import cost ----------------------------------------------------
def test_describe_lists_types_commands_and_version(rt: Runtime) -> None:
    from importlib import metadata

    info = rt.ok("common:describe")
    types = {t["name"]: t for t in info["resource_types"]}
    assert set(types) == {"signature", "lm", "program", "dataset", "optimization"}
    assert types["program"]["streaming"] and types["optimization"]["streaming"]
    assert not types["lm"]["streaming"]
    names = {c["name"] for c in info["commands"]}
    assert {"dspy:configure_lm", "dspy:reset", "dspy:stats"} <= names
    assert info["framework"] == "dspy" and info["framework_version"] == metadata.version("dspy")


def test_importing_the_bridge_does_not_import_dspy() -> None:
    code = "import sys, runtimes.dspy; print(sorted({m.split('.')[0] for m in sys.modules} & {'dspy', 'litellm'}))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# -- signatures --------------------------------------------------------------------
def test_signature_from_string(rt: Runtime) -> None:
    out = rt.create("signature", "qa", {"signature": "question -> answer", "instructions": "Be brief."})
    assert out["info"]["inputs"] == ["question"] and out["info"]["outputs"] == ["answer"]
    assert out["info"]["instructions"] == "Be brief."


def test_signature_from_fields_keeps_descriptions_and_types(rt: Runtime) -> None:
    out = rt.create("signature", "s", {
        "inputs": [{"name": "context", "description": "facts to use"}, "question"],
        "outputs": [{"name": "answer", "description": "one word"}, {"name": "confidence", "type": "float"}],
        "instructions": "Answer from the context.",
    })
    assert out["info"]["inputs"] == ["context", "question"]
    assert out["info"]["outputs"] == ["answer", "confidence"]
    sig = rt.bridge.resources.get("s").signature  # type: ignore[attr-defined]
    assert sig.input_fields["context"].json_schema_extra["desc"] == "facts to use"
    assert sig.output_fields["confidence"].annotation is float
    assert sig.instructions == "Answer from the context."


@pytest.mark.parametrize("config, needle", [
    ({"signature": "question answer"}, "->"),
    ({"signature": "a b -> c"}, "SyntaxError"),
    ({"signature": "q: NotAType -> a"}, "NotAType"),
    ({"signature": "question -> "}, "at least one input and one output"),
    ({"inputs": ["1x"], "outputs": ["a"]}, "identifier"),
    ({"inputs": ["q"], "outputs": [{"name": "a", "type": "object()"}]}, "types:"),
    ({"inputs": ["q"], "outputs": ["q"]}, "twice"),
    ({"inputs": ["q"]}, "'outputs' must be a list"),
])
def test_bad_signature_is_invalid_argument(rt: Runtime, config: dict[str, Any], needle: str) -> None:
    err = rt.fail("common:create_resource", config, "bad", "signature")
    assert err.code == "INVALID_ARGUMENT"
    assert needle in err.message
    assert "bad" not in rt.bridge.resources


# -- programs ---------------------------------------------------------------------------
def test_predict_with_dummy_lm(rt: Runtime) -> None:
    rt.create("lm", "lm", dummy([{"answer": "4"}, {"answer": "six"}]))
    rt.create("signature", "qa", {"signature": "question -> answer"})
    out = rt.create("program", "p", {"signature": "qa", "module": "Predict", "lm": "lm"})
    assert out["info"]["module"] == "Predict" and out["info"]["lm"] == "lm"
    assert rt.execute("p", {"question": "2+2?"}) == {"answer": "4"}
    assert rt.execute("p", {"question": "3+3?"}) == {"answer": "six"}
    lm = rt.bridge.resources.get("lm").lm  # type: ignore[attr-defined]
    assert "2+2?" in json.dumps(lm.history[0]["messages"])


def test_chain_of_thought_returns_reasoning(rt: Runtime) -> None:
    rt.create("lm", "lm", dummy([{"reasoning": "two plus two is four", "answer": "4"}]))
    rt.create("program", "cot", {"signature": "question -> answer", "module": "ChainOfThought", "lm": "lm"})
    out = rt.execute("cot", {"question": "2+2?"})
    assert out == {"reasoning": "two plus two is four", "answer": "4"}
    assert list(out) == ["reasoning", "answer"]


def test_program_input_and_reference_errors(rt: Runtime) -> None:
    rt.create("lm", "lm", dummy([{"answer": "x"}]))
    rt.create("program", "p", {"signature": {"inputs": ["question"], "outputs": ["answer"]}, "lm": "lm"})
    err = rt.fail("common:execute_resource", {"query": "hi"}, "p")
    assert err.code == "INVALID_ARGUMENT" and "missing input(s): question" in err.message
    assert "unexpected input(s): query" in err.message
    err = rt.fail("common:create_resource", {"signature": "nope", "lm": "lm"}, "p2", "program")
    assert err.code == "NOT_FOUND" and "'nope'" in err.message
    err = rt.fail("common:create_resource", {"signature": "q -> a", "lm": "p"}, "p3", "program")
    assert err.code == "INVALID_ARGUMENT" and "'program' resource, not 'lm'" in err.message
    err = rt.fail("common:create_resource", {"signature": "q -> a", "module": "ReAct"}, "p4", "program")
    assert err.code == "INVALID_ARGUMENT" and "Predict" in err.message


def test_default_lm_from_configure_lm(rt: Runtime) -> None:
    rt.create("program", "p", {"signature": "question -> answer"})
    err = rt.fail("common:execute_resource", {"question": "q"}, "p")
    assert err.code == "FAILED_PRECONDITION" and "dspy:configure_lm" in err.message
    out = rt.ok("dspy:configure_lm", dummy([{"answer": "from default"}]))
    assert out["default_lm"]["provider"] == "dummy"
    assert rt.execute("p", {"question": "q"}) == {"answer": "from default"}
    stats = rt.ok("dspy:stats")
    assert stats["default_lm"]["model"] == "dummy" and stats["executions"] == 1
    assert stats["resources"] == {"program": 1}


def test_concurrent_calls_keep_their_own_lm(rt: Runtime) -> None:
    rt.create("lm", "a", dummy([{"answer": "A"}] * 12))
    rt.create("lm", "b", dummy([{"answer": "B"}] * 12))
    rt.create("program", "pa", {"signature": "question -> answer", "lm": "a"})
    rt.create("program", "pb", {"signature": "question -> answer", "lm": "b"})

    async def many() -> list[Any]:
        calls = []
        for i in range(24):
            rid = "pa" if i % 2 == 0 else "pb"
            ctx = rt.d.make_context(call_id=f"c{i}", command="common:execute_resource", resource_id=rid)
            calls.append(rt.d.run(ctx, json.dumps({"question": str(i)}).encode()))
        return await asyncio.gather(*calls)

    results = [json.loads(o.result)["answer"] for o in asyncio.run(many())]
    assert results == ["A" if i % 2 == 0 else "B" for i in range(24)]


# -- streaming ----------------------------------------------------------------------------------
def test_streaming_with_plain_dummy_lm_sends_the_final_prediction(rt: Runtime) -> None:
    rt.create("lm", "lm", dummy([{"answer": "hello world"}]))
    rt.create("program", "p", {"signature": "question -> answer", "lm": "lm"})
    chunks, _, final = rt.stream("p", {"question": "hi"})
    assert chunks == [{"type": "prediction", "outputs": {"answer": "hello world"}}]
    assert final == {"answer": "hello world"}


def test_streaming_tokens_through_dspy_streamify(rt: Runtime) -> None:
    rt.create("lm", "lm", dummy([{"reasoning": "add them up", "answer": "the answer is four"}],
                                stream_tokens=True))
    rt.create("program", "cot", {"signature": "question -> answer", "module": "ChainOfThought", "lm": "lm"})
    chunks, _, final = rt.stream("cot", {"question": "2+2?"})
    tokens = [c for c in chunks if c["type"] == "token"]
    by_field: dict[str, str] = {}
    for t in tokens:
        by_field[t["field"]] = by_field.get(t["field"], "") + t["text"]
    assert by_field == {"reasoning": "add them up", "answer": "the answer is four"}
    assert sum(1 for t in tokens if t["field"] == "answer" and t["text"].strip()) == 4  # word by word
    assert [t["field"] for t in tokens].index("answer") > [t["field"] for t in tokens].index("reasoning")
    assert chunks[-1] == {"type": "prediction", "outputs": final}
    assert final == {"reasoning": "add them up", "answer": "the answer is four"}


def test_token_streaming_lm_also_serves_unary_calls(rt: Runtime) -> None:
    rt.create("lm", "lm", dummy([{"answer": "plain"}], stream_tokens=True))
    rt.create("program", "p", {"signature": "question -> answer", "lm": "lm"})
    assert rt.execute("p", {"question": "q"}) == {"answer": "plain"}


# -- datasets and optimization ----------------------------------------------------------------------
TRAIN = [{"question": f"{n}+{n}?", "answer": str(2 * n)} for n in (2, 3, 4, 5)]


def _optimizable(rt: Runtime, answers: list[dict[str, Any]]) -> None:
    rt.create("lm", "lm", dummy(answers))
    rt.create("program", "p", {"signature": "question -> answer", "module": "Predict", "lm": "lm"})
    out = rt.create("dataset", "train", {"examples": TRAIN, "inputs": ["question"]})
    assert out["info"] == {"size": 4, "inputs": ["question"], "fields": ["answer", "question"]}


def test_bootstrap_few_shot_makes_a_new_program_with_progress(rt: Runtime) -> None:
    _optimizable(rt, [{"answer": "4"}, {"answer": "6"}, {"answer": "wrong"}, {"answer": "10"},
                      {"answer": "12"}])
    rt.create("optimization", "opt", {"program": "p", "trainset": "train", "optimizer": "BootstrapFewShot",
                                      "metric": "exact_match",
                                      "optimizer_args": {"max_bootstrapped_demos": 4, "max_labeled_demos": 0}})
    chunks, progress, final = rt.stream("opt", {"program_id": "p-tuned"})
    assert not isinstance(final, MLBridgeError), final.flat()
    assert final["program_id"] == "p-tuned" and final["resource_type"] == "program"
    assert final["info"]["demos"] == {"self": 3} and final["info"]["optimized_from"] == "opt"
    assert final["metric"] == {"name": "exact_match", "calls": 4, "passed": 3}
    per_example = [m for _, _, m in progress if "on example" in m]
    assert [m.rsplit(": ", 1)[1] for m in per_example] == ["pass", "pass", "fail", "pass"]
    assert [(s, t) for s, t, _ in progress][-1] == (4, 4)
    assert chunks == [{"type": "demos", "predictor": "self", "count": 3}]
    listed = {r["resource_id"]: r for r in rt.ok("common:list_resources")["resources"]}
    assert listed["p-tuned"]["type"] == "program"
    # The compiled program runs and puts its demos in the prompt; the original has none.
    assert rt.execute("p-tuned", {"question": "6+6?"}) == {"answer": "12"}
    prompt = json.dumps(rt.bridge.resources.get("lm").lm.history[-1]["messages"])  # type: ignore[attr-defined]
    assert "5+5?" in prompt and "3+3?" in prompt and "4+4?" not in prompt
    assert rt.ok("common:get_resource", {"resource_id": "p"})["info"]["demos"] == {"self": 0}
    # The returned config re-creates the same program (how the orchestrator rehydrates it).
    again = rt.create("program", "p-rehydrated", final["config"])
    assert again["info"]["demos"] == {"self": 3}


def test_unary_optimization_returns_the_result_and_names_the_program(rt: Runtime) -> None:
    _optimizable(rt, [{"answer": a["answer"]} for a in TRAIN])
    rt.create("optimization", "opt", {"program": "p", "trainset": "train", "metric": "contains"})
    out = rt.execute("opt")
    assert out["program_id"].startswith("opt.compiled.") and out["program_id"] in rt.bridge.resources
    assert out["metric"]["passed"] == 4
    assert rt.ok("common:get_resource", {"resource_id": "opt"})["info"]["runs"] == [out["program_id"]]
    err = rt.fail("common:execute_resource", {"program_id": out["program_id"]}, "opt")
    assert err.code == "ALREADY_EXISTS"


def test_labeled_few_shot_needs_no_lm_calls(rt: Runtime) -> None:
    _optimizable(rt, [])
    rt.create("optimization", "opt", {"program": "p", "trainset": "train", "optimizer": "LabeledFewShot",
                                      "optimizer_args": {"k": 2}})
    out = rt.execute("opt", {"program_id": "labeled"})
    assert out["info"]["demos"] == {"self": 2} and out["metric"]["calls"] == 0
    assert rt.bridge.resources.get("lm").lm.history == []  # type: ignore[attr-defined]


def test_cancel_stops_bootstrapping_at_the_next_example() -> None:
    import dspy

    from runtimes.core import CallContext
    from runtimes.dspy import optimize
    from runtimes.wire.errors import Cancelled

    ctx = CallContext(call_id="c", command="common:execute_resource")
    ctx.cancel()  # DSPy's optimizer catches Exception per example; cancel must still get out
    lm = dspy.utils.DummyLM([{"answer": a["answer"]} for a in TRAIN])
    trainset = [dspy.Example(**ex).with_inputs("question") for ex in TRAIN]
    metric = optimize.ProgressMetric("exact_match", None, ["answer"], len(trainset), ctx)
    with pytest.raises(Cancelled):
        optimize.compile_program("BootstrapFewShot", {"max_errors": 100}, metric,
                                 dspy.Predict("question -> answer"), trainset, lm)
    assert len(lm.history) == 1 and metric.calls == 0


@pytest.mark.parametrize("config, needle", [
    ({"optimizer": "MIPROv2"}, "not supported"),
    ({"metric": "lambda a, b: True"}, "not supported"),
    ({"optimizer_args": {"teacher_settings": {}}}, "does not take 'teacher_settings'"),
    ({"optimizer_args": {"max_rounds": "2"}}, "non-negative number"),
    ({"metric_fields": ["question"]}, "metric_fields"),
    ({"trainset": "p"}, "not 'dataset'"),
])
def test_bad_optimization_config(rt: Runtime, config: dict[str, Any], needle: str) -> None:
    _optimizable(rt, [])
    err = rt.fail("common:create_resource", {"program": "p", "trainset": "train", **config}, "o", "optimization")
    assert err.code == "INVALID_ARGUMENT" and needle in err.message


@pytest.mark.parametrize("config, needle", [
    ({"examples": [], "inputs": ["question"]}, "must not be empty"),
    ({"examples": [{"answer": "1"}], "inputs": ["question"]}, "lacks input field(s): question"),
    ({"examples": [{"question": "1"}], "inputs": ["question"]}, "no label"),
])
def test_bad_dataset(rt: Runtime, config: dict[str, Any], needle: str) -> None:
    err = rt.fail("common:create_resource", config, "d", "dataset")
    assert err.code == "INVALID_ARGUMENT" and needle in err.message


def test_program_state_from_a_client_is_restricted(rt: Runtime) -> None:
    rt.create("lm", "lm", dummy([]))
    state = {"demos": [], "signature": {"instructions": "x", "fields": []}, "traces": [], "train": [],
             "callbacks": ["evil"]}
    err = rt.fail("common:create_resource", {"signature": "q -> a", "lm": "lm", "state": state}, "p", "program")
    assert err.code == "INVALID_ARGUMENT" and "unexpected key(s): callbacks" in err.message


def test_reset_drops_everything(rt: Runtime) -> None:
    rt.ok("dspy:configure_lm", dummy([]))
    rt.create("signature", "s", {"signature": "q -> a"})
    rt.create("program", "p", {"signature": "s"})
    out = rt.ok("dspy:reset")
    assert {d["resource_id"] for d in out["deleted"]} == {"s", "p"} and out["default_lm_cleared"]
    assert rt.ok("common:list_resources") == {"resources": []}
    assert rt.fail("common:execute_resource", {"q": "x"}, "p").code == "NOT_FOUND"
    assert rt.ok("dspy:stats")["default_lm"] is None


# -- keys and secrets ------------------------------------------------------------------------------
def test_missing_key_names_the_secret(rt: Runtime) -> None:
    err = rt.fail("common:create_resource", {"model": "openai/gpt-4o-mini"}, "lm", "lm")
    assert err.code == "FAILED_PRECONDITION" and "'OPENAI_API_KEY'" in err.message
    err = rt.fail("dspy:configure_lm", {"model": "anthropic/claude-x", "api_key_secret": "TEAM_KEY"})
    assert err.code == "FAILED_PRECONDITION" and "'TEAM_KEY'" in err.message
    assert err.details["secret"] == "TEAM_KEY"


def test_lm_config_the_model_refuses_is_invalid_argument() -> None:
    rt = Runtime({"OPENAI_API_KEY": KEY})
    err = rt.fail("common:create_resource", {"model": "openai/o1", "temperature": 0.5}, "lm", "lm")
    assert err.code == "INVALID_ARGUMENT" and "temperature=1.0" in err.message and KEY not in err.message
    err = rt.fail("common:create_resource", {"model": "openai/gpt-4o-mini", "answers": []}, "lm", "lm")
    assert err.code == "INVALID_ARGUMENT" and "only apply to provider 'dummy'" in err.message


def test_missing_key_error_does_not_leak_other_secrets() -> None:
    rt = Runtime({"OPENAI_API_KEY": KEY})
    err = rt.fail("common:create_resource", {"model": "openai/gpt-4o-mini", "api_key_secret": "OTHER"}, "l", "lm")
    assert "'OTHER'" in err.message and KEY not in err.message


def test_inline_api_key_is_refused_without_echo(rt: Runtime) -> None:
    err = rt.fail("common:create_resource", {"model": "openai/gpt-4o-mini", "api_key": KEY}, "lm", "lm")
    assert err.code == "INVALID_ARGUMENT" and "api_key_secret" in err.message
    assert KEY not in err.flat()


@pytest.fixture
def echoing_provider() -> Iterator[str]:
    """A local stand-in for an OpenAI-style API that rejects the key and echoes it."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            sent = self.headers.get("authorization", "").removeprefix("Bearer ")
            body = json.dumps({"error": {
                "message": f"Incorrect API key provided: {sent}. Masked: {MASKED}",
                "type": "invalid_request_error", "code": "invalid_api_key"}}).encode()
            self.send_response(401)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _leaks(text: str) -> bool:
    return KEY in text or KEY[8:20] in text or MASKED in text


def test_key_never_appears_in_replies_errors_or_logs(echoing_provider: str) -> None:
    rt = Runtime({"OPENAI_API_KEY": KEY})
    lm_cfg = {"model": "openai/gpt-4o-mini", "temperature": 0.0, "max_tokens": 64,
              "api_base": echoing_provider, "num_retries": 0, "cache": False}
    info = rt.create("lm", "lm", lm_cfg)["info"]
    assert info == {"model": "openai/gpt-4o-mini", "provider": "openai", "temperature": 0.0, "max_tokens": 64,
                    "api_key_secret": "OPENAI_API_KEY"}
    rt.ok("dspy:configure_lm", lm_cfg)
    rt.create("program", "p", {"signature": "question -> answer", "lm": "lm"})
    err = rt.fail("common:execute_resource", {"question": "hi"}, "p")
    assert err.code == "FRAMEWORK_ERROR"
    assert err.flat().startswith("dspy.utils.exceptions.LMAuthError: ")
    assert "Incorrect API key provided: [redacted]" in err.flat()
    _, _, final = rt.stream("p", {"question": "hi"})
    assert isinstance(final, MLBridgeError) and final.code == "FRAMEWORK_ERROR"
    # DSPy's optimizer logs each failed example with the provider's message.
    rt.create("dataset", "train", {"examples": TRAIN[:2], "inputs": ["question"]})
    rt.create("optimization", "opt", {"program": "p", "trainset": "train",
                                      "optimizer_args": {"max_errors": 5}})
    records: list[str] = []
    grab = logging.Handler(logging.ERROR)
    grab.emit = lambda record: records.append(grab.format(record))  # type: ignore[method-assign]
    dspy_logger = logging.getLogger("dspy")  # DSPy's loggers do not propagate to the root
    dspy_logger.addHandler(grab)
    try:
        rt.stream("opt")
    finally:
        dspy_logger.removeHandler(grab)
    assert any("Incorrect API key provided: [redacted]" in r for r in records), records
    for cmd in ("common:describe", "common:list_resources", "common:stats", "dspy:stats"):
        rt.ok(cmd)
    rt.ok("common:get_resource", {"resource_id": "lm"})
    assert not any(_leaks(s) for s in rt.seen), [s for s in rt.seen if _leaks(s)]
    assert not any(_leaks(r) for r in records)


# -- over gRPC, in a runtime subprocess --------------------------------------------------------------
@pytest.fixture
def runtime_proc() -> Iterator[tuple[pb_grpc.RuntimeStub, subprocess.Popen[str]]]:
    # A short directory: unix socket paths are capped near 108 bytes.
    with tempfile.TemporaryDirectory(prefix="mlbdspy", dir="/tmp" if os.path.isdir("/tmp") else None) as tmp:
        yield from _serve(Path(tmp) / "s.sock")


def _serve(sock: Path) -> Iterator[tuple[pb_grpc.RuntimeStub, subprocess.Popen[str]]]:
    env = {**os.environ, "MLBRIDGE_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen([sys.executable, "-m", "runtimes.core", "--bridge", "dspy", "--socket", str(sock)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    channel = grpc.insecure_channel(f"unix://{sock}")
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "runtime did not start"
            time.sleep(0.05)
        grpc.channel_ready_future(channel).result(timeout=30)
        yield pb_grpc.RuntimeStub(channel), proc
    finally:
        channel.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _call(stub: pb_grpc.RuntimeStub, command: str, args: dict[str, Any], rid: str = "",
          rtype: str = "") -> pb.CallReply:
    return stub.Call(pb.CallRequest(command=command, args_json=json.dumps(args).encode(), resource_id=rid,
                                    resource_type=rtype), timeout=60)


def _stream(stub: pb_grpc.RuntimeStub, rid: str, inputs: dict[str, Any]) -> list[pb.StreamEvent]:
    req = pb.CallRequest(command="common:execute_resource", args_json=json.dumps(inputs).encode(), resource_id=rid)
    return list(stub.CallStream(req, timeout=60))


def test_over_grpc_streaming_optimization_and_no_key_in_output(
        runtime_proc: tuple[pb_grpc.RuntimeStub, subprocess.Popen[str]], echoing_provider: str) -> None:
    stub, proc = runtime_proc
    stub.Configure(pb.ConfigureRequest(tenant="t1", secrets={"OPENAI_API_KEY": KEY}), timeout=30)
    desc = stub.Describe(pb.DescribeRequest(), timeout=30)
    assert desc.bridge == "dspy" and desc.framework_version
    replies: list[bytes] = [desc.SerializeToString()]

    def ok(reply: pb.CallReply) -> Any:
        replies.append(reply.SerializeToString())
        assert reply.ok, reply.error.message
        return json.loads(reply.result_json)

    ok(_call(stub, "common:create_resource", dummy([{"answer": "streamed over grpc"}], stream_tokens=True),
             "tok", "lm"))
    ok(_call(stub, "common:create_resource", {"signature": "question -> answer", "lm": "tok"}, "p", "program"))
    events = _stream(stub, "p", {"question": "hi"})
    replies += [e.SerializeToString() for e in events]
    chunks = [json.loads(e.chunk.data_json) for e in events if e.HasField("chunk")]
    assert "".join(c["text"] for c in chunks if c["type"] == "token") == "streamed over grpc"
    assert events[-1].HasField("final") and json.loads(events[-1].final.result_json) == {
        "answer": "streamed over grpc"}

    answers = [{"answer": a["answer"]} for a in TRAIN]
    ok(_call(stub, "common:create_resource", dummy(answers), "lm", "lm"))
    ok(_call(stub, "common:create_resource", {"signature": "question -> answer", "lm": "lm"}, "q", "program"))
    ok(_call(stub, "common:create_resource", {"examples": TRAIN, "inputs": ["question"]}, "train", "dataset"))
    ok(_call(stub, "common:create_resource", {"program": "q", "trainset": "train"}, "opt", "optimization"))
    events = _stream(stub, "opt", {"program_id": "q2"})
    replies += [e.SerializeToString() for e in events]
    steps = [(e.progress.step, e.progress.total) for e in events if e.HasField("progress")]
    assert steps == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4), (4, 4)]
    assert json.loads(events[-1].final.result_json)["program_id"] == "q2"

    # A provider error that echoes the key: neither the reply nor the runtime's log may hold it.
    bad = {"model": "openai/gpt-4o-mini", "api_base": echoing_provider, "num_retries": 0, "cache": False}
    ok(_call(stub, "common:create_resource", bad, "bad", "lm"))
    ok(_call(stub, "common:create_resource", {"signature": "question -> answer", "lm": "bad"}, "pb", "program"))
    ok(_call(stub, "common:create_resource", {"program": "pb", "trainset": "train",
                                              "optimizer_args": {"max_errors": 10}}, "ob", "optimization"))
    events = _stream(stub, "ob", {})
    replies += [e.SerializeToString() for e in events]
    reply = _call(stub, "common:execute_resource", {"question": "hi"}, "pb")
    replies.append(reply.SerializeToString())
    assert not reply.ok and reply.error.code == "FRAMEWORK_ERROR" and "[redacted]" in reply.error.message
    proc.terminate()
    log = proc.communicate(timeout=30)[0]
    assert "Failed to run or to evaluate example" in log  # DSPy did log the provider's error...
    assert not _leaks(log)  # ...with the key redacted
    assert not any(_leaks(r.decode("utf-8", "replace")) for r in replies)
