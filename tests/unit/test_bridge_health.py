"""``common:health``: the hook's contract through the real dispatcher, and each shipped bridge's checks."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from runtimes.core import Bridge
from runtimes.core.dispatch import Dispatcher, Outcome
from runtimes.mock import MockBridge
from runtimes.mock.bridge import UNHEALTHY_ENV
from runtimes.wire import spans as wire_spans
from runtimes.wire.proto import runtime_pb2 as pb
from runtimes.wire.proto import runtime_pb2_grpc as pb_grpc
from tests.harness import InProcessRuntime


class Hooked(Bridge):
    name = "hooked"
    answer: Any = {}
    delay = 0.0

    def health(self) -> Any:
        if self.delay:
            time.sleep(self.delay)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def health(bridge: Bridge, deadline_s: float = 0) -> Outcome:
    d = Dispatcher(bridge, max_message_bytes=1 << 20)

    async def go() -> Outcome:
        ctx = d.make_context(call_id=uuid.uuid4().hex, command="common:health",
                             deadline_unix_ms=int((time.time() + deadline_s) * 1000) if deadline_s else 0)
        return await d.run(ctx, "{}")

    return asyncio.run(go())


def report(bridge: Bridge) -> dict[str, Any]:
    out = health(bridge)
    assert out.error is None, out.error.flat()
    value: dict[str, Any] = json.loads(out.result)
    assert set(value) == {"ok", "bridge", "checks"}
    for check in value["checks"].values():
        assert set(check) == {"ok", "detail"} and isinstance(check["ok"], bool) and isinstance(check["detail"], str)
    return value


# -- the contract ----------------------------------------------------------------------------------
def test_a_bridge_without_checks_is_healthy() -> None:
    assert report(Hooked()) == {"ok": True, "bridge": "hooked", "checks": {}}


def test_checks_are_reported_and_one_failure_makes_the_worker_unhealthy() -> None:
    b = Hooked()
    b.answer = {"db": (True, "fine"), "gpu": (False, "x" * 1000)}
    r = report(b)
    assert r["ok"] is False
    assert r["checks"]["db"] == {"ok": True, "detail": "fine"}
    assert r["checks"]["gpu"] == {"ok": False, "detail": "x" * 300}
    b.answer = {"db": (True, "fine")}
    assert report(b)["ok"] is True


@pytest.mark.parametrize("answer, needle", [
    (RuntimeError("the hook broke"), "builtins.RuntimeError: the hook broke"),
    ([("a", True)], "builtins.TypeError: health() must return a dict"),
    ({"a": True}, "builtins.TypeError"),
    ({"a": (True, "x", "extra")}, "builtins.ValueError"),
])
def test_a_broken_hook_is_a_failing_check_never_an_error_reply(answer: Any, needle: str) -> None:
    b = Hooked()
    b.answer = answer
    r = report(b)
    assert r["ok"] is False and r["checks"]["health_hook"]["ok"] is False
    assert r["checks"]["health_hook"]["detail"].startswith(needle)


def test_health_runs_in_a_thread_and_honours_the_deadline() -> None:
    b = Hooked()
    b.delay = 1.5
    started = time.monotonic()
    out = health(b, deadline_s=0.2)
    assert out.error is not None and out.error.code == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 1.5
    b.delay = 0.05
    assert json.loads(health(b).result)["ok"] is True


# -- mock ----------------------------------------------------------------------------------------------
def test_mock_is_unhealthy_while_its_env_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UNHEALTHY_ENV, raising=False)
    assert report(MockBridge()) == {"ok": True, "bridge": "mock", "checks": {"mock": {"ok": True, "detail": "ok"}}}
    monkeypatch.setenv(UNHEALTHY_ENV, "disk on fire")
    assert report(MockBridge()) == {"ok": False, "bridge": "mock",
                                    "checks": {"mock": {"ok": False, "detail": "disk on fire"}}}
    monkeypatch.setenv(UNHEALTHY_ENV, "")
    assert report(MockBridge())["ok"] is True


@pytest.fixture
def mock_proc() -> Iterator[pb_grpc.RuntimeStub]:
    """A mock runtime process started with MLBRIDGE_MOCK_UNHEALTHY in its environment, over its socket."""
    with tempfile.TemporaryDirectory(prefix="mlbhealth", dir="/tmp" if os.path.isdir("/tmp") else None) as tmp:
        sock = Path(tmp) / "s.sock"
        env = {**os.environ, UNHEALTHY_ENV: "set by the config's env", "MLBRIDGE_LOG_LEVEL": "WARNING"}
        proc = subprocess.Popen([sys.executable, "-m", "runtimes.core", "--bridge", "mock", "--socket", str(sock)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        channel = grpc.insecure_channel(f"unix://{sock}")
        try:
            deadline = time.monotonic() + 60
            while not sock.exists():
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "runtime did not start"
                time.sleep(0.05)
            grpc.channel_ready_future(channel).result(timeout=30)
            yield pb_grpc.RuntimeStub(channel)
        finally:
            channel.close()
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_over_grpc_health_metrics_and_spans(mock_proc: pb_grpc.RuntimeStub) -> None:
    reply = mock_proc.Call(pb.CallRequest(command="common:health", args_json="{}"), timeout=30)
    assert reply.ok and json.loads(reply.result_json) == {
        "ok": False, "bridge": "mock", "checks": {"mock": {"ok": False, "detail": "set by the config's env"}}}
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    reply = mock_proc.Call(pb.CallRequest(command="mock:observe", args_json='{"value": 3, "tokens_out": 2}',
                                          traceparent=tp), timeout=30)
    assert reply.ok
    md = dict(reply.metadata)
    assert {s["name"] for s in json.loads(md["mlbridge-metrics"])["series"]} == {"mock_values", "mock_observed"}
    assert json.loads(md["mlbridge-usage"]) == {"tokens_in": 0, "tokens_out": 2}
    decoded = wire_spans.decode(md["mlbridge-spans"])  # the handler span of the traced call
    assert decoded is not None and decoded[0]["start_ns"] <= decoded[0]["end_ns"] and decoded[0]["error"] == ""
    desc = mock_proc.Describe(pb.DescribeRequest(), timeout=30)
    assert {"common:health", "common:profile", "mock:observe"} <= {c.name for c in desc.commands}


# -- the shipped bridges -------------------------------------------------------------------------------------
def test_custom_checks_its_interpreter_and_scratch(tmp_path: Path) -> None:
    from runtimes.custom import CustomBridge
    from runtimes.custom.settings import CustomSettings

    rt = InProcessRuntime(CustomBridge(CustomSettings(scratch=str(tmp_path / "scratch"))))
    started = time.monotonic()
    r = rt.ok("common:health")
    assert time.monotonic() - started < 1
    assert r["ok"] is True and set(r["checks"]) == {"interpreter", "scratch"}
    assert "main returned 42" in r["checks"]["interpreter"]["detail"]
    (tmp_path / "scratch").rmdir()
    (tmp_path / "scratch").write_text("a file where the scratch directory was")
    r = rt.ok("common:health")
    assert r["ok"] is False and r["checks"]["scratch"]["ok"] is False and r["checks"]["interpreter"]["ok"]
    assert r["checks"]["scratch"]["detail"].startswith("FAILED_PRECONDITION: the scratch directory")


def test_dspy_resolves_the_default_lm_offline_and_predicts_with_dummy_lm() -> None:
    pytest.importorskip("dspy")
    from runtimes.dspy import DSPyBridge

    rt = InProcessRuntime(DSPyBridge(), secrets={"OPENAI_API_KEY": "sk-health-secret-0001"})
    started = time.monotonic()
    r = rt.ok("common:health")
    assert time.monotonic() - started < 1
    assert r["ok"] is True and set(r["checks"]) == {"dummy_predict"}  # no default LM yet
    assert "answered 'ok'" in r["checks"]["dummy_predict"]["detail"]
    rt.ok("dspy:configure_lm", {"model": "openai/gpt-4o-mini"})
    r = rt.ok("common:health")
    assert r["ok"] is True and r["checks"]["default_lm"]["ok"] is True
    assert "gpt-4o-mini" in r["checks"]["default_lm"]["detail"]
    assert "sk-health" not in json.dumps(r)
    rt.ok("dspy:configure_lm", {"provider": "dummy"})
    assert rt.ok("common:health")["checks"]["default_lm"] == {"ok": True, "detail": "dummy LM (offline)"}


def test_dspy_an_lm_dspy_cannot_route_fails_its_check() -> None:
    pytest.importorskip("dspy")
    from runtimes.dspy import DSPyBridge
    from runtimes.dspy.bridge import resolve_lm

    class Broken:
        model = "nowhere/model"
        _engine_spec = "lm15"
        kwargs: dict[str, Any] = {}
        model_type = "chat"

    ok, detail = resolve_lm(Broken())
    assert ok is False and detail.startswith("nowhere/model: ")
    rt = InProcessRuntime(DSPyBridge())
    rt.bridge.default_lm = Broken()  # type: ignore[attr-defined]
    r = rt.ok("common:health")
    assert r["ok"] is False and r["checks"]["default_lm"]["ok"] is False and r["checks"]["dummy_predict"]["ok"]


def test_langchain_runs_its_offline_chain_without_counting_it() -> None:
    pytest.importorskip("langchain_core")
    from runtimes.langchain import LangChainBridge

    rt = InProcessRuntime(LangChainBridge())
    started = time.monotonic()
    r = rt.ok("common:health")
    assert time.monotonic() - started < 1
    assert r["ok"] is True and r["checks"]["fake_chain"]["ok"] is True
    assert "answered 'ok'" in r["checks"]["fake_chain"]["detail"]
    assert rt.ok("langchain:stats")["invocations"] == 0 and "mlbridge-metrics" not in rt.metadata

    def broken(ctx: Any, ref: Any) -> Any:
        raise RuntimeError("chain building broke")

    rt.bridge._runnable = broken  # type: ignore[attr-defined,method-assign]
    r = rt.ok("common:health")
    assert r["ok"] is False and "chain building broke" in r["checks"]["fake_chain"]["detail"]


def test_transformers_checks_torch_and_each_loaded_model() -> None:
    pytest.importorskip("transformers")
    import torch

    from runtimes.transformers import TransformersBridge
    from tests.tiny_models import grant_for, tiny_model

    grants = [grant_for(tiny_model(k), n) for n, k in
              (("gpt", "gpt2"), ("clf", "bert-classifier"), ("mlm", "bert-mlm"), ("tag", "bert-tagger"))]
    rt = InProcessRuntime(TransformersBridge(), models=grants)
    r = rt.ok("common:health")
    assert r["ok"] is True and set(r["checks"]) == {"torch"} and "4x4 matmul gave 64" in r["checks"]["torch"]["detail"]
    rt.create("model", "g", {"model": "gpt"})
    rt.create("pipeline", "p", {"task": "text-classification", "model": "clf"})
    rt.create("pipeline", "p2", {"task": "text-generation", "model_resource": "g"})  # the same model: once
    rt.create("model", "m", {"model": "mlm"})
    rt.create("model", "t", {"model": "tag"})
    started = time.monotonic()
    r = rt.ok("common:health")
    assert time.monotonic() - started < 1
    models = sorted(k for k in r["checks"] if k.startswith("model:"))
    assert len(models) == 3 and r["ok"] is True  # at most three, the smallest
    store = rt.bridge.resources
    loaded = {"gpt": store.get("g").model, "clf": store.get("p").pipe.model,  # type: ignore[attr-defined]
              "mlm": store.get("m").model, "tag": store.get("t").model}  # type: ignore[attr-defined]
    sizes = {name: sum(p.numel() for p in model.parameters()) for name, model in loaded.items()}
    smallest = sorted(sizes, key=lambda n: sizes[n])[:3]
    assert models == sorted(f"model:{n}" for n in smallest)

    victim = loaded[smallest[0]]

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("weights are gone")

    victim.forward = fail
    try:
        r = rt.ok("common:health")
    finally:
        del victim.forward
    check = r["checks"][f"model:{smallest[0]}"]
    assert r["ok"] is False and check["ok"] is False and "weights are gone" in check["detail"]
    assert smallest[0] in check["detail"]
    assert all(r["checks"][f"model:{n}"]["ok"] for n in smallest[1:])
    assert torch.is_grad_enabled()
