"""The LangChain adapter: LangChain's vocabulary over the resource API, client tools answered for you.

``mb.get_adapter("langchain")`` returns a :class:`LangChainAdapter`::

    lc = mb.get_adapter("langchain")
    model = lc.create_model("fake", responses=["Paris is the capital."])
    chain = lc.create_chain(prompt={"template": "Capital of {country}?"}, model=model, parser="str")
    lc.invoke(chain, {"country": "France"})                # "Paris is the capital."
    for ev in lc.stream(chain, {"country": "France"}):      # token chunks, then the result
        print(ev.kind, ev.data)

    def order_status(order_id: str) -> str:
        '''The shipping status of an order.'''
        return my_db.status(order_id)                      # runs here, in the caller

    agent = lc.create_agent(model, tools=[order_status], memory=lc.create_memory())
    lc.invoke(agent, "Where is order A17?", thread_id="alice-1")["output"]

Plain callables passed as tools become *client tools*: the agent's worker
sends a ``tool_call`` request on the call's stream, and :meth:`stream` (and
:meth:`invoke`, which streams when client tools may be called) runs the
function and answers. Every method is a thin call of the public API
(``CreateResource``, ``ExecuteResource``, ``ExecuteResourceStream``,
``Call``, ``CallStream``, ``Answer``), so it is also the reference for what a
client in another language sends.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol, cast

from runtimes.wire.errors import InvalidResult

from ._common import Event
from .adapters import Adapter, Client

__all__ = ["LangChainAdapter", "tool_schema"]

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


class StreamingClient(Client, Protocol):
    """What this adapter needs beyond :class:`Client`: streaming commands and answers."""

    def call_stream(self, bridge: str, command: str, args: dict[str, Any] | None = None, *,
                    call_id: str | None = None, timeout: float | None = None) -> Iterator[Event]: ...

    def answer(self, call_id: str, request_id: str, result: Any = None, *, error: str | None = None) -> bool: ...


def tool_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """A client tool's config from a Python function: name, docstring, parameters from the signature."""
    params: dict[str, Any] = {}
    required = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = p.annotation if p.annotation is not inspect.Parameter.empty else None
        origin = getattr(ann, "__origin__", ann)
        params[p.name] = {"type": _JSON_TYPES[origin]} if origin in _JSON_TYPES else {}
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
    doc = inspect.getdoc(fn) or fn.__name__
    return {"client": True, "name": fn.__name__, "description": doc,
            "parameters": {"type": "object", "properties": params, "required": required}}


