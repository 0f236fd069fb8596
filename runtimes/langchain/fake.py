"""The offline ``fake`` provider: scripted replies, streamed token by token, scripted tool calls.

Built on langchain-core's own ``GenericFakeChatModel`` (so LangChain drives
it exactly like a provider model: callbacks, ``astream_events``,
``create_agent``), with what tests and demos need on top:

- a script of replies, each a string or ``{"content", "tool_calls"}``, taken
  in order (``cycle`` starts over; otherwise running out is a typed error);
- streaming that also carries tool calls (the base class drops them), and an
  optional delay per token so cancellation and time-to-first-token can be
  seen;
- ``bind_tools`` (the base class has none), so agents accept it;
- optional token usage (``usage: true``): words sent and replied, as a
  provider's ``usage_metadata``, so usage accounting can be seen offline;
- placeholders that make a reply depend on what the model was sent:
  ``{last_human}``, ``{humans}`` (every human message, `` | ``-joined) and
  ``{tool:NAME}`` (the latest result of tool NAME). An agent's answer can
  therefore really use its tools' results and its memory.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import PrivateAttr

from .errors import FakeScriptExhausted
from .jsonify import content_text

__all__ = ["ScriptedChatModel"]

_PLACEHOLDER = re.compile(r"\{(last_human|humans|tool:[A-Za-z0-9_.-]+)\}")
_TOKENS = re.compile(r"\S+\s*|\s+")


class ScriptedChatModel(GenericFakeChatModel):
    """A fake chat model answering from a script (see the module docstring)."""

    script: list[Any]
    cycle: bool = False
    delay_s: float = 0.0
    usage: bool = False
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _pos: int = PrivateAttr(default=0)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(messages=iter(()), **kwargs)

    @property
    def _llm_type(self) -> str:
        return "mlbridge-fake"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "fake"  # as the model config names it (metrics label llm_calls{provider})
        return params

    @property
    def replies_used(self) -> int:
        return self._pos

    def bind_tools(self, tools: Any, *, tool_choice: Any = None, **kwargs: Any) -> Any:
        """Accept any tools: the script, not the tools, decides what is called."""
        return self

    def _next_reply(self) -> Any:
        with self._lock:
            n = len(self.script)
            if n == 0 or (self._pos >= n and not self.cycle):
                raise FakeScriptExhausted(
                    f"the fake model has no scripted reply left ({self._pos} of {n} used); add replies "
                    f"to its 'responses', or set cycle: true")
            reply = self.script[self._pos % n]
            self._pos += 1
        return reply

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        result = self._reply(messages)
        if self.delay_s:  # generate at the streaming pace; callbacks see each token (and may stop the run)
            for token in _TOKENS.findall(content_text(result.generations[0].message.content)):
                time.sleep(self.delay_s)
                if run_manager:
                    run_manager.on_llm_new_token(token)
        return result

    def _reply(self, messages: list[BaseMessage]) -> ChatResult:
        reply = self._next_reply()
        if isinstance(reply, str):
            reply = {"content": reply}
        calls = [{"name": c["name"], "args": c.get("args", {}), "id": c.get("id") or f"call_{self._pos}_{i}",
                  "type": "tool_call"} for i, c in enumerate(reply.get("tool_calls", []))]
        content = _fill(reply.get("content", ""), messages)
        message = AIMessage(content=content, tool_calls=calls, usage_metadata=self._usage(messages, content))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _usage(self, messages: list[BaseMessage], content: str) -> Any:
        if not self.usage:
            return None
        sent = sum(len(content_text(m.content).split()) for m in messages)
        replied = len(content.split())
        return {"input_tokens": sent, "output_tokens": replied, "total_tokens": sent + replied}

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: Any = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        message = self._reply(messages).generations[0].message
        assert isinstance(message, AIMessage)
        tokens = _TOKENS.findall(content_text(message.content))
        for i, token in enumerate(tokens):
            if self.delay_s:
                time.sleep(self.delay_s)
            last = i == len(tokens) - 1 and not message.tool_calls
            chunk = ChatGenerationChunk(message=AIMessageChunk(
                content=token, id=message.id, chunk_position="last" if last else None,
                usage_metadata=message.usage_metadata if last else None))
            if run_manager:
                run_manager.on_llm_new_token(token, chunk=chunk)
            yield chunk
        if message.tool_calls:
            yield ChatGenerationChunk(message=AIMessageChunk(
                content="", id=message.id, chunk_position="last", usage_metadata=message.usage_metadata,
                tool_call_chunks=[{"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
                                  for i, c in enumerate(message.tool_calls)]))


def _fill(template: str, messages: list[BaseMessage]) -> str:
    """``template`` with its placeholders replaced from the conversation the model was sent."""
    if "{" not in template:
        return template
    humans = [content_text(m.content) for m in messages if m.type == "human"]

    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key == "last_human":
            return humans[-1] if humans else ""
        if key == "humans":
            return " | ".join(humans)
        name = key.removeprefix("tool:")
        results = [content_text(m.content) for m in messages if m.type == "tool" and getattr(m, "name", "") == name]
        return results[-1] if results else f"(no {name} result)"

    return _PLACEHOLDER.sub(sub, template)
