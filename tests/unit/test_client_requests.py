"""A running call asks its client (client tools), and the orchestrator keeps resource state across workers."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import AsyncMLBridge, FrameworkError, InvalidArgument, MLBridge
from tests.harness import ServerThread, make_config

ALICE, BOB = f"alice-{uuid.uuid4().hex}", f"bob-{uuid.uuid4().hex}"


def _digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


POLICY = f"""
version: 1
defaults:
  bridges: [mock]
  rules: [{{name: all, effect: allow}}]
  quotas: {{max_concurrent_calls: 1}}
tenants:
  alice: {{tokens: ["{_digest(ALICE)}"]}}
  bob: {{tokens: ["{_digest(BOB)}"]}}
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp("asks")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    policy.chmod(0o600)
    cfg = make_config(tmp, policy=str(policy), audit_log=str(tmp / "audit.jsonl"),
                      bridges={"mock": {"runtime": "mock", "pool_size": 1}})
    with ServerThread(cfg) as s:
        yield s


def _answering(mb: MLBridge, events: Iterator[Any], answer: Any) -> tuple[list[Any], Any]:
    seen, final = [], None
    for ev in events:
        seen.append(ev)
        if ev.kind == "request":
            assert ev.data["kind"] == "question"
            assert mb.answer(ev.call_id, ev.data["request_id"], answer(ev.data["data"]["question"]))
        elif ev.kind == "result":
            final = ev.data
    return seen, final


def test_streaming_call_asks_and_gets_the_clients_answers(srv: ServerThread) -> None:
    with MLBridge.connect(srv.target, token=ALICE) as mb:
        events = mb.call_stream("mock", "mock:ask", {"questions": ["two", "three"]})
        seen, final = _answering(mb, events, lambda q: {"two": 2, "three": 3}[q])
        assert final == {"answers": [2, 3]}
        kinds = [e.kind for e in seen]
        assert kinds == ["request", "chunk", "request", "chunk", "result"]  # in order, one at a time
    audit = (Path(srv.config.audit_log or "")).read_text()
    assert '"method":"Answer"' in audit  # answers are audited like the call they belong to


def test_async_handler_and_async_client(srv: ServerThread) -> None:
    async def go() -> Any:
        async with AsyncMLBridge.connect(srv.target, token=ALICE) as mb:
            async for ev in mb.call_stream("mock", "mock:ask_async", {"question": "name"}):
                if ev.kind == "request":
                    assert await mb.answer(ev.call_id, ev.data["request_id"], "ada")
                elif ev.kind == "result":
                    return ev.data
        return None

    import asyncio

    assert asyncio.run(go()) == {"answer": "ada"}


def test_client_error_reaches_the_handler_and_the_worker_goes_on(srv: ServerThread) -> None:
    with MLBridge.connect(srv.target, token=ALICE) as mb:
        events = mb.call_stream("mock", "mock:ask", {"questions": ["x"]})
        with pytest.raises(FrameworkError, match="the client could not answer the question request: no idea"):
            for ev in events:
                if ev.kind == "request":
                    mb.answer(ev.call_id, ev.data["request_id"], error="no idea")
        assert mb.call("mock", "mock:echo", {"ok": 1}) == {"ok": 1}


def test_asking_needs_a_stream_and_answers_need_a_waiting_call(srv: ServerThread) -> None:
    with MLBridge.connect(srv.target, token=ALICE) as mb:
        with pytest.raises(InvalidArgument, match="needs a streaming call"):
            mb.call("mock", "mock:ask", {"questions": ["x"]})
        assert mb.answer("no-such-call", "no-such-request", 1) is False
        with pytest.raises(InvalidArgument, match="not JSON-serialisable"):
            mb.answer("c", "r", object())


def test_another_tenant_cannot_answer(srv: ServerThread) -> None:
    call_id = uuid.uuid4().hex
    with MLBridge.connect(srv.target, token=ALICE) as alice, MLBridge.connect(srv.target, token=BOB) as bob:
        events = alice.call_stream("mock", "mock:ask", {"questions": ["who"]}, call_id=call_id)
        for ev in events:
            if ev.kind == "request":
                assert bob.answer(call_id, ev.data["request_id"], "bob") is False  # looks absent to bob
                assert alice.answer(call_id, ev.data["request_id"], "alice") is True
            elif ev.kind == "result":
                assert ev.data == {"answers": ["alice"]}


def test_resource_state_is_kept_across_workers(srv: ServerThread) -> None:
    with MLBridge.connect(srv.target, token=ALICE) as mb:
        rid = mb.create_resource("mock", "journal", {})
        assert mb.execute_resource(rid, {"entry": "one"}) == {"entries": ["one"]}
        assert mb.call("mock", "mock:note", {"journal": rid, "entry": "two"}) == {"entries": 2}
        stored = srv.orch.registry.get("alice", rid)
        assert stored is not None and stored.state == '{"entries":["one","two"]}'  # kept before the reply
        pool = srv.orch.pools["mock"]
        for worker in pool.claimed("alice"):
            srv.run(pool.retire(worker, "killed by the test"))
        # A fresh worker: the journal is re-created from its spec and its kept state.
        assert mb.execute_resource(rid, {"entry": "three"}) == {"entries": ["one", "two", "three"]}
        with MLBridge.connect(srv.target, token=BOB) as bob:
            from orchestrator import NotFound

            with pytest.raises(NotFound):
                bob.execute_resource(rid, {})


def test_commands_find_resources_their_dead_worker_held(srv: ServerThread) -> None:
    """A command (not only ExecuteResource) naming a resource works after its worker died, state included."""
    with MLBridge.connect(srv.target, token=ALICE) as mb:
        rid = mb.create_resource("mock", "journal", {})
        assert mb.call("mock", "mock:note", {"journal": rid, "entry": "a"}) == {"entries": 1}
        pool = srv.orch.pools["mock"]
        for worker in pool.claimed("alice"):
            srv.run(pool.retire(worker, "killed by the test"))
        assert mb.call("mock", "mock:note", {"journal": rid, "entry": "b"}) == {"entries": 2}
        (worker,) = pool.claimed("alice")
        assert worker.restored and srv.orch.registry.get("alice", rid).worker_id == worker.id  # type: ignore[union-attr]


def test_streamed_calls_keep_state_too(srv: ServerThread) -> None:
    with MLBridge.connect(srv.target, token=ALICE) as mb:
        rid = mb.create_resource("mock", "journal", {})
        events = list(mb.call_stream("mock", "mock:note", {"journal": rid, "entry": "streamed"}))
        assert events[-1].kind == "result" and events[-1].data == {"entries": 1}
        stored = srv.orch.registry.get("alice", rid)
        assert stored is not None and stored.state == '{"entries":["streamed"]}'
