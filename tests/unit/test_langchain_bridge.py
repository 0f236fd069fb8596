"""The langchain bridge through a real runtime, offline (the fake provider; no network).

Most tests drive an in-process :class:`Dispatcher` (the code the gRPC server
calls); the last group serves the bridge from a process-backend orchestrator
(:class:`tests.harness.ServerThread`) and uses the Python adapter. The only
"provider" is :class:`OpenAIStub`, an OpenAI-compatible HTTP server this
module starts on loopback (streaming SSE, or failing as a provider does).
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("langchain")

from runtimes.langchain import LangChainBridge  # noqa: E402
from runtimes.wire.errors import MLBridgeError  # noqa: E402
from tests.harness import InProcessRuntime  # noqa: E402

KEY = "sk-test-Lc7TopSecretKeyValue-0099"
ADD_TOOL = "@tool\ndef add(a: int, b: int) -> int:\n    '''Add two integers.'''\n    return a + b\n"
DIV_TOOL = "@tool\ndef div(a: int, b: int) -> float:\n    '''Divide.'''\n    return a / b\n"
LOOKUP = {"client": True, "name": "lookup", "description": "Look up an order's status",
          "parameters": {"properties": {"order": {"type": "string"}}, "required": ["order"]}}


class OpenAIStub:
    """An OpenAI-compatible ``/v1/chat/completions`` on ``host``: SSE token streams, or a provider error.

    ``tokens`` is the reply; ``status`` (e.g. 401, 429) makes every request fail, echoing the key
    in the message as OpenAI does. ``requests`` records what arrived (body and authorization).
    """

    def __init__(self, host: str = "127.0.0.1", tokens: list[str] | None = None, status: int = 200,
                 gap_s: float = 0.0) -> None:
        self.tokens = tokens or ["Hello", " from", " the", " stub"]
        self.status, self.gap_s = status, gap_s
        self.requests: list[dict[str, Any]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                auth = self.headers.get("authorization", "")
                stub.requests.append({"path": self.path, "body": body, "authorization": auth})
                if stub.status != 200:
                    return self._json(stub.status, {"error": {
                        "message": f"Incorrect API key provided: {auth.removeprefix('Bearer ')}",
                        "type": "invalid_request_error", "code": "invalid_api_key"}})
                if not body.get("stream"):
                    return self._json(200, {"id": "c1", "object": "chat.completion", "created": 1,
                                            "model": body.get("model"), "choices": [{
                                                "index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": "".join(stub.tokens)}}]})
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                for tok in [*stub.tokens, None]:
                    delta = {"role": "assistant", "content": tok} if tok is not None else {}
                    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                             "choices": [{"index": 0, "delta": delta, "finish_reason": None if tok else "stop"}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    if stub.gap_s and tok is not None:
                        time.sleep(stub.gap_s)
                self.wfile.write(b"data: [DONE]\n\n")

            def _json(self, status: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


class Runtime(InProcessRuntime):
    """A langchain runtime in this process; records every reply to check for leaks."""

    def __init__(self, secrets: dict[str, str] | None = None) -> None:
        super().__init__(LangChainBridge(), secrets)

    def stream(self, command: str, args: dict[str, Any], rid: str = "",
               answer: Callable[[dict[str, Any]], Any] | None = None,
               call_id: str = "") -> tuple[list[tuple[str, Any]], Any]:
        """(events before the final, final result or error); ``answer`` answers tool_call requests."""
        cid = call_id or uuid.uuid4().hex

        async def go() -> list[tuple[str, Any]]:
            fields = {"call_id": cid, "command": command, "resource_id": rid}
            out = []
            async for kind, payload in self.d.stream(fields, json.dumps(args)):
                if kind == "request" and answer is not None:
                    try:
                        self.d.answer(cid, payload["request_id"], json.dumps(answer(payload["data"])), "")
                    except Exception as exc:  # noqa: BLE001 - the test's answer function raised: send it
                        self.d.answer(cid, payload["request_id"], "", str(exc))
                out.append((kind, payload))
            return out

        events = asyncio.run(go())
        final = events[-1][1]
        self.metadata = final.metadata
        result = final.error if final.error is not None else json.loads(final.result)
        self.seen.append(json.dumps([e for e in events[:-1]], default=str) + str(result))
        return events[:-1], result


@pytest.fixture
def rt() -> Runtime:
    return Runtime()


def fake(*responses: Any, **extra: Any) -> dict[str, Any]:
    return {"provider": "fake", "responses": list(responses), **extra}


def chunks(events: list[tuple[str, Any]], kind: str = "") -> list[Any]:
    return [p for k, p in events if k == "chunk" and (not kind or p["type"] == kind)]


# -- describe and import cost ----------------------------------------------------------------------
def test_describe_lists_types_commands_and_versions(rt: Runtime) -> None:
    from importlib import metadata

    info = rt.ok("common:describe")
    types = {t["name"]: t for t in info["resource_types"]}
    assert set(types) == {"model", "prompt", "chain", "tool", "memory", "agent"}
    assert all(types[t]["streaming"] for t in ("model", "prompt", "chain", "tool", "agent"))
    assert not types["memory"]["streaming"]
    names = {c["name"]: c for c in info["commands"]}
    assert {"langchain:create_chain", "langchain:invoke", "langchain:batch", "langchain:stream"} <= set(names)
    assert names["langchain:stream"]["streaming"] and not names["langchain:invoke"]["streaming"]
    assert info["framework_version"] == metadata.version("langchain")
    assert info["packages"]["langgraph"] == metadata.version("langgraph")


def test_importing_the_bridge_does_not_import_langchain() -> None:
    code = ("import sys, runtimes.langchain; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'langchain', 'langchain_core', 'langgraph', "
            "'openai', 'pydantic'}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# -- prompts and models --------------------------------------------------------------------------------
def test_prompt_variables_are_checked_at_create_and_formatted_on_execute(rt: Runtime) -> None:
    out = rt.create("prompt", "p", {"messages": [{"role": "system", "content": "You are {persona}."},
                                                 {"role": "placeholder", "variable": "history", "optional": True},
                                                 {"role": "user", "content": "{question}"}],
                                    "variables": ["persona", "question"], "partial": {"persona": "terse"}})
    assert out["info"]["variables"] == ["question"] and out["info"]["optional"] == ["history"]
    got = rt.execute("p", {"input": {"question": "why?"}})["output"]
    assert got == {"messages": [{"type": "system", "content": "You are terse."},
                                {"type": "human", "content": "why?"}]}
    err = rt.fail("common:execute_resource", {"input": {}}, "p")
    assert err.code == "INVALID_ARGUMENT" and err.details["reason"] == "PROMPT_VARIABLES" and "question" in err.message


@pytest.mark.parametrize("config, needle", [
    ({"template": "a", "messages": []}, "exactly one of"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "role one of"),
    ({"template": "Hi {name", "variables": ["name"]}, "does not parse"),
    ({"template": "{a} and {b}", "variables": ["a"]}, "used but not declared: b"),
    ({"template": "{a}", "variables": ["a", "z"]}, "declared but not used: z"),
    ({"template": "{a}", "partial": {"q": "x"}}, "do not use: q"),
    ({"template": "{a}", "template_format": "jinja2"}, "f-string"),
])
def test_bad_prompt_is_invalid_argument(rt: Runtime, config: dict[str, Any], needle: str) -> None:
    err = rt.fail("common:create_resource", config, "bad", "prompt")
    assert err.code == "INVALID_ARGUMENT" and needle in err.message, err.message
    assert "bad" not in rt.bridge.resources


def test_missing_key_names_the_secret_and_keys_are_refused_inline(rt: Runtime) -> None:
    err = rt.fail("common:create_resource", {"provider": "openai", "model": "gpt-4o-mini"}, "m", "model")
    assert err.code == "FAILED_PRECONDITION" and err.details == {"reason": "MISSING_SECRET", "secret": "OPENAI_API_KEY"}
    assert "bridges.langchain.secrets" in err.message
    err = rt.fail("common:create_resource", {"model": "anthropic:claude-x", "api_key_secret": "TEAM"}, "m", "model")
    assert err.details["secret"] == "TEAM"
    err = rt.fail("common:create_resource", {"provider": "openai", "model": "x", "api_key": KEY}, "m", "model")
    assert err.code == "INVALID_ARGUMENT" and "api_key_secret" in err.message and KEY not in err.flat()
    err = rt.fail("common:create_resource", {"provider": "openai", "model": "x",
                                             "base_url": "http://u:p@h/v1"}, "m", "model")
    assert "credentials" in err.message
    err = rt.fail("common:create_resource", {"provider": "openai", "model": "x", "api_key_secret": None}, "m", "model")
    assert "only for a model with a base_url" in err.message
    err = rt.fail("common:create_resource", fake(responses=[], delay_s=9), "m", "model")
    assert err.code == "INVALID_ARGUMENT"


def test_real_providers_build_offline_and_never_show_the_key() -> None:
    rt = Runtime({"OPENAI_API_KEY": KEY, "ANTHROPIC_API_KEY": KEY, "GOOGLE_API_KEY": KEY})
    for provider, model in (("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"),
                            ("google_genai", "gemini-2.5-flash")):
        info = rt.create("model", provider, {"provider": provider, "model": model, "temperature": 0.1})["info"]
        assert info["provider"] == provider and info["model"] == model and info["api_key_secret"]
        assert type(rt.bridge.resources.get(provider).runnable).__name__.startswith("Chat")  # type: ignore[attr-defined]
    rt.ok("common:list_resources")
    assert not any(KEY in s or KEY[8:20] in s for s in rt.seen)


# -- chains ----------------------------------------------------------------------------------------------
def test_declarative_chain_invokes_batches_and_streams_tokens(rt: Runtime) -> None:
    rt.create("model", "m", fake("Paris is the capital", cycle=True))
    rt.create("prompt", "p", {"template": "Capital of {country}?"})
    out = rt.create("chain", "c", {"prompt": "p", "model": "m", "parser": "str"})
    assert out["info"] == {"kind": "declarative", "parser": "str", "prompt": "p", "model": "m",
                           "variables": ["country"]}
    assert rt.execute("c", {"input": {"country": "France"}}) == {"output": "Paris is the capital"}
    assert rt.execute("c", {"input": "France"}) == {"output": "Paris is the capital"}  # the one variable
    assert rt.execute("c", {"inputs": ["a", "b", "c"], "max_concurrency": 2}) == {
        "outputs": ["Paris is the capital"] * 3}
    events, final = rt.stream("common:execute_resource", {"input": "France"}, "c")
    assert [c["text"] for c in chunks(events, "token")] == ["Paris ", "is ", "the ", "capital"]
    assert final == {"output": "Paris is the capital"}
    assert [p for k, p in events if k == "progress"] == [(1, 0, "model ScriptedChatModel")]
    assert rt.ok("langchain:stats")["streams"] == 1


def test_batch_runs_at_most_max_concurrency_at_once(rt: Runtime) -> None:
    code = ("import threading, time\nfrom langchain_core.runnables import RunnableLambda\n"
            "state = {'now': 0, 'peak': 0}\nlock = threading.Lock()\n"
            "def work(x):\n    with lock:\n        state['now'] += 1\n        state['peak'] = max(state['peak'], state['now'])\n"
            "    time.sleep(0.05)\n    with lock:\n        state['now'] -= 1\n    return {'x': x, 'peak': state['peak']}\n"
            "def build():\n    return RunnableLambda(work)\n")
    rt.create("chain", "c", {"code": code})
    outs = rt.execute("c", {"inputs": list(range(8)), "max_concurrency": 3})["outputs"]
    assert [o["x"] for o in outs] == list(range(8))
    assert max(o["peak"] for o in outs) == 3


def test_json_and_pydantic_parsers_and_parser_failure(rt: Runtime) -> None:
    rt.create("model", "m", fake('{"city": "Paris", "population": 2100000}', "not json at all", cycle=True))
    rt.create("chain", "j", {"model": "m", "parser": "json"})
    assert rt.execute("j", {"input": "q"}) == {"output": {"city": "Paris", "population": 2100000}}
    err = rt.fail("common:execute_resource", {"input": "q"}, "j")
    assert err.code == "FRAMEWORK_ERROR" and err.details["reason"] == "OUTPUT_PARSER"
    assert "parser 'str'" in err.message
    schema = {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string", "description": "the city"}, "population": {"type": "integer"},
        "kind": {"enum": ["capital", "town"]}}}
    rt.create("chain", "pyd", {"prompt": {"template": "{q}\n{format_instructions}"}, "model": "m",
                               "parser": {"type": "pydantic", "schema": schema, "name": "City"}})
    assert rt.execute("pyd", {"input": "q"}) == {"output": {"city": "Paris", "population": 2100000, "kind": None}}
    sent = rt.bridge.resources.get("pyd").prompt.invoke({"q": "x"}).to_string()  # type: ignore[attr-defined]
    assert '"city"' in sent and "the city" in sent  # the parser's format instructions reached the prompt
    err = rt.fail("common:create_resource", {"model": "m", "parser": {"type": "pydantic", "schema": {
        "type": "object", "properties": {"x": {"type": "null"}}}}}, "bad", "chain")
    assert err.code == "INVALID_ARGUMENT" and "type 'null'" in err.message
    assert rt.fail("common:execute_resource", {"input": "q"}, "j").details["reason"] == "OUTPUT_PARSER"
    assert rt.execute("j", {"input": "again"})["output"]["city"] == "Paris"  # the worker keeps serving


def test_code_chain_builds_from_other_resources(rt: Runtime) -> None:
    rt.create("model", "m", fake("one two three", cycle=True))
    rt.create("prompt", "p", {"template": "{x}"})
    code = ("from langchain_core.output_parsers import StrOutputParser\n"
            "def build(resources):\n    return resources.prompt('p') | resources.model('m') | StrOutputParser()\n")
    rt.create("chain", "code", {"code": code})
    assert rt.execute("code", {"input": {"x": "go"}}) == {"output": "one two three"}
    events, final = rt.stream("langchain:stream", {"runnable": "code", "input": {"x": "go"}})
    assert len(chunks(events, "token")) == 3 and final == {"output": "one two three"}
    rt.create("chain", "fn", {"code": "def build():\n    return lambda x: {'doubled': x * 2}\n"})
    assert rt.execute("fn", {"input": 21}) == {"output": {"doubled": 42}}


@pytest.mark.parametrize("code, code_name, needle", [
    ("def build(:\n  pass", "INVALID_ARGUMENT", "line 1"),
    ("x = 1\n", "INVALID_ARGUMENT", "no build() function"),
    ("def build():\n    return 42\n", "INVALID_ARGUMENT", "not a Runnable"),
    ("def build():\n    raise ValueError('nope')\n", "FRAMEWORK_ERROR", "ValueError: nope"),
    ("def build(r):\n    return r.model('missing')\n", "NOT_FOUND", "'missing'"),
])
def test_bad_code_chain(rt: Runtime, code: str, code_name: str, needle: str) -> None:
    err = rt.fail("common:create_resource", {"code": code}, "c", "chain")
    assert err.code == code_name and needle in err.message, err.message


def test_user_code_error_at_run_time_shows_the_users_line(rt: Runtime) -> None:
    rt.create("chain", "c", {"code": "def build():\n    def f(x):\n        return 1 / x\n    return f\n"})
    err = rt.fail("common:execute_resource", {"input": 0}, "c")
    assert err.code == "FRAMEWORK_ERROR" and "ZeroDivisionError" in err.message
    assert rt.execute("c", {"input": 4}) == {"output": 0.25}


def test_create_chain_command_is_recorded_and_invoke_takes_inline_chains(rt: Runtime) -> None:
    rt.create("model", "m", fake("inline works", cycle=True))
    out = rt.ok("langchain:create_chain", {"prompt": {"template": "{q}"}, "model": "m", "parser": "str",
                                           "resource_id": "made"})
    assert out["chain_id"] == "made" and out["info"]["prompt"] == "inline"
    created = json.loads(rt.metadata["mlbridge-created-resources"])
    assert created == [{"resource_id": "made", "type": "chain", "info": out["info"],
                        "config": {"prompt": {"template": "{q}"}, "model": "m", "parser": "str"}}]
    assert rt.ok("langchain:invoke", {"runnable": "made", "input": "x"}) == {"output": "inline works"}
    again = rt.ok("langchain:invoke", {"runnable": {"model": "m", "parser": "str"}, "input": "hi"})
    assert again == {"output": "inline works"} and "inline" not in rt.bridge.resources
    assert rt.ok("langchain:batch", {"runnable": "made", "inputs": ["a", "b"]}) == {"outputs": ["inline works"] * 2}
    assert rt.fail("langchain:create_chain", {"model": "m", "resource_id": "made"}).code == "ALREADY_EXISTS"
    assert rt.fail("langchain:invoke", {"runnable": "nope", "input": 1}).code == "NOT_FOUND"
    rt.create("memory", "mem", {})
    err = rt.fail("langchain:invoke", {"runnable": "mem", "input": 1})
    assert err.code == "INVALID_ARGUMENT" and "cannot be run" in err.message
    err = rt.fail("langchain:invoke", {"runnable": "made", "input": 1, "config": {"thread": "t"}})
    assert err.code == "INVALID_ARGUMENT" and "thread_id" in err.message


# -- tools and agents --------------------------------------------------------------------------------------
def _agent(rt: Runtime, *responses: Any, tools: list[str], memory: str | None = None) -> None:
    rt.create("model", "am", fake(*responses, cycle=True))
    cfg: dict[str, Any] = {"model": "am", "tools": tools, "system_prompt": "Be brief."}
    if memory:
        cfg["memory"] = memory
    rt.create("agent", "ag", cfg)


CALL_BOTH = {"tool_calls": [{"name": "add", "args": {"a": 2, "b": 3}}, {"name": "lookup", "args": {"order": "A1"}}]}


def test_code_tool_schema_and_direct_execution(rt: Runtime) -> None:
    info = rt.create("tool", "add", {"code": ADD_TOOL})["info"]
    assert info == {"kind": "code", "name": "add", "description": "Add two integers.", "parameters": ["a", "b"]}
    assert rt.execute("add", {"input": {"a": 4, "b": 5}}) == {"output": 9}
    err = rt.fail("common:create_resource", {"code": "def f(x):\n    return x\n"}, "t", "tool")
    assert err.code == "INVALID_ARGUMENT" and "docstring" in err.message


def test_agent_uses_a_code_tool_and_a_client_tool(rt: Runtime) -> None:
    rt.create("tool", "add", {"code": ADD_TOOL})
    rt.create("tool", "lookup", LOOKUP)
    _agent(rt, CALL_BOTH, "Sum {tool:add}; order {tool:lookup}.", tools=["add", "lookup"])
    asked: list[dict[str, Any]] = []
    events, final = rt.stream("common:execute_resource", {"input": "Add 2 and 3, and find A1"}, "ag",
                              answer=lambda d: asked.append(d) or {"order": d["args"]["order"], "status": "shipped"})
    assert asked == [{"tool": "lookup", "args": {"order": "A1"}, "tool_call_id": asked[0]["tool_call_id"]}]
    assert final["output"] == 'Sum 5; order {"order": "A1", "status": "shipped"}.'
    ends = {c["tool"]: c["output"] for c in chunks(events, "tool_end")}
    assert ends == {"add": "5", "lookup": '{"order": "A1", "status": "shipped"}'}
    assert {c["tool"] for c in chunks(events, "tool_start")} == {"add", "lookup"}
    kinds = [k for k, _ in events]
    assert kinds.index("request") < max(i for i, (k, p) in enumerate(events) if k == "chunk" and p["type"] == "token")
    assert [m["type"] for m in final["messages"]] == ["human", "ai", "tool", "tool", "ai"]
    err = rt.fail("common:execute_resource", {"input": "again"}, "ag")
    assert err.code == "INVALID_ARGUMENT" and "langchain:stream" in err.message


def test_client_answering_with_an_error_ends_the_turn_and_rolls_it_back(rt: Runtime) -> None:
    rt.create("tool", "lookup", LOOKUP)
    rt.create("memory", "mem", {})
    call = {"tool_calls": [{"name": "lookup", "args": {"order": "Z"}}]}
    _agent(rt, call, call, "found {tool:lookup}", tools=["lookup"], memory="mem")

    def refuse(data: dict[str, Any]) -> Any:
        raise RuntimeError("database offline")

    _, final = rt.stream("common:execute_resource", {"input": "find Z", "config": {"thread_id": "t"}}, "ag",
                         answer=refuse)
    assert isinstance(final, MLBridgeError) and final.code == "FRAMEWORK_ERROR"
    assert "database offline" in final.message
    assert rt.execute("mem", {"action": "get", "thread_id": "t"})["messages"] == []  # nothing half-done kept
    _, final = rt.stream("common:execute_resource", {"input": "find Z", "config": {"thread_id": "t"}}, "ag",
                         answer=lambda d: "in stock")
    assert final["output"] == "found in stock"


def test_tool_errors_end_the_run_or_reach_the_model(rt: Runtime) -> None:
    broken = DIV_TOOL
    rt.create("tool", "div", {"code": broken})
    rt.create("tool", "soft", {"code": broken.replace("div", "softdiv"), "handle_errors": True})
    rt.create("model", "am", fake({"tool_calls": [{"name": "div", "args": {"a": 1, "b": 0}}]}, "ok"))
    rt.create("agent", "hard", {"model": "am", "tools": ["div"]})
    err = rt.fail("common:execute_resource", {"input": "divide"}, "hard")
    assert err.code == "FRAMEWORK_ERROR" and err.details["reason"] == "TOOL_ERROR" and err.details["tool"] == "div"
    assert "ZeroDivisionError" in err.message and "handle_errors: true" in err.message
    assert err.details["line"] == 4 and "return a / b" in err.details["traceback"]
    rt.create("model", "sm", fake({"tool_calls": [{"name": "softdiv", "args": {"a": 1, "b": 0}}]},
                                  "the tool said: {tool:softdiv}"))
    rt.create("agent", "soft_agent", {"model": "sm", "tools": ["soft"]})
    out = rt.execute("soft_agent", {"input": "divide"})
    assert out["output"] == "the tool said: ZeroDivisionError: division by zero"


def test_recursion_limit_is_a_typed_error(rt: Runtime) -> None:
    rt.create("tool", "add", {"code": ADD_TOOL})
    _agent(rt, {"tool_calls": [{"name": "add", "args": {"a": 1, "b": 1}}]}, tools=["add"])  # never stops
    err = rt.fail("common:execute_resource", {"input": "loop", "config": {"recursion_limit": 4}}, "ag")
    assert err.code == "FRAMEWORK_ERROR" and err.details["reason"] == "RECURSION_LIMIT"
    assert "raise recursion_limit" in err.message
    assert rt.ok("common:ping")["pong"]


def test_fake_script_running_out_is_a_typed_error(rt: Runtime) -> None:
    rt.create("model", "m", fake("only once"))
    assert rt.execute("m", {"input": "hi"})["output"]["content"] == "only once"
    err = rt.fail("common:execute_resource", {"input": "hi"}, "m")
    assert err.details["reason"] == "FAKE_SCRIPT_EXHAUSTED" and "cycle: true" in err.message


# -- memory ---------------------------------------------------------------------------------------------------
def test_memory_keeps_threads_and_moves_to_a_new_worker_by_snapshot(rt: Runtime) -> None:
    rt.create("memory", "mem", {})
    _agent(rt, "heard: {humans}", tools=[], memory="mem")
    assert rt.execute("ag", {"input": "my name is Ada", "config": {"thread_id": "t1"}})["output"] == \
        "heard: my name is Ada"
    assert "mlbridge-resource-states" in rt.metadata  # the orchestrator gets the memory after the turn
    out = rt.execute("ag", {"input": "what is my name?", "config": {"thread_id": "t1"}})
    assert out["output"] == "heard: my name is Ada | what is my name?"
    assert [m["type"] for m in out["messages"]] == ["human", "ai"] and out["thread_id"] == "t1"
    assert rt.execute("ag", {"input": "hi", "config": {"thread_id": "t2"}})["output"] == "heard: hi"
    state = json.loads(rt.metadata["mlbridge-resource-states"])["mem"]
    # A new worker: the orchestrator re-creates memory (with its kept state), model and agent, oldest first.
    fresh = Runtime()
    ctx = fresh.d.make_context(call_id="c", command="common:create_resource", resource_id="mem",
                               resource_type="memory", resource_state_json=json.dumps(state))
    assert asyncio.run(fresh.d.run(ctx, "{}")).error is None
    _agent(fresh, "heard: {humans}", tools=[], memory="mem")
    out = fresh.execute("ag", {"input": "and now?", "config": {"thread_id": "t1"}})
    assert out["output"] == "heard: my name is Ada | what is my name? | and now?"
    assert fresh.execute("mem", {"action": "list"}) == {"threads": ["t1", "t2"]}
    assert fresh.execute("mem", {"action": "clear", "thread_id": "t2"}) == {"thread_id": "t2", "cleared": True}
    assert fresh.execute("mem", {"action": "list"}) == {"threads": ["t1"]}
    err = fresh.fail("common:execute_resource", {"inputs": ["a"]}, "ag")
    assert err.code == "INVALID_ARGUMENT" and "one turn at a time" in err.message


def test_failed_turn_leaves_the_thread_as_it_was(rt: Runtime) -> None:
    rt.create("memory", "mem", {"max_threads": 1})
    rt.create("tool", "div", {"code": DIV_TOOL})
    _agent(rt, "first", {"tool_calls": [{"name": "div", "args": {"a": 1, "b": 0}}]}, tools=["div"], memory="mem")
    rt.execute("ag", {"input": "one", "config": {"thread_id": "t"}})
    assert rt.fail("common:execute_resource", {"input": "two", "config": {"thread_id": "t"}}, "ag").code
    assert [m["content"] for m in rt.execute("mem", {"action": "get", "thread_id": "t"})["messages"]] == \
        ["one", "first"]
    err = rt.fail("common:execute_resource", {"input": "x", "config": {"thread_id": "other"}}, "ag")
    assert "max_threads" in err.message


# -- cancellation and deadlines ----------------------------------------------------------------------------------
def test_cancel_stops_generation_mid_stream(rt: Runtime) -> None:
    rt.create("model", "slow", fake(" ".join(f"w{i}" for i in range(200)), delay_s=0.02))
    cid = uuid.uuid4().hex
    timer = threading.Timer(0.3, lambda: rt.d.cancel(cid))
    timer.start()
    started = time.monotonic()
    events, final = rt.stream("common:execute_resource", {"input": "go"}, "slow", call_id=cid)
    assert isinstance(final, MLBridgeError) and final.code == "CANCELLED"
    assert time.monotonic() - started < 2.0
    emitted = len(chunks(events, "token"))
    assert 3 <= emitted < 100
    time.sleep(0.2)  # generation stopped: no token is produced after the cancel
    model = rt.bridge.resources.get("slow").runnable  # type: ignore[attr-defined]
    assert model.replies_used == 1 and rt.ok("common:ping")["pong"]


def test_deadline_stops_a_unary_invoke(rt: Runtime) -> None:
    rt.create("model", "slow", fake(" ".join(["w"] * 200), delay_s=0.02))
    rt.create("chain", "c", {"model": "slow", "parser": "str"})
    deadline_ms = int((time.time() + 0.3) * 1000)
    started = time.monotonic()
    err = rt.fail("common:execute_resource", {"input": "go"}, "c", deadline_unix_ms=deadline_ms)
    assert err.code == "DEADLINE_EXCEEDED" and time.monotonic() - started < 2.0


# -- a real provider client against a local OpenAI-compatible server --------------------------------------------
@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    s = OpenAIStub(tokens=["The", " answer", " is", " 42"])
    yield s
    s.close()


def test_openai_compatible_server_streams_tokens_in_order(stub: OpenAIStub) -> None:
    rt = Runtime({"LOCAL_KEY": KEY})
    cfg = {"provider": "openai", "model": "local-model", "base_url": stub.url, "api_key_secret": "LOCAL_KEY",
           "max_retries": 0}
    assert rt.create("model", "m", cfg)["info"]["base_url"] == stub.url
    events, final = rt.stream("common:execute_resource", {"input": "question?"}, "m")
    assert [c["text"] for c in chunks(events, "token")] == ["The", " answer", " is", " 42"]
    assert final["output"]["content"] == "The answer is 42"
    assert rt.execute("m", {"input": [{"role": "user", "content": "hi"}]})["output"]["content"] == "The answer is 42"
    assert stub.requests[0]["authorization"] == f"Bearer {KEY}" and stub.requests[0]["body"]["stream"] is True
    assert stub.requests[0]["body"]["messages"] == [{"role": "user", "content": "question?"}]
    rt.create("model", "nokey", {**cfg, "api_key_secret": None})
    rt.execute("nokey", {"input": "x"})
    assert stub.requests[-1]["authorization"] == "Bearer unused"


@pytest.mark.parametrize("status, code, reason", [
    (401, "FAILED_PRECONDITION", "PROVIDER_AUTH"),
    (429, "RESOURCE_EXHAUSTED", "PROVIDER_RATE_LIMIT"),
    (404, "INVALID_ARGUMENT", "PROVIDER_BAD_REQUEST"),
    (500, "FRAMEWORK_ERROR", "PROVIDER_ERROR"),
])
def test_provider_errors_are_typed_and_never_show_the_key(stub: OpenAIStub, status: int, code: str,
                                                         reason: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every record the provider clients and LangChain make
    stub.status = status
    rt = Runtime({"OPENAI_API_KEY": KEY})
    rt.create("model", "m", {"provider": "openai", "model": "x", "base_url": stub.url, "max_retries": 0})
    err = rt.fail("common:execute_resource", {"input": "hi"}, "m")
    assert (err.code, err.details["reason"], err.details["status"]) == (code, reason, status)
    _, final = rt.stream("common:execute_resource", {"input": "hi"}, "m")
    assert isinstance(final, MLBridgeError) and final.details["reason"] == reason
    assert stub.requests and all(r["authorization"] == f"Bearer {KEY}" for r in stub.requests)
    assert not any(KEY in s or KEY[8:20] in s for s in rt.seen)
    logging.getLogger("langchain_core.callbacks").error("a handler echoed %s", KEY)  # as a provider SDK might
    assert caplog.records and KEY not in caplog.text and KEY[8:20] not in caplog.text
    assert "a handler echoed [redacted]" in caplog.text  # the bridge's redaction covers every log record


def test_unreachable_provider_names_the_allowlist() -> None:
    rt = Runtime({"OPENAI_API_KEY": KEY})
    dead = OpenAIStub()
    dead.close()  # nothing listens on that port any more
    rt.create("model", "m", {"provider": "openai", "model": "x", "base_url": dead.url, "max_retries": 0})
    err = rt.fail("common:execute_resource", {"input": "hi"}, "m")
    assert err.code == "UNAVAILABLE" and err.details["reason"] == "PROVIDER_UNREACHABLE"
    assert "network.langchain.allowlist" in err.message


# -- through an orchestrator (process backend) with the Python adapter ------------------------------------------
ALICE, BOB = f"alice-{uuid.uuid4().hex}", f"bob-{uuid.uuid4().hex}"


def _digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.harness import ServerThread, make_config

    tmp = tmp_path_factory.mktemp("lc")
    policy = tmp / "policy.yaml"
    policy.write_text(f"""version: 1
