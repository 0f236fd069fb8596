"""The ``agent`` resource: LangChain's ``create_agent`` over a model, tools and a memory.

A turn takes ``{"input": <text | messages | state>, "config": {"thread_id",
"recursion_limit", "tags"}}`` and returns ``{"output": <the final answer's
text>, "messages": <this turn's messages>, "thread_id"}``. With a ``memory``,
the turn holds that thread (one turn at a time per thread), and then:

- it succeeded: the memory is named with ``ctx.save_state``, so the
  orchestrator stores its checkpoints before the reply goes out;
- it failed or was cancelled: the thread is put back as it was before the
  turn, so a retried turn starts from the last finished one.

Client tools (:mod:`.tools`) need a streaming call; code tools run here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from runtimes.core import CallContext, InvalidArgument

from .base import RunnableResource
from .jsonify import content_text, message_json, to_json
from .memory import MemoryResource
from .resources import lookup, part

__all__ = ["AgentResource"]

DEFAULT_THREAD = "default"
MAX_TOOLS = 128


@dataclass
class Turn:
    thread_id: str | None
    before: int  # messages in the thread before this turn


class AgentResource(RunnableResource):
    type_name = "agent"
    description = ("create_agent(model, tools, system_prompt) with an optional memory (checkpoints by "
                   "config.thread_id, kept by the orchestrator); execute {input, config} runs one turn")
    config_schema = {
        "type": "object",
        "properties": {
            "model": {"type": ["string", "object"], "description": "model resource id, or a model config"},
            "tools": {"type": "array", "description": "tool resource ids"},
            "system_prompt": {"type": "string"},
            "memory": {"type": "string", "description": "memory resource id: conversations by thread_id"},
            "name": {"type": "string"},
        },
        "required": ["model"],
        "additionalProperties": False,
    }

    def create(self, ctx: CallContext) -> None:
        from langchain.agents import create_agent

        cfg = self.config
        tool_ids = cfg.get("tools", [])
        if not isinstance(tool_ids, list) or len(tool_ids) > MAX_TOOLS:
            raise InvalidArgument(f"agent 'tools' must be a list of at most {MAX_TOOLS} tool resource ids")
        tools = [lookup(self, t, "tool") for t in tool_ids]
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise InvalidArgument(f"agent tools must have distinct names, got {', '.join(names)}")
        self.memory: MemoryResource | None = None
        if cfg.get("memory") is not None:
            self.memory = self.bridge.resources.get_as(cfg["memory"], MemoryResource, "memory")
        model = part(self, "model", cfg["model"])
        self.runnable = create_agent(model, tools, system_prompt=cfg.get("system_prompt"),
                                     checkpointer=self.memory.saver if self.memory is not None else None,
                                     name=cfg.get("name"))
        self.tool_names = names

    def prepare_input(self, value: Any) -> Any:
        if isinstance(value, str):
            return {"messages": [{"role": "user", "content": value}]}
        if isinstance(value, list):
            return {"messages": value}
        if isinstance(value, dict) and "messages" in value:
            return value
        raise InvalidArgument("an agent's input is text, a list of messages, or {messages: [...]}")

    @contextlib.contextmanager
    def turn(self, ctx: CallContext, config: dict[str, Any]) -> Iterator[Turn]:
        self.bridge.count("agent_turns")
        memory = self.memory
        if memory is None:
            yield Turn(None, 0)
            return
        tid = config.setdefault("configurable", {}).setdefault("thread_id", DEFAULT_THREAD)
        with memory.holding(ctx, tid):
            before = memory.export_thread(tid)
            turn = Turn(tid, len(memory.messages(tid)))
            try:
                yield turn
            except BaseException:
                memory.rollback(tid, before)  # the thread is as it was before the turn
                raise
            ctx.save_state(memory)  # the orchestrator keeps the finished turn before the reply goes out

    def result(self, output: Any, turn: Any) -> dict[str, Any]:
        if not isinstance(output, dict) or not isinstance(output.get("messages"), list):
            return {"output": to_json(output)}
        msgs = output["messages"][turn.before if turn is not None else 0:]
        answer = next((m for m in reversed(msgs) if getattr(m, "type", "") == "ai"), None)
        out: dict[str, Any] = {"output": content_text(answer.content) if answer is not None else "",
                               "messages": [message_json(m) for m in msgs]}
        if turn is not None and turn.thread_id is not None:
            out["thread_id"] = turn.thread_id
        if "structured_response" in output:
            out["structured_response"] = to_json(output["structured_response"])
        return out

    def check_batchable(self) -> None:
        if self.memory is not None:
            raise InvalidArgument("an agent with memory runs one turn at a time per thread; use invoke "
                                  "(or stream) per turn instead of a batch")

    def info(self) -> dict[str, Any]:
        cfg = self.config
        model = cfg.get("model")
        return {"model": model if isinstance(model, str) else "inline", "tools": getattr(self, "tool_names", []),
                "memory": cfg.get("memory"), "system_prompt": bool(cfg.get("system_prompt"))}
