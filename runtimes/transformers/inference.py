"""What a ``model`` resource answers when executed, by kind, with no pipeline in between.

A model resource is the raw model: its execute returns what the model
computes, not a pipeline's post-processed view of it, so a client can check
logits against its own copy of the model, or generate with streaming without
creating a pipeline.

- ``causal-lm``: ``generate`` per prompt (every parameter goes to ``generate``);
  ``{"text", "token_ids"}`` of the new tokens (streamed as ``{"text": piece}``
  chunks when the call streams).
- ``sequence-classification``: ``{"logits", "label", "score"}`` (score: the
  label's softmax probability).
- ``token-classification``: ``{"tokens", "logits"}``, one row per token.
- ``masked-lm``: ``{"masks": [{"position", "top": [{"token_id", "token", "logit"}]}]}``
  for each mask token (``top_k`` best, default 5).
- ``base``: ``{"embedding"}``, the mean of the last hidden state.

Each text runs alone (no padding), so the figures are exactly what the same
model gives on the host for that text. Every forward pass runs under
``torch.inference_mode()``.
"""

from __future__ import annotations

from typing import Any

from runtimes.core import CallContext
from runtimes.wire.errors import ConfigError, InvalidArgument

from .generation import generation_hooks
from .outputs import to_json

__all__ = ["TOKENIZER_KEYS", "forward", "generate"]

#: Parameters of a non-generating model call that go to the tokenizer.
TOKENIZER_KEYS = ("truncation", "max_length", "add_special_tokens")


def _encode(tokenizer: Any, text: str, params: dict[str, Any], device: str) -> Any:
    kwargs = {k: params[k] for k in TOKENIZER_KEYS if k in params}
    return tokenizer(text, return_tensors="pt", **kwargs).to(device)


def generate(model: Any, tokenizer: Any, device: str, ctx: CallContext, prompt: str,
             params: dict[str, Any]) -> dict[str, Any]:
    """Generate from one prompt; streams text chunks through ``ctx`` when the call streams."""
    import torch

    enc = _encode(tokenizer, prompt, {}, device)
    gen = dict(params)
    if gen.get("pad_token_id") is None and tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        gen["pad_token_id"] = tokenizer.eos_token_id
    hooks, streamer = generation_hooks(ctx, tokenizer, gen.get("num_beams", 1))
    with torch.inference_mode():
        out = model.generate(**enc, **gen, **hooks)
    ctx.check()
    prompt = int(enc["input_ids"].shape[1])
    new = out[0][prompt:].tolist()
    text = streamer.text if streamer is not None else tokenizer.decode(new, skip_special_tokens=True)
    # prompt_tokens is for the caller's usage accounting; it takes it out before replying.
    return {"text": text, "token_ids": new, "prompt_tokens": prompt}


def forward(model: Any, tokenizer: Any, kind: str, device: str, text: str, params: dict[str, Any]) -> dict[str, Any]:
    """One forward pass over ``text``; the figures ``kind`` calls for (see the module docstring)."""
    import torch

    unknown = sorted(set(params) - set(TOKENIZER_KEYS) - {"top_k"})
    if unknown:
        raise InvalidArgument(f"a {kind} model takes parameters {', '.join(TOKENIZER_KEYS)}"
                              f"{' and top_k' if kind == 'masked-lm' else ''}; not {', '.join(unknown)}")
    enc = _encode(tokenizer, text, params, device)
    with torch.inference_mode():
        out = model(**enc)
        if kind == "sequence-classification":
            logits = out.logits[0]
            probs = logits.float().softmax(-1)
            best = int(probs.argmax())
            labels = getattr(model.config, "id2label", None) or {}
            return {"logits": to_json(logits), "label": labels.get(best, str(best)), "score": float(probs[best])}
        if kind == "token-classification":
            ids = enc["input_ids"][0].tolist()
            return {"tokens": tokenizer.convert_ids_to_tokens(ids), "logits": to_json(out.logits[0])}
        if kind == "masked-lm":
            return {"masks": _masks(tokenizer, enc["input_ids"][0], out.logits[0], params.get("top_k", 5))}
        if kind == "base":
            hidden = out.last_hidden_state[0]
            return {"embedding": to_json(hidden.float().mean(0))}
    raise ConfigError(f"a {kind} model cannot run a forward pass here")


def _masks(tokenizer: Any, ids: Any, logits: Any, top_k: Any) -> list[dict[str, Any]]:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 100:
        raise InvalidArgument("top_k must be an integer from 1 to 100")
    if tokenizer.mask_token_id is None:
        raise ConfigError("this tokenizer has no mask token, so a masked-lm model has nothing to fill")
    out = []
    for pos in (ids == tokenizer.mask_token_id).nonzero().flatten().tolist():
        values, best = logits[pos].topk(min(top_k, logits.shape[-1]))
        out.append({"position": pos, "top": [
            {"token_id": int(t), "token": tokenizer.convert_ids_to_tokens(int(t)), "logit": float(v)}
            for v, t in zip(values.tolist(), best.tolist(), strict=True)]})
    if not out:
        raise InvalidArgument(f"the text has no mask token; put {tokenizer.mask_token} where a word should be filled in")
    return out
