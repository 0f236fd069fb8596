"""LangChain values as JSON: what replies, stream events and tool calls carry.

Runnables return messages, pydantic models, documents, tuples; the wire takes
JSON. Messages keep what a client needs to read a conversation (type, text,
tool calls, the tool call they answer) and drop provider bookkeeping
(response metadata, usage, ids of runs). Anything unknown becomes its
``str()``, so a reply never fails for a value's type alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["content_text", "message_json", "to_json"]

MAX_DEPTH = 32


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text blocks of a block list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Mapping) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
        return "".join(parts)
    return "" if content is None else str(content)


def message_json(msg: Any) -> dict[str, Any]:
    """A message as ``{"type", "content", ...}`` (tool calls, name, tool_call_id when set)."""
    content = msg.content if isinstance(msg.content, str) else to_json(msg.content)
    out: dict[str, Any] = {"type": msg.type, "content": content}
    tool_calls = getattr(msg, "tool_calls", None)
    if tool_calls:
        out["tool_calls"] = [{"name": tc.get("name"), "args": to_json(tc.get("args")), "id": tc.get("id")}
                             for tc in tool_calls]
    for attr in ("name", "tool_call_id", "status"):
        value = getattr(msg, attr, None)
        if value and not (attr == "status" and value == "success"):
            out[attr] = value
    return out


def to_json(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON-serialisable data."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth > MAX_DEPTH:
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): to_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    from langchain_core.documents import Document
    from langchain_core.messages import BaseMessage
    from langchain_core.prompt_values import PromptValue

    if isinstance(value, BaseMessage):
        return message_json(value)
    if isinstance(value, PromptValue):
        return {"messages": [message_json(m) for m in value.to_messages()]}
    if isinstance(value, Document):
        return {"page_content": value.page_content, "metadata": to_json(value.metadata, depth + 1)}
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return to_json(dump(mode="json"), depth + 1)
        except Exception:  # noqa: BLE001 - a model that cannot dump itself is shown as text
            return str(value)
    update = getattr(value, "update", None)  # langgraph's Command(update=...)
    if type(value).__name__ == "Command" and update is not None:
        return {"command": to_json(update, depth + 1)}
    return str(value)
