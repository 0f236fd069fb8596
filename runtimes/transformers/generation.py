"""Token streaming and cancellation for text generation.

``generate`` runs in the handler's own thread; a :class:`ChunkStreamer`
(transformers' streamer protocol: ``put`` per new token, ``end`` at the
end) decodes what was generated so far and hands each new piece of text to
the call's ``ctx.emit`` at once, so the client sees a chunk per token while
the model is still working. Text is held back only while it ends in an
incomplete UTF-8 sequence (a byte-level BPE token can be half a
character), so the chunks concatenated are exactly the text decoded at the
end, which the final result carries as ``text``.

:class:`StopOnCancel` is a stopping criterion checked after every token: a
cancelled call, or one past its deadline, stops generating within one token
and the handler then raises the matching error, so the worker is free again
at once (the dispatcher would otherwise report it stuck).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtimes.core import CallContext
from runtimes.wire.errors import InvalidArgument

__all__ = ["ChunkStreamer", "StopOnCancel", "generation_hooks"]

_INCOMPLETE = "\ufffd"


class ChunkStreamer:
    """Decodes the new tokens of one sequence as they come; ``emit(text)`` gets each new piece.

    It follows transformers' streamer protocol (``BaseStreamer``: ``put``, ``end``)
    by duck typing, so importing this module does not import transformers.
    """

    def __init__(self, tokenizer: Any, emit: Callable[[str], None], *, skip_prompt: bool = True,
                 skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.emit = emit
        self.skip_prompt = skip_prompt
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.sent = ""
        self.tokens = 0
        self._prompt_pending = skip_prompt

    def put(self, value: Any) -> None:
        if value.dim() > 1:
            if value.shape[0] != 1:
                raise InvalidArgument("streaming generates one sequence at a time: send one prompt, with "
                                      "num_return_sequences 1 and num_beams 1")
            value = value[0]
        if self._prompt_pending:  # generate hands the prompt over first
            self._prompt_pending = False
            return
        self.ids.extend(int(t) for t in value.tolist())
        self.tokens += int(value.numel())
        self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        if not final and text.endswith(_INCOMPLETE):
            return
        if not text.startswith(self.sent):  # a decoder that rewrote earlier text: send only what is new
            text = self.sent + text[len(self.sent):]
        piece = text[len(self.sent):]
        if piece:
            self.sent = text
            self.emit(piece)

    @property
    def text(self) -> str:
        """Everything emitted so far: the concatenation of the chunks."""
        return self.sent


class StopOnCancel:
    """Stops generation once the call is cancelled or past its deadline (checked after every token).

    A ``StoppingCriteria`` by protocol: called with the ids so far, it answers one bool per sequence.
    It also counts what was generated (:attr:`tokens`): one token per sequence per call, beams not
    counted apart (sequences that ended early count up to the longest).
    """

    def __init__(self, ctx: CallContext, beams: int = 1) -> None:
        self.ctx = ctx
        self.beams = max(1, beams)
        self.tokens = 0

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self.tokens += max(1, int(input_ids.shape[0]) // self.beams)
        left = self.ctx.remaining()
        stop = self.ctx.cancelled or (left is not None and left <= 0)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def generation_hooks(ctx: CallContext, tokenizer: Any, beams: Any = 1) -> tuple[dict[str, Any], ChunkStreamer | None]:
    """The ``generate`` keyword arguments a call adds (stopping criteria; a streamer when it streams).

    ``hooks["stopping_criteria"][0]`` is the call's :class:`StopOnCancel` (its ``tokens``: what was
    generated); ``beams`` is the call's ``num_beams``.
    """
    from transformers.generation.stopping_criteria import StoppingCriteriaList

    criteria = StoppingCriteriaList([StopOnCancel(ctx, beams if isinstance(beams, int) else 1)])
    if not ctx.streaming:
        return {"stopping_criteria": criteria}, None
    streamer = ChunkStreamer(tokenizer, lambda piece: ctx.emit({"text": piece}))
    return {"stopping_criteria": criteria, "streamer": streamer}, streamer
