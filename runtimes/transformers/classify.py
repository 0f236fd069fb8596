"""A vectorised text-classification call that answers exactly as the pipeline does, for less.

Why: text classification with a small model is the serving case where the
pipeline's own machinery costs as much as the model. For a batch it
tokenizes each text on its own, pads them again in a collate function,
runs a DataLoader and post-processes one text at a time; on a 2-layer BERT
that is ~40% of a 32-text batch (6.4 ms against 3.9 ms measured on one
core), and ~0.3 ms of a lone call.

:func:`fast_classifier` returns a function that does the same work in one
tokenizer call (padding the batch as the pipeline's collate does), one
forward pass under ``torch.inference_mode()`` and one softmax over the
batch in numpy float32, exactly the pipeline's own ``softmax``, and builds
the pipeline's ``{"label", "score"}`` per text. It is used only where that
is the pipeline's answer: the task's default post-processing (no
``top_k``, ``function_to_apply`` or tokenizer arguments in the call), a
single-label classifier with at least two labels (softmax, per the
pipeline's rule) and a tokenizer that can pad; anything else goes through
the pipeline itself. The unit tests compare both paths with the pipeline
run on the host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["CHUNK", "Classify", "fast_classifier"]

#: texts -> one ``{"label", "score"}`` per text (the pipeline's element form).
Classify = Callable[[list[str]], list[dict[str, Any]]]
#: Most texts in one forward pass (a caller's long list is cut into passes of this many, bounding padding).
CHUNK = 64


def fast_classifier(pipe: Any) -> Classify | None:
    """The vectorised call for ``pipe``, or None when its answer would differ from the pipeline's."""
    import inspect

    import numpy as np
    import torch

    model, tokenizer = pipe.model, pipe.tokenizer
    config = model.config
    if getattr(pipe, "task", "") != "text-classification" or tokenizer is None or tokenizer.pad_token_id is None:
        return None
    if getattr(config, "problem_type", None) not in (None, "single_label_classification"):
        return None
    if config.num_labels < 2 or not config.id2label:
        return None
    labels = [config.id2label[i] for i in range(config.num_labels)]
    device = pipe.device
    kwargs = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}

    def chunk(texts: list[str]) -> list[dict[str, Any]]:
        with torch.inference_mode():
            enc = tokenizer(texts, padding=len(texts) > 1, return_tensors="pt").to(device)
            logits = model(**enc, **kwargs).logits.float().cpu().numpy()
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        scores = shifted / shifted.sum(axis=-1, keepdims=True)
        best = scores.argmax(axis=-1)
        return [{"label": labels[int(b)], "score": scores[i, b].item()} for i, b in enumerate(best)]

    def classify(texts: list[str]) -> list[dict[str, Any]]:
        if len(texts) <= CHUNK:
            return chunk(texts)
        return [out for start in range(0, len(texts), CHUNK) for out in chunk(texts[start:start + CHUNK])]

    return classify
