"""DSPex's legacy commands, and the new resource API doing the same, through the real gRPC server.

The server comes from :func:`make_server`. Its backend is the fixture
parameter: ``MLBRIDGE_DSPEX_BACKENDS=process,docker`` runs the module on both;
process is the default. DummyLM answers offline; the one "provider" is a
local HTTP stub (loopback only).
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy as _dspy_required  # noqa: F401  (a hard requirement: missing setup fails, never skips)
import pytest

from orchestrator import AsyncMLBridge, InvalidArgument, MLBridge, NotFound, PermissionDenied  # noqa: E402
from orchestrator.client.dspy_adapter import DSPyAdapter  # noqa: E402
from orchestrator.compat.dspex import API_KEY_SECRET, LM_ID  # noqa: E402
from runtimes.wire.errors import ConfigError, PayloadTooLarge, QuotaExceeded  # noqa: E402
from tests.harness import ServerThread, make_config  # noqa: E402

KEY = "sk-dspex-Zq8TopSecretKeyValue-0042"
QA = {"inputs": ["question"], "outputs": ["answer"]}
TENANT = "default"  # the anonymous caller's tenant
BACKENDS = [b for b in os.environ.get("MLBRIDGE_DSPEX_BACKENDS", "process").split(",") if b]


def make_server(tmp: Path, backend: str = "process", extra_bridges: dict[str, Any] | None = None,
                **fields: Any) -> ServerThread:
    """An orchestrator serving a ``dspy`` bridge (the default bridge) on ``backend``; ``fields`` go to the config."""
    # The bundled model-metadata snapshot, so no worker tries to fetch it from the internet.
    bridge = {"runtime": "dspy", "pool_size": 1, "call_timeout_s": 120,
              "env": {"LITELLM_LOCAL_MODEL_COST_MAP": "true"}}
    return ServerThread(make_config(tmp, bridges={"dspy": bridge, **(extra_bridges or {})}, default_bridge="dspy",
                                    backend=backend, **fields))


@pytest.fixture(scope="module", params=BACKENDS)
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with make_server(tmp_path_factory.mktemp("dspex"), request.param) as s:
        yield s


@pytest.fixture()
def mb(srv: ServerThread) -> Iterator[MLBridge]:
    with MLBridge.connect(srv.target, timeout=120) as client:
        yield client


def legacy(mb: MLBridge, command: str, args: dict[str, Any] | None = None) -> Any:
    """A legacy call: it must warn, and its reply must name the replacement."""
    with pytest.warns(DeprecationWarning, match=f"^{command} is deprecated; use ") as caught:
        res = mb.call_detailed("", command, args)
    assert len(caught) == 1
    assert res.metadata["mlbridge-deprecated"] == str(caught[0].message)
    return res.result


def assert_no_key(srv: ServerThread, *texts: Any) -> None:
    """KEY is in none of ``texts``, no registry row, no file under the state dir or the worker dirs."""
    for text in texts:
        assert KEY not in (text if isinstance(text, str) else json.dumps(text)), text
    for rec in srv.orch.registry.list(TENANT):
        assert KEY not in rec.config + rec.info, rec
    roots = [Path(srv.config.state_dir), Path(srv.app.backend.sockets.root)]
    files = [f for root in roots for f in root.rglob("*") if f.is_file() and not f.is_socket()]
    assert any(f.name.startswith("registry.sqlite") for f in files)
    for f in files:
        assert KEY.encode() not in f.read_bytes(), f


def test_dspex_script_through_the_python_client(srv: ServerThread, mb: MLBridge) -> None:
    legacy(mb, "reset_state")
    seen: list[Any] = []

    pong = legacy(mb, "ping")
    assert pong["status"] == "ok" and pong["dspy_available"] is True and pong["mode"] == "mlbridge"
    assert abs(pong["timestamp"] - time.time()) < 60 and pong["worker_id"] and pong["uptime"] >= 0

    cfg = legacy(mb, "configure_lm", {"model": "dummy", "provider": "dummy", "api_key": KEY, "temperature": 0.0,
                                      "answers": [{"answer": "4"}, {"answer": "Paris"}, {"answer": "again"}]})
    assert cfg == {"status": "configured", "model": "dummy", "provider": "dummy", "temperature": 0.0}

    created = legacy(mb, "create_program", {"id": "qa", "signature": QA, "program_type": "predict"})
    assert created == {"program_id": "qa", "status": "created", "signature": QA, "program_type": "predict"}
    # DSPex-style field objects (their "type" is ignored, as DSPex did) and a generated id.
    rich = {"name": "QA", "description": "Answer briefly.",
            "inputs": [{"name": "question", "description": "a question", "type": "string"}],
            "outputs": [{"name": "answer", "type": "string"}]}
    gen = legacy(mb, "create_program", {"signature": rich})
    assert gen["program_id"].startswith("program_") and gen["program_type"] == "predict"

    before = time.time()
    out = legacy(mb, "execute_program", {"program_id": "qa", "inputs": {"question": "2+2?"}})
    assert out["program_id"] == "qa" and out["outputs"] == {"answer": "4"}
    assert before <= out["execution_time"] <= time.time() and out["duration_ms"] >= 0
    out = legacy(mb, "execute_program", {"program_id": "qa", "inputs": {"question": "capital of France?"}})
    assert out["outputs"] == {"answer": "Paris"}

    listed = legacy(mb, "list_programs")
    assert listed["total_count"] == 2
    by_id = {p["id"]: p for p in listed["programs"]}
    assert set(by_id) == {"qa", gen["program_id"]}
    assert by_id["qa"]["execution_count"] == 2 and by_id["qa"]["signature"] == QA
    assert by_id[gen["program_id"]]["signature"] == rich and by_id[gen["program_id"]]["last_executed"] is None
    assert set(by_id["qa"]) == {"id", "created_at", "execution_count", "last_executed", "signature"}

    info = legacy(mb, "get_program_info", {"program_id": "qa"})
    assert info["program_id"] == "qa" and info["signature"] == QA and info["execution_count"] == 2
    assert info["program_type"] == "predict" and info["last_executed"] >= out["execution_time"] - 1
    assert abs(info["created_at"] - time.time()) < 300

    stats = legacy(mb, "get_stats")
    assert stats["programs_count"] == 2 and stats["command_count"] == 9 and stats["error_count"] == 0
    assert stats["memory_usage"]["rss"] > 0 and stats["dspy"]["executions"] >= 2
    assert stats["dspy"]["default_lm"]["api_key_secret"] == API_KEY_SECRET  # the name, never the value
    seen += [pong, cfg, created, gen, out, listed, info, stats]

    # The new API sees the same resources; the LM spec names the secret only.
    resources = {r["resource_id"]: r for r in mb.list_resources("dspy")}
    assert {"qa", gen["program_id"], LM_ID} <= set(resources)
    lm_rec = srv.orch.registry.get(TENANT, LM_ID)
    assert lm_rec is not None and json.loads(lm_rec.config)["api_key_secret"] == API_KEY_SECRET
    assert mb.execute_resource("qa", {"question": "same program?"}) == {"answer": "again"}

    # Failures are errors (and are counted), never a success holding {"error": ...}.
    with pytest.raises(NotFound, match="Program not found: nope"):
        mb.call("", "execute_program", {"program_id": "nope", "inputs": {}})
    with pytest.raises(InvalidArgument, match="program_type 'react' is not supported"):
        mb.call("", "create_program", {"id": "r", "signature": QA, "program_type": "react"})
    assert legacy(mb, "delete_program", {"program_id": "qa"}) == {"program_id": "qa", "status": "deleted"}
    with pytest.raises(NotFound):
        mb.call("", "get_program_info", {"program_id": "qa"})
    assert "qa" not in {r["resource_id"] for r in mb.list_resources("dspy")}

    reset = legacy(mb, "reset_state")
    assert reset == {"status": "reset", "programs_cleared": 1, "commands_reset": 14, "errors_reset": 3}
    assert legacy(mb, "list_programs") == {"programs": [], "total_count": 0}
    # As in DSPex, the LM survives a reset; everything else of the tenant's dspy resources went.
    assert [r["resource_id"] for r in mb.list_resources("dspy")] == [LM_ID]
    legacy(mb, "configure_lm", {"provider": "dummy", "answers": [{"answer": "after reset"}]})
    legacy(mb, "create_program", {"id": "qa", "signature": "question -> answer"})
    assert legacy(mb, "execute_program", {"program_id": "qa", "inputs": {"question": "?"}})["outputs"] == {
        "answer": "after reset"}
    assert legacy(mb, "cleanup") == {"status": "cleaned", "programs_removed": 1}
    assert legacy(mb, "get_stats")["error_count"] == 0
    assert_no_key(srv, *seen, mb.stats(), mb.describe("dspy"), mb.list_resources())


def test_async_client_warns_too(srv: ServerThread) -> None:
    async def ping() -> Any:
        async with AsyncMLBridge.connect(srv.target, timeout=60) as amb:
            with pytest.warns(DeprecationWarning, match="^ping is deprecated; use Call"):
                return await amb.call("", "ping")

    assert asyncio.run(ping())["status"] == "ok"


def test_namespaced_calls_do_not_warn(mb: MLBridge) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = mb.call_detailed("", "dspy:stats")
    assert "mlbridge-deprecated" not in res.metadata and "resources" in res.result


def test_program_survives_a_replaced_worker(srv: ServerThread, mb: MLBridge) -> None:
    legacy(mb, "configure_lm", {"provider": "dummy", "answers": [{"answer": "restored"}]})
    legacy(mb, "create_program", {"id": "sturdy", "signature": QA})
    pool = srv.orch.pools["dspy"]
    (worker,) = pool.claimed(TENANT)
    srv.run(pool.retire(worker, "test: replace the worker"))
    # The program and LM are re-created from their specs, the LM is selected again.
    out = legacy(mb, "execute_program", {"program_id": "sturdy", "inputs": {"question": "again?"}})
    assert out["outputs"] == {"answer": "restored"}
    assert pool.claimed(TENANT)[0].id != worker.id
    legacy(mb, "delete_program", {"program_id": "sturdy"})


@pytest.fixture
def provider() -> Iterator[tuple[str, list[str]]]:
    """A local OpenAI-style endpoint that records the bearer token and answers 'Paris'."""
    tokens: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            tokens.append(self.headers.get("authorization", ""))
            content = "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"
            body = json.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": content}}],
                               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
            self.send_response(200)
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
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", tokens
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def process_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A process-backend server: only a process worker can reach the provider stub on the host's
    loopback (docker workers have no network at all)."""
    with make_server(tmp_path_factory.mktemp("dspex-key"), "process") as s:
        yield s