defaults:
  bridges: [langchain]
  rules: [{{name: all, effect: allow}}]
tenants:
  alice: {{tokens: ["{_digest(ALICE)}"]}}
  bob: {{tokens: ["{_digest(BOB)}"]}}
""")
    policy.chmod(0o600)
    cfg = make_config(tmp, policy=str(policy), default_bridge="langchain",
                      bridges={"langchain": {"runtime": "runtimes.langchain:LangChainBridge", "pool_size": 1,
                                             "call_timeout_s": 60}})
    with ServerThread(cfg) as s:
        yield s


def test_adapter_chain_agent_and_memory_across_workers(srv: Any) -> None:
    from orchestrator import MLBridge, NotFound
    from orchestrator.client.langchain_adapter import LangChainAdapter

    with MLBridge.connect(srv.target, token=ALICE) as mb:
        lc = mb.get_adapter("langchain")
        assert isinstance(lc, LangChainAdapter)
        model = lc.create_model("fake", responses=["fine thanks"], cycle=True)
        chain = lc.create_chain(prompt={"template": "How is {who}?"}, model=model, parser="str")
        assert lc.invoke(chain, {"who": "Ada"}) == "fine thanks"
        assert lc.batch(chain, ["a", "b", "c"], max_concurrency=2) == ["fine thanks"] * 3
        events = list(lc.stream(chain, "Ada"))
        assert [e.data["text"] for e in events if e.kind == "chunk"] == ["fine ", "thanks"]
        assert events[-1].kind == "result" and events[-1].data == {"output": "fine thanks"}

        def order_status(order: str) -> str:
            """The shipping status of an order."""
            return f"{order} shipped"

        add = lc.create_tool(ADD_TOOL)
        agent_model = lc.create_model("fake", responses=[
            {"tool_calls": [{"name": "add", "args": {"a": 20, "b": 22}},
                            {"name": "order_status", "args": {"order": "A7"}}]},
            "{tool:add}; {tool:order_status}; you said: {humans}"], cycle=True)
        memory = lc.create_memory()
        agent = lc.create_agent(agent_model, tools=[add, order_status], memory=memory)
        first = lc.invoke(agent, "hello", thread_id="t1")  # streams: order_status is answered here
        assert first["output"] == "42; A7 shipped; you said: hello"
        # The worker goes away; the next turn runs on a fresh one with the memory the orchestrator kept.
        pool = srv.orch.pools["langchain"]
        for worker in pool.claimed("alice"):
            srv.run(pool.retire(worker, "killed by the test"))
        second = lc.invoke(agent, "again", thread_id="t1")
        assert second["output"] == "42; A7 shipped; you said: hello | again"
        assert lc.invoke(chain, "x") == "fine thanks"  # the chain came back too
        with MLBridge.connect(srv.target, token=BOB) as bob:
            for rid in (agent, memory, chain):
                with pytest.raises(NotFound) as missing:
                    bob.execute_resource(rid, {"input": "x"})
                assert str(missing.value) == f"NOT_FOUND: resource {rid!r} not found"
            with pytest.raises(NotFound) as missing:
                bob.execute_resource("no-such-resource", {"input": "x"})
            assert str(missing.value) == "NOT_FOUND: resource 'no-such-resource' not found"
