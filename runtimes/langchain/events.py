"""``astream_events`` (v2) as mlbridge stream events.

LangChain reports a run as a tree of start / stream / end events. A client
wants far less: the tokens as they come, which tool ran with what and what it
gave back, and where the run is. So, as chunks:

``{"type": "token", "text", "node"?}``
    a piece of a chat model's (or LLM's) reply; ``node`` is the LangGraph
    node that called the model (``"model"`` in an agent)
``{"type": "tool_start", "tool", "input", "run_id"}`` / ``{"type": "tool_end", "tool", "output", "run_id"}``
    a tool call and its result (``tool_error`` with ``error`` when it raised)

and, as mlbridge progress events, one step per model call and per tool call
(total unknown: 0). The root run's output becomes the call's final result;
nothing else of the event stream (chain starts, parser chunks that repeat the
tokens, internal graph updates) goes to the client.
"""

from __future__ import annotations

from typing import Any

from runtimes.core import CallContext

from .jsonify import content_text, to_json

__all__ = ["EventMapper"]

# Longest tool input/output text put in an event; the full value stays in the run.
MAX_EVENT_TEXT = 16 * 1024


def _clip(value: Any) -> Any:
    data = to_json(value)
    if isinstance(data, str) and len(data) > MAX_EVENT_TEXT:
        return data[:MAX_EVENT_TEXT] + f"... [{len(data) - MAX_EVENT_TEXT} characters more]"
    return data


class EventMapper:
    """Turns one run's events into chunks and progress; keeps the root run's output."""

    def __init__(self, ctx: CallContext) -> None:
        self.ctx = ctx
        self.steps = 0
        self.tokens = 0
        self.output: Any = None
        self.finished = False

    def _step(self, message: str) -> None:
        self.steps += 1
        self.ctx.progress(self.steps, 0, message)

    def feed(self, ev: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks one event becomes (often none)."""
        kind = ev.get("event", "")
        data = ev.get("data") or {}
        name = ev.get("name", "")
        if kind.endswith("_end") and not ev.get("parent_ids"):
            self.output, self.finished = data.get("output"), True
        if kind in ("on_chat_model_stream", "on_llm_stream"):
            chunk = data.get("chunk")
            text = content_text(getattr(chunk, "content", None)) if kind == "on_chat_model_stream" \
                else str(getattr(chunk, "text", "") or "")
            if not text:
                return []
            self.tokens += 1
            out: dict[str, Any] = {"type": "token", "text": text}
            node = (ev.get("metadata") or {}).get("langgraph_node")
            if node:
                out["node"] = node
            return [out]
        if kind in ("on_chat_model_start", "on_llm_start"):
            self._step(f"model {name}")
            return []
        if kind == "on_tool_start":
            self._step(f"tool {name}")
            return [{"type": "tool_start", "tool": name, "input": _clip(data.get("input")), "run_id": ev.get("run_id")}]
        if kind == "on_tool_end":
            output = data.get("output")
            if getattr(output, "type", None) == "tool":  # a ToolMessage: its content is the result
                output = output.content
            return [{"type": "tool_end", "tool": name, "output": _clip(output), "run_id": ev.get("run_id")}]
        if kind == "on_tool_error":
            return [{"type": "tool_error", "tool": name, "error": _clip(str(data.get("error"))),
                     "run_id": ev.get("run_id")}]
        return []
