"""The langchain bridge in hardened docker workers, through the public API and the Python adapter.

Tenant ``alice`` has an egress allowlist for one OpenAI-compatible stub and
a key for it (a policy secret from this process's environment); ``bob`` has
neither. Both stubs listen on the docker bridge's gateway address (this
machine's ``docker0``): the egress proxy, on the host, connects to them for
an allowed worker; nothing else leaves a worker.

Network rule: every connection here goes to a listener this module starts on
the docker bridge address, or to the orchestrator on loopback.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator import MLBridge, NotFound, PermissionDenied, Unavailable
from orchestrator.client.langchain_adapter import LangChainAdapter
from tests.harness import Background, ServerThread, make_config
from tests.unit.test_langchain_bridge import ADD_TOOL, OpenAIStub

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TOKENS = {"alice": "alice-lc-token-5e1f0c9a7b", "bob": "bob-lc-token-2d8e6f4a1c"}
KEY = "sk-local-Lc9StubOnlyKey-7781"
BRIDGES = {"langchain": {"runtime": "langchain", "pool_size": 1, "call_timeout_s": 60, "cancel_grace_s": 2,
                         "secrets": ["LOCAL_KEY"],
                         "limits": {"cpus": 1.0, "memory": "768m", "pids": 256, "tmpfs_size": "16m"}}}


def _digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture(scope="module")
def dk() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, dk: docker.DockerClient) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("lcdocker")
    gateway = dk.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]
    allowed = OpenAIStub(gateway, tokens=["Tokens", " through", " the", " egress", " proxy"], gap_s=0.05)
    other = OpenAIStub(gateway)
    policy = tmp / "policy.yaml"
    policy.write_text(f"""version: 1
defaults:
  bridges: [langchain]
  rules: [{{name: all, effect: allow}}]
tenants:
  alice:
    tokens: ["{_digest(TOKENS['alice'])}"]
    network: {{langchain: {{allowlist: ["{gateway}:{allowed.port}"]}}}}
    secrets: {{langchain: {{LOCAL_KEY: {{env: TEST_LANGCHAIN_LOCAL_KEY}}}}}}
  bob:
    tokens: ["{_digest(TOKENS['bob'])}"]