def test_api_key_reaches_the_provider_and_nothing_else(process_srv: ServerThread,
                                                       provider: tuple[str, list[str]]) -> None:
    srv = process_srv
    with MLBridge.connect(srv.target, timeout=120) as mb:
        _key_flow(srv, mb, provider)


def _key_flow(srv: ServerThread, mb: MLBridge, provider: tuple[str, list[str]]) -> None:
    url, tokens = provider
    cfg = legacy(mb, "configure_lm", {"model": "gpt-4o-mini", "provider": "openai", "api_key": KEY,
                                      "temperature": 0.0, "api_base": url, "num_retries": 0, "cache": False})
    assert cfg == {"status": "configured", "model": "gpt-4o-mini", "provider": "openai", "temperature": 0.0}
    legacy(mb, "create_program", {"id": "keyed", "signature": QA})
    out = legacy(mb, "execute_program", {"program_id": "keyed", "inputs": {"question": "capital of France?"}})
    assert out["outputs"] == {"answer": "Paris"}
    assert tokens == [f"Bearer {KEY}"]  # the key was used, by the worker, for the provider only
    replies = [cfg, out, legacy(mb, "get_program_info", {"program_id": "keyed"}), legacy(mb, "list_programs"),
               legacy(mb, "get_stats"), mb.call("dspy", "dspy:stats"), mb.call("dspy", "common:stats")]
    assert_no_key(srv, *replies, mb.stats(), mb.describe("dspy"), mb.list_resources())

    # The key lived in the worker only: a replaced worker cannot rebuild the LM, and says what to do.
    pool = srv.orch.pools["dspy"]
    (worker,) = pool.claimed(TENANT)
    srv.run(pool.retire(worker, "test: replace the worker"))
    with pytest.raises(ConfigError, match="call configure_lm again") as err:
        mb.call("", "execute_program", {"program_id": "keyed", "inputs": {"question": "again?"}})
    assert KEY not in str(err.value)
    legacy(mb, "configure_lm", {"model": "gpt-4o-mini", "provider": "openai", "api_key": KEY,
                                "api_base": url, "num_retries": 0, "cache": False})
    again = legacy(mb, "execute_program", {"program_id": "keyed", "inputs": {"question": "again?"}})
    assert again["outputs"] == {"answer": "Paris"} and tokens[-1] == f"Bearer {KEY}"
    legacy(mb, "reset_state")
    assert_no_key(srv, again)