class LangChainAdapter(Adapter):
    """Models, prompts, chains, tools, memory and agents of one ``langchain`` bridge."""

    def __init__(self, client: Client, bridge: str, description: dict[str, Any]) -> None:
        super().__init__(client, bridge, description)
        self.namespace = str(description.get("bridge") or bridge)
        #: Client tool functions by tool name, answered by :meth:`stream`.
        self.client_tools: dict[str, Callable[..., Any]] = {}
        self._client_tool_ids: set[str] = set()
        #: Runnables that may call a client tool: :meth:`invoke` streams them.
        self._asks: set[str] = set()
        self._streaming = cast(StreamingClient, client)

    def _create(self, type_: str, config: dict[str, Any], resource_id: str | None) -> str:
        return self.client.create_resource(self.bridge, type_, config, resource_id=resource_id)

    # -- building blocks -------------------------------------------------------------------
    def create_model(self, provider: str, model: str | None = None, *, resource_id: str | None = None,
                     **config: Any) -> str:
        """A ``model``: ``provider`` fake/openai/anthropic/google_genai; ``api_key_secret``, ``base_url``, ..."""
        config["provider"] = provider
        if model is not None:
            config["model"] = model
        return self._create("model", config, resource_id)

    def create_prompt(self, template: str | None = None, *, messages: list[Any] | None = None,
                      resource_id: str | None = None, **config: Any) -> str:
        """A ``prompt`` from one human template, or from ``messages`` ({role, content} / placeholders)."""
        if template is not None:
            config["template"] = template
        if messages is not None:
            config["messages"] = messages
        return self._create("prompt", config, resource_id)

    def create_tool(self, fn_or_code: Callable[..., Any] | str, *, resource_id: str | None = None,
                    **config: Any) -> str:
        """A ``tool``: Python source (a code tool, run in the sandbox) or a callable (a client tool, run here)."""
        if callable(fn_or_code):
            spec = {**tool_schema(fn_or_code), **config}
            self.client_tools[spec["name"]] = fn_or_code
            rid = self._create("tool", spec, resource_id)
            self._client_tool_ids.add(rid)
            return rid
        return self._create("tool", {"code": fn_or_code, **config}, resource_id)

    def create_memory(self, *, resource_id: str | None = None, **config: Any) -> str:
        """A ``memory``: conversation threads, kept by the orchestrator after every turn."""
        return self._create("memory", config, resource_id)

    def create_chain(self, prompt: str | dict[str, Any] | None = None, model: str | dict[str, Any] | None = None,
                     parser: str | dict[str, Any] | None = None, *, code: str | None = None,
                     resource_id: str | None = None) -> str:
        """A ``chain`` through ``langchain:create_chain``: prompt | model | parser, or ``code`` with build()."""
        args: dict[str, Any] = {k: v for k, v in (("prompt", prompt), ("model", model), ("parser", parser),
                                                  ("code", code), ("resource_id", resource_id)) if v is not None}
        return str(self.client.call(self.bridge, f"{self.namespace}:create_chain", args)["chain_id"])

    def create_agent(self, model: str | dict[str, Any], tools: list[str | Callable[..., Any]] | None = None, *,
                     system_prompt: str | None = None, memory: str | None = None,
                     resource_id: str | None = None) -> str:
        """An ``agent``; ``tools`` are tool ids, or callables (made client tools, answered by this adapter)."""
        ids = [t if isinstance(t, str) else self.create_tool(t) for t in tools or []]
        config: dict[str, Any] = {"model": model, "tools": ids}
        if system_prompt is not None:
            config["system_prompt"] = system_prompt
        if memory is not None:
            config["memory"] = memory
        rid = self._create("agent", config, resource_id)
        if self._client_tool_ids.intersection(ids):
            self._asks.add(rid)
        return rid

    # -- running ----------------------------------------------------------------------------
    @staticmethod
    def _config(config: dict[str, Any] | None, thread_id: str | None) -> dict[str, Any]:
        out = dict(config or {})
        if thread_id is not None:
            out["thread_id"] = thread_id
        return out

    def invoke(self, runnable: str | dict[str, Any], input: Any, *, config: dict[str, Any] | None = None,
               thread_id: str | None = None, tools: dict[str, Callable[..., Any]] | None = None,
               timeout: float | None = None) -> Any:
        """Run once; the output (a chain's value; an agent's whole reply: output, messages, thread_id).

        Streams under the hood when client tools may be called, so they can be answered.
        """
        cfg = self._config(config, thread_id)
        if tools or (isinstance(runnable, str) and runnable in self._asks):
            for ev in self.stream(runnable, input, config=cfg, tools=tools, timeout=timeout):
                if ev.kind == "result":
                    return _unwrap(ev.data)
            raise InvalidResult("the stream ended without a result")
        if isinstance(runnable, dict):
            reply = self.client.call(self.bridge, f"{self.namespace}:invoke",
                                     {"runnable": runnable, "input": input, "config": cfg}, timeout=timeout)
        else:
            reply = self.client.execute_resource(runnable, {"input": input, "config": cfg}, timeout=timeout)
        return _unwrap(reply)

    def batch(self, runnable: str, inputs: list[Any], *, max_concurrency: int | None = None,
              config: dict[str, Any] | None = None, return_exceptions: bool = False,
              timeout: float | None = None) -> list[Any]:
        """Run on each input, ``max_concurrency`` at a time; outputs in input order."""
        args: dict[str, Any] = {"inputs": inputs, "config": config or {}, "return_exceptions": return_exceptions}
        if max_concurrency is not None:
            args["max_concurrency"] = max_concurrency
        return list(self.client.execute_resource(runnable, args, timeout=timeout)["outputs"])

    def stream(self, runnable: str | dict[str, Any], input: Any, *, config: dict[str, Any] | None = None,
               thread_id: str | None = None, tools: dict[str, Callable[..., Any]] | None = None,
               timeout: float | None = None) -> Iterator[Event]:
        """Events as they come: chunks (token, tool_start, tool_end), progress, requests, then the result.

        A ``tool_call`` request is answered with the function of that name from
        ``tools`` or from the client tools this adapter created, before the
        request event is yielded; an exception it raises is sent as the
        answer's error.
        """
        call_id = uuid.uuid4().hex
        handlers = {**self.client_tools, **(tools or {})}
        cfg = self._config(config, thread_id)
        if isinstance(runnable, dict):
            events = self._streaming.call_stream(self.bridge, f"{self.namespace}:stream",
                                                 {"runnable": runnable, "input": input, "config": cfg},
                                                 call_id=call_id, timeout=timeout)
        else:
            events = self.client.stream_resource(runnable, {"input": input, "config": cfg}, call_id=call_id,
                                                 timeout=timeout)
        for ev in events:
            if ev.kind == "request" and ev.data.get("kind") == "tool_call":
                self._answer(ev, handlers)
            yield ev

    def _answer(self, ev: Event, handlers: dict[str, Callable[..., Any]]) -> None:
        req = ev.data.get("data") or {}
        fn = handlers.get(req.get("tool", ""))
        if fn is None:
            self._streaming.answer(ev.call_id, ev.data["request_id"],
                                   error=f"no client function for tool {req.get('tool')!r}")
            return
        try:
            result = fn(**(req.get("args") or {}))
        except Exception as exc:  # noqa: BLE001 - the worker gets the client's error as the answer
            self._streaming.answer(ev.call_id, ev.data["request_id"], error=f"{type(exc).__name__}: {exc}")
            return
        self._streaming.answer(ev.call_id, ev.data["request_id"], result)

    def stats(self) -> dict[str, Any]:
        """Resources by type and run counters of this tenant's worker."""
        return self.client.call(self.bridge, f"{self.namespace}:stats", {})  # type: ignore[no-any-return]


def _unwrap(reply: Any) -> Any:
    """A chain's ``{"output": x}`` is ``x``; an agent's reply (output, messages, thread_id) stays whole."""
    if isinstance(reply, dict) and set(reply) == {"output"}:
        return reply["output"]
    return reply