""")
    policy.chmod(0o600)
    audit = tmp / "audit" / "audit.jsonl"
    mp = pytest.MonkeyPatch()
    mp.setenv("TEST_LANGCHAIN_LOCAL_KEY", KEY)
    cfg = make_config(tmp, backend="docker", bridges=BRIDGES, default_bridge="langchain", policy=str(policy),
                      audit_log=str(audit))
    try:
        with ServerThread(cfg) as srv:
            yield {"srv": srv, "allowed": allowed, "other": other, "audit": audit, "gateway": gateway}
    finally:
        mp.undo()
        allowed.close()
        other.close()


def connect(env: dict[str, Any], tenant: str) -> MLBridge:
    return MLBridge.connect(env["srv"].target, token=TOKENS[tenant], timeout=90)


def adapter(mb: MLBridge) -> LangChainAdapter:
    lc = mb.get_adapter("langchain")
    assert isinstance(lc, LangChainAdapter)
    return lc


def _timed(events: Iterator[Any]) -> list[tuple[float, Any]]:
    return [(time.monotonic(), ev) for ev in events]


def test_declarative_and_code_chains_invoke_batch_and_stream(env: dict[str, Any]) -> None:
    with connect(env, "alice") as mb:
        lc = adapter(mb)
        model = lc.create_model("fake", responses=["one two three four five six"], cycle=True, delay_s=0.05)
        prompt = lc.create_prompt("Count for {who}")
        declarative = lc.create_chain(prompt=prompt, model=model, parser="str")
        code = lc.create_chain(code=("from langchain_core.output_parsers import StrOutputParser\n"
                                     "def build(resources):\n"
                                     "    return resources.prompt(PROMPT) | resources.model(MODEL) | StrOutputParser()\n"
                                     ).replace("PROMPT", repr(prompt)).replace("MODEL", repr(model)))
        for chain in (declarative, code):
            assert lc.invoke(chain, {"who": "Ada"}) == "one two three four five six"
            assert lc.batch(chain, ["a", "b", "c", "d"], max_concurrency=2) == ["one two three four five six"] * 4
            timed = _timed(lc.stream(chain, "Ada"))
            tokens = [(t, ev.data["text"]) for t, ev in timed if ev.kind == "chunk" and ev.data["type"] == "token"]
            assert [text for _, text in tokens] == ["one ", "two ", "three ", "four ", "five ", "six"]
            assert timed[-1][1].kind == "result" and timed[-1][1].data == {"output": "one two three four five six"}
            # Separate events as generated, not one burst at the end: the first arrives well before the result.
            assert timed[-1][0] - tokens[0][0] >= 0.15
        assert lc.stats()["batches"] == 2


def test_agent_uses_a_code_tool_and_a_client_tool(env: dict[str, Any]) -> None:
    calls: list[str] = []

    def order_status(order: str) -> str:
        """The shipping status of an order, from the caller's own database."""
        calls.append(order)
        return f"order {order} left the warehouse"

    with connect(env, "alice") as mb:
        lc = adapter(mb)
        add = lc.create_tool(ADD_TOOL)
        model = lc.create_model("fake", responses=[
            {"tool_calls": [{"name": "add", "args": {"a": 19, "b": 23}},
                            {"name": "order_status", "args": {"order": "B12"}}]},
            "The total is {tool:add} and {tool:order_status}."])
        agent = lc.create_agent(model, tools=[add, order_status], system_prompt="Use the tools.")
        events = list(lc.stream(agent, "Add 19 and 23, and where is B12?"))
        assert calls == ["B12"]
        final = events[-1].data
        assert final["output"] == "The total is 42 and order B12 left the warehouse."
        ends = {e.data["tool"]: e.data["output"] for e in events if e.kind == "chunk" and e.data["type"] == "tool_end"}
        assert ends == {"add": "42", "order_status": "order B12 left the warehouse"}
        assert [e.data["kind"] for e in events if e.kind == "request"] == ["tool_call"]


def test_memory_keeps_context_across_turns_and_a_docker_kill(env: dict[str, Any], dk: docker.DockerClient) -> None:
    gate, waiting = threading.Event(), threading.Event()
    gate.set()

    def remember(fact: str) -> str:
        """Store a fact in the caller's notebook."""
        if not gate.is_set():
            waiting.set()
            gate.wait(30)
        return "noted"

    srv = env["srv"]
    with connect(env, "alice") as mb:
        lc = adapter(mb)
        model = lc.create_model("fake", responses=[
            {"tool_calls": [{"name": "remember", "args": {"fact": "x"}}]}, "heard: {humans}"], cycle=True)
        memory = lc.create_memory()
        agent = lc.create_agent(model, tools=[remember], memory=memory)
        assert lc.invoke(agent, "my name is Ada", thread_id="conv")["output"] == "heard: my name is Ada"
        assert lc.invoke(agent, "I live in Paris", thread_id="conv")["output"] == \
            "heard: my name is Ada | I live in Paris"
        # The third turn is under way (its client tool is being answered) when the container is killed.
        gate.clear()
        with Background(lambda: lc.invoke(agent, "what do you know?", thread_id="conv")) as turn:
            assert waiting.wait(30), "the third turn never called its client tool"
            worker = srv.orch.pools["langchain"].claimed("alice")[0]
            dk.containers.get(worker.handle.ref).kill()
            gate.set()  # the client tool answers now, to a call whose worker is gone
            err = turn.error(60)
        assert isinstance(err, Unavailable), err  # WORKER_DIED: the turn did not finish
        # Retried on a fresh worker: both finished turns are there, the broken one is not.
        out = lc.invoke(agent, "what do you know?", thread_id="conv")
        assert out["output"] == "heard: my name is Ada | I live in Paris | what do you know?"
        assert srv.orch.pools["langchain"].claimed("alice")[0].id != worker.id
        history = mb.execute_resource(memory, {"action": "get", "thread_id": "conv"})["messages"]
        assert [m["content"] for m in history if m["type"] == "human"] == [
            "my name is Ada", "I live in Paris", "what do you know?"]
        env["alice_ids"] = [agent, memory, model]