def test_set_secret_takes_the_value_as_an_attachment_only(mb: MLBridge) -> None:
    with pytest.raises(InvalidArgument, match="attachment 'value'"):
        mb.call("dspy", "dspy:set_secret", {"name": "MY_KEY"})
    with pytest.raises(InvalidArgument, match="unexpected field 'value'"):
        mb.call("dspy", "dspy:set_secret", {"name": "MY_KEY", "value": KEY})
    with pytest.raises(InvalidArgument, match="must match"):
        mb.call("dspy", "dspy:set_secret", {"name": "../x"}, attachments={"value": b"v"})
    assert mb.call("dspy", "dspy:set_secret", {"name": "MY_KEY"}, attachments={"value": KEY.encode()}) == {
        "name": "MY_KEY", "set": True}


TRAIN = [{"question": "1+1?", "answer": "2"}, {"question": "2+2?", "answer": "4"},
         {"question": "3+3?", "answer": "6"}]


def test_new_api_does_the_same_and_optimizes(srv: ServerThread, mb: MLBridge) -> None:
    dspy = mb.get_adapter("dspy")
    assert isinstance(dspy, DSPyAdapter)
    assert dspy.configure_lm(provider="dummy", answers=[{"answer": "4"}])["default_lm"]["provider"] == "dummy"
    sig = dspy.create_signature("question -> answer", instructions="Answer briefly.")
    prog = dspy.create_program(sig, resource_id="new-qa")
    assert dspy.execute_program(prog, question="2+2?") == {"answer": "4"}
    assert "new-qa" in {p["resource_id"] for p in dspy.programs()}
    # A key handed over by the adapter is named in the LM's summary, never shown.
    keyed = dspy.configure_lm(provider="dummy", answers=[{"answer": "streamed"}], api_key=KEY)
    assert keyed["default_lm"]["api_key_secret"] == "DSPY_API_KEY" and KEY not in json.dumps(keyed)
    events = list(dspy.stream_program(prog, question="stream?"))
    assert events[-1].kind == "result" and events[-1].data == {"answer": "streamed"}
    fixed = dspy.create_lm(provider="dummy", answers=[{"answer": "from lm resource"}])
    assert dspy.configure_lm(lm=fixed)["default_lm"]["answers"] == 1
    assert dspy.execute_program(prog, {"question": "which lm?"}) == {"answer": "from lm resource"}
    with pytest.raises(InvalidArgument, match="not both"):
        dspy.configure_lm(lm=fixed, temperature=0.1)

    # Optimisation: BootstrapFewShot on a tiny train set, progress streamed, a new program made.
    lm = dspy.create_lm(provider="dummy", answers=[{"answer": "2"}, {"answer": "4"}, {"answer": "wrong"},
                                                   {"answer": "8"}])
    student = dspy.create_program("question -> answer", lm=lm)
    events = list(dspy.optimize_stream(student, TRAIN, optimizer="BootstrapFewShot", new_program_id="tuned",
                                       optimizer_args={"max_bootstrapped_demos": 3, "max_labeled_demos": 0}))
    progress = [(e.step, e.total) for e in events if e.kind == "progress"]
    assert progress[0] == (0, 3) and progress[-1] == (3, 3) and len(progress) == 5
    assert [e.message.rsplit(": ", 1)[1] for e in events if e.kind == "progress" and "on example" in e.message] == [
        "pass", "pass", "fail"]
    result = events[-1]
    assert result.kind == "result" and result.data["program_id"] == "tuned"
    assert result.data["info"]["demos"] == {"self": 2} and result.data["metric"]["passed"] == 2
    # The orchestrator recorded the new program, so the public API can run it.
    listed = {p["resource_id"]: p for p in dspy.programs()}
    assert listed["tuned"]["info"]["demos"] == {"self": 2}
    assert dspy.execute_program("tuned", question="4+4?") == {"answer": "8"}
    # ... and the legacy API sees it too.
    assert legacy(mb, "get_program_info", {"program_id": "tuned"})["signature"]["outputs"] == [{"name": "answer"}]

    # The blocking form with a progress callback.
    lm2 = dspy.create_lm(provider="dummy", answers=[{"answer": a["answer"]} for a in TRAIN] + [{"answer": "10"}])
    student2 = dspy.create_program("question -> answer", lm=lm2)
    steps: list[tuple[int, int, str]] = []
    out = dspy.optimize(student2, TRAIN, on_progress=lambda s, t, m: steps.append((s, t, m)), metric="contains")
    assert steps[-1][:2] == (3, 3) and out["metric"] == {"name": "contains", "calls": 3, "passed": 3}
    assert dspy.execute_program(out["program_id"], {"question": "5+5?"}) == {"answer": "10"}
    assert dspy.stats()["optimizations"] >= 2
    for rid in ("tuned", out["program_id"], prog, student, student2, fixed):
        mb.delete_resource(rid)


