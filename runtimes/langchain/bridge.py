"""The ``langchain`` bridge: chains, agents, tools, memory, prompts and models as resources.

Resource types: ``model`` and ``prompt`` (:mod:`.resources`), ``chain``
(declarative or code-defined), ``tool`` (code or client, :mod:`.tools`),
``memory`` (:mod:`.memory`), ``agent`` (:mod:`.agents`). Every runnable type
executes with ``{"input", "config"}`` (or ``{"inputs", "max_concurrency"}``
for a batch) and streams through ``astream_events`` (:mod:`.events`).

Commands: ``langchain:create_chain`` makes a chain resource (the orchestrator
records it like any other); ``langchain:invoke``, ``langchain:batch`` and
``langchain:stream`` run a runnable resource by id, or an inline chain config
once. ExecuteResource / ExecuteResourceStream on the resource's id do the
same and also re-create it (and what it refers to) on a new worker when its
worker died, so clients that must survive worker loss use those.

Provider keys arrive as tenant secrets through :meth:`Bridge.configure`; a
model config names the secret it uses. They never appear in a result, an
info summary, an error or a log record. ``import langchain`` happens in
:meth:`LangChainBridge.setup` and in hooks, never at import time, so
describing this bridge stays fast.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Generator
from typing import Any

from runtimes.core import CallContext, InvalidArgument, command
from runtimes.core.redaction import install_log_redaction
from runtimes.wire import metadata as meta
from runtimes.wire.errors import AlreadyExists, MLBridgeError

from . import errors, running
from .agents import AgentResource
from .base import LangChainBase, RunnableResource
from .memory import MemoryResource
from .resources import ChainResource, ModelResource, PromptResource
from .running import CONFIG_SCHEMA
from .tools import ToolResource

__all__ = ["LangChainBridge"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_RUNNABLE = {"type": ["string", "object"], "description": "a runnable resource id, or an inline chain config"}
_RUN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"runnable": _RUNNABLE, "input": {"description": "the Runnable's input"},
                   "config": CONFIG_SCHEMA},
    "required": ["runnable", "input"],
    "additionalProperties": False,
}
_BATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"runnable": _RUNNABLE, "inputs": {"type": "array"}, "config": CONFIG_SCHEMA,
                   "max_concurrency": {"type": "integer"}, "return_exceptions": {"type": "boolean"}},
    "required": ["runnable", "inputs"],
    "additionalProperties": False,
}
_CREATE_CHAIN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {**ChainResource.config_schema["properties"],
                   "resource_id": {"type": "string", "description": "the new chain's id (default: generated)"}},
    "additionalProperties": False,
}


_WARM_UP_CHAIN = {"prompt": {"template": "{x}"}, "model": {"provider": "fake", "responses": ["ok"]}, "parser": "str"}


class LangChainBridge(LangChainBase):
    """Serves LangChain 1.x and LangGraph in one worker."""

    name = "langchain"
    framework = "langchain"
    resource_types = (ModelResource, PromptResource, ChainResource, ToolResource, MemoryResource, AgentResource)
    # Provider keys are not fixed: each model config names the secret it needs.
    required_secrets = ()
    packages = ("langchain-core", "langgraph", "langchain-openai", "langchain-anthropic", "langchain-google-genai",
                "openai", "pydantic")

    # -- hooks ------------------------------------------------------------------------------
    def setup(self) -> None:
        # No tracing endpoint: a worker reaches only its tenant's allowlist, and sends no telemetry.
        os.environ["LANGSMITH_TRACING"] = os.environ["LANGCHAIN_TRACING_V2"] = "false"
        import langchain.agents  # noqa: F401 - warm the imports a first call would pay for
        import langchain.chat_models  # noqa: F401
        import langchain_core.runnables  # noqa: F401
        import langgraph.checkpoint.memory  # noqa: F401

        self._warm_up()
        install_log_redaction(lambda: list(self.secrets.values()))

    def _warm_up(self) -> None:
        """Build and run one tiny offline chain through this bridge's own code, so a tenant's first
        call pays for none of LangChain's lazy imports and first-use work; the counters start at 0."""
        # On a thread of its own, as calls run: setup is called on the runtime's event loop.
        self.executor.submit(self._offline_chain, "warm").result()
        with self._lock:
            self._counts = dict.fromkeys(self._counts, 0)

    def _offline_chain(self, text: str) -> Any:
        """The warm-up chain (prompt | fake model | parser), built and run through this bridge's own code;
        counted nowhere (neither stats nor metrics)."""
        ctx = CallContext(call_id="warm-up", command="langchain:invoke")
        chain = self._runnable(ctx, dict(_WARM_UP_CHAIN))
        return running.invoke(chain.runnable, {"x": text}, running.run_config(None, ctx), ctx, self.executor)

    def health(self) -> dict[str, tuple[bool, str]]:
        """One offline chain (prompt | fake chat model | parser) through this bridge's own code."""
        import langchain_core

        try:
            out = self._offline_chain("health")
        except Exception as exc:  # noqa: BLE001 - a failing check, not a failed call
            return {"fake_chain": (False, self.to_error(exc).flat())}
        ok = out == "ok"
        return {"fake_chain": (ok, f"langchain-core {langchain_core.__version__}: the fake chain answered "
                                   f"{str(out)[:60]!r}")}

    def translate_error(self, exc: BaseException) -> MLBridgeError | None:
        return errors.translate(exc, self.secrets.values())

    def stats(self) -> dict[str, Any]:
        return {"resources": self.resources.counts_by_type(), **self.counts()}

    # -- commands -------------------------------------------------------------------------------
    @command("create_chain", description="Create a chain resource (prompt | model | parser, or code); "
             "returns its id", schema=_CREATE_CHAIN_SCHEMA)
    def create_chain(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        config = {k: v for k, v in args.items() if k != "resource_id"}
        rid = args.get("resource_id") or f"chain_{uuid.uuid4().hex[:20]}"
        if not _ID.match(rid):
            raise InvalidArgument(f"resource_id {rid!r} must match {_ID.pattern}")
        if rid in self.resources:
            raise AlreadyExists(f"resource {rid!r} already exists")
        chain = ChainResource(self, rid, config)
        chain.create(ctx)
        self.resources.add(chain)
        info = chain.info()
        # The orchestrator records the chain like a CreateResource, so it can re-create it elsewhere.
        ctx.metadata[meta.CREATED_RESOURCES] = json.dumps(
            [{"resource_id": rid, "type": ChainResource.type_name, "config": config, "info": info}])
        return {"chain_id": rid, "type": ChainResource.type_name, "info": info}

    @command("invoke", description="Run a runnable resource (or an inline chain) once: {runnable, input, config}",
             schema=_RUN_SCHEMA)
    def invoke(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return self._runnable(ctx, args["runnable"]).run(ctx, args["input"], args.get("config"))

    @command("batch", description="Run a runnable on many inputs, max_concurrency at a time: {runnable, inputs}",
             schema=_BATCH_SCHEMA)
    def batch(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        res = self._runnable(ctx, args["runnable"])
        return res.run_batch(ctx, {k: v for k, v in args.items() if k != "runnable"})

    @command("stream", description="Run a runnable streaming tokens, tool start/end and progress, then "
             "{output}", schema=_RUN_SCHEMA)
    def stream(self, ctx: CallContext, args: dict[str, Any]) -> Generator[dict[str, Any], None, Any]:
        res = self._runnable(ctx, args["runnable"])
        return (yield from res.run_stream(ctx, args["input"], args.get("config")))

    @command("stats", description="Resources by type, invocations, batches, streams and agent turns", inline=True)
    def langchain_stats(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return self.stats()

    def _runnable(self, ctx: CallContext, ref: Any) -> RunnableResource:
        if isinstance(ref, dict):  # an inline chain, built for this call only
            chain = ChainResource(self, "inline", ref)
            chain.create(ctx)
            chain.delete(ctx)  # drops only the code module's sys.modules entry; the chain keeps working
            return chain
        if not isinstance(ref, str) or not ref:
            raise InvalidArgument("'runnable' must be a resource id or an inline chain config")
        res = self.resources.get(ref)
        if not isinstance(res, RunnableResource):
            raise InvalidArgument(f"resource {ref!r} is a {res.type_name!r}, which cannot be run; runnable types: "
                                  f"model, prompt, chain, tool, agent")
        return res