def test_another_tenant_sees_nothing(env: dict[str, Any]) -> None:
    with connect(env, "alice") as mb:
        mine = [r["resource_id"] for r in mb.list_resources("langchain")]
        ids = env.get("alice_ids") or mine[:3]
        assert ids and set(ids) <= set(mine)
    with connect(env, "bob") as mb:
        assert mb.list_resources("langchain") == []
        for rid in [*ids, "no-such-resource"]:
            with pytest.raises(NotFound) as missing:
                mb.execute_resource(rid, {"input": "hi"})
            assert str(missing.value) == f"NOT_FOUND: resource {rid!r} not found"
            with pytest.raises(NotFound) as missing:
                list(mb.stream_resource(rid, {"input": "hi"}))
            assert str(missing.value) == f"NOT_FOUND: resource {rid!r} not found"
            with pytest.raises(NotFound):
                mb.delete_resource(rid)


def _egress(env: dict[str, Any], port: int) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in Path(env["audit"]).read_text().splitlines()]
    return [r for r in records if r["event"] == "egress" and r["extra"]["target"] == f"{env['gateway']}:{port}"]


def test_openai_compatible_provider_through_the_egress_proxy(env: dict[str, Any]) -> None:
    allowed, other = env["allowed"], env["other"]
    config = {"model": "stub-model", "base_url": allowed.url, "api_key_secret": "LOCAL_KEY", "max_retries": 0}
    with connect(env, "alice") as mb:
        lc = adapter(mb)
        model = lc.create_model("openai", **config)
        timed = _timed(lc.stream(model, "Say something"))
        tokens = [ev.data["text"] for _, ev in timed if ev.kind == "chunk" and ev.data["type"] == "token"]
        assert tokens == ["Tokens", " through", " the", " egress", " proxy"]
        assert timed[-1][1].data["output"]["content"] == "Tokens through the egress proxy"
        assert allowed.requests[-1]["authorization"] == f"Bearer {KEY}"
        assert allowed.requests[-1]["body"]["stream"] is True
        decisions = _egress(env, allowed.port)
        assert decisions and decisions[-1]["decision"] == "allow" and decisions[-1]["tenant"] == "alice"
        assert decisions[-1]["bridge"] == "langchain" and decisions[-1]["rule"] == "egress-allowlist"
        # The same tenant, a target off its allowlist: the proxy refuses, and says so in the audit log.
        off = lc.create_model("openai", **{**config, "base_url": other.url})
        with pytest.raises(PermissionDenied) as refused:
            lc.invoke(off, "hi")
        assert refused.value.details["reason"] == "PROVIDER_FORBIDDEN" and "allowlist" in str(refused.value)
        assert other.requests == [] and _egress(env, other.port)[-1]["decision"] == "deny"
    before = len(allowed.requests)
    with connect(env, "bob") as mb:
        lc = adapter(mb)
        model = lc.create_model("openai", **{**config, "api_key_secret": None})
        with pytest.raises(Unavailable) as unreachable:
            lc.invoke(model, "hi")
        assert unreachable.value.details["reason"] == "PROVIDER_UNREACHABLE"
    assert len(allowed.requests) == before
    assert not [r for r in _egress(env, allowed.port) if r["tenant"] == "bob"]
    assert KEY not in Path(env["audit"]).read_text()