POLICY = """
version: 1
tenants:
  alice:
    tokens: ["{alice}"]
    bridges: [dspy]
    rules: [{{name: use-dspy, effect: allow, bridges: [dspy]}}]
  bob:
    tokens: ["{bob}"]
    bridges: [dspy]
    rules: [{{name: use-dspy, effect: allow, bridges: [dspy]}}]
  carol:
    tokens: ["{carol}"]
    bridges: [dspy]
    rules:
      - {{name: read-only, effect: allow, actions: [list_resources, stats]}}
      - {{name: ping-only, effect: allow, actions: [call], commands: ["common:ping"]}}
"""


def test_legacy_commands_obey_tenancy_and_policy(tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("dspex-policy")
    tokens = {name: f"{name}-token-0123456789abcdef" for name in ("alice", "bob", "carol")}
    path = tmp / "policy.yaml"
    path.write_text(POLICY.format(**{n: "sha256:" + hashlib.sha256(t.encode()).hexdigest()
                                     for n, t in tokens.items()}))
    path.chmod(0o600)
    with make_server(tmp, BACKENDS[0], policy=str(path), audit_log=str(tmp / "audit.jsonl")) as s:
        def client(name: str) -> MLBridge:
            return MLBridge.connect(s.target, token=tokens[name], timeout=120)

        with client("alice") as alice, client("bob") as bob, client("carol") as carol:
            legacy(alice, "configure_lm", {"provider": "dummy", "answers": [{"answer": "alice's"}]})
            legacy(alice, "create_program", {"id": "same-name", "signature": QA})
            # Another tenant sees nothing of it, and may use the same id for its own program.
            assert legacy(bob, "list_programs") == {"programs": [], "total_count": 0}
            with pytest.raises(NotFound):
                bob.call("", "get_program_info", {"program_id": "same-name"})
            with pytest.raises(NotFound):
                bob.call("", "execute_program", {"program_id": "same-name", "inputs": {"question": "?"}})
            legacy(bob, "configure_lm", {"provider": "dummy", "answers": [{"answer": "bob's"}]})
            legacy(bob, "create_program", {"id": "same-name", "signature": QA})
            assert legacy(bob, "execute_program", {"program_id": "same-name", "inputs": {"question": "?"}})[
                "outputs"] == {"answer": "bob's"}
            assert legacy(alice, "execute_program", {"program_id": "same-name", "inputs": {"question": "?"}})[
                "outputs"] == {"answer": "alice's"}
            legacy(bob, "reset_state")
            assert legacy(alice, "list_programs")["total_count"] == 1  # bob's reset left alice alone
            # The policy applies to each step: carol may list and ping, not create or configure.
            assert legacy(carol, "ping")["status"] == "ok"
            assert legacy(carol, "list_programs")["total_count"] == 0
            with pytest.raises(PermissionDenied, match="create_resource"):
                carol.call("", "create_program", {"id": "p", "signature": QA})
            with pytest.raises(PermissionDenied):
                carol.call("", "configure_lm", {"provider": "dummy", "api_key": KEY})
            # Session data is the tenant's own, and reaching it is a call the policy decides on.
            legacy(alice, "update_session_data", {"session_id": "s", "data": {"who": "alice"}})
            with pytest.raises(NotFound, match="Session not found: s"):
                bob.call("", "get_session_data", {"session_id": "s"})
            assert legacy(alice, "get_session_data", {"session_id": "s"})["data"] == {"who": "alice"}
            with pytest.raises(PermissionDenied):
                carol.call("", "update_session_data", {"session_id": "s", "data": {"x": 1}})
            with pytest.raises(PermissionDenied):
                carol.call("", "get_session_data", {"session_id": "s"})
        audit = [json.loads(line) for line in (tmp / "audit.jsonl").read_text().splitlines()]
        steps = {(r.get("tenant"), r.get("method"), r.get("resource_id")) for r in audit if r.get("event") == "call"}
        assert ("alice", "CreateResource", "same-name") in steps and ("bob", "CreateResource", "same-name") in steps
        assert any(r.get("tenant") == "carol" and r.get("outcome") == "denied" for r in audit)
        assert KEY not in (tmp / "audit.jsonl").read_text()


def test_session_data_caps(mb: MLBridge, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.compat import dspex

    monkeypatch.setattr(dspex, "MAX_SESSIONS", 2)
    legacy(mb, "reset_state")
    for session in ("a", "b"):
        legacy(mb, "update_session_data", {"session_id": session, "data": {"n": 1}})
    with pytest.raises(QuotaExceeded, match="2 sessions hold data"):
        mb.call("", "update_session_data", {"session_id": "c", "data": {"n": 1}})
    legacy(mb, "update_session_data", {"session_id": "a", "data": {"n": 2}})  # a session kept may change
    with pytest.raises(PayloadTooLarge, match="over the cap of 1048576"):
        mb.call("", "update_session_data", {"session_id": "a", "data": {"big": "x" * (1024 * 1024)}})
    assert legacy(mb, "get_session_data", {"session_id": "a"})["data"] == {"n": 2}  # nothing lost
    with pytest.raises(InvalidArgument, match="'session_id' must match"):
        mb.call("", "get_session_data", {"session_id": "no:colons"})
    with pytest.raises(InvalidArgument, match="Session ID required"):
        mb.call("", "cleanup_session", {})
    assert legacy(mb, "reset_state")["status"] == "reset"
    with pytest.raises(NotFound):
        mb.call("", "get_session_data", {"session_id": "a"})  # a reset drops session data too


def test_dspy_reset_drops_registry_specs_and_replays(tmp_path) -> None:
    """dspy:reset deletes resources in the worker; the orchestrator forgets their specs too."""
    from orchestrator import MLBridge
    from tests.harness import ServerThread, make_config

    cfg = make_config(tmp_path, default_bridge="dspy", bridges={"dspy": {"runtime": "dspy", "pool_size": 1}})
    with ServerThread(cfg) as srv, MLBridge.connect(srv.target) as mb:
        mb.call("dspy", "dspy:configure_lm", {"provider": "dummy", "model": "d", "answers": [{"answer": "x"}]})
        sig = mb.create_resource("dspy", "signature", {"signature": "q -> answer"})
        assert srv.orch.registry.replays("default", "dspy")
        out = mb.call("dspy", "dspy:reset")
        assert sig in [d["resource_id"] for d in out["deleted"]]
        assert mb.list_resources("dspy") == []
        assert srv.orch.registry.replays("default", "dspy") == []
