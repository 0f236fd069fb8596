"""Pipeline and model outputs as JSON, and one caller's share of a batched pipeline output.

Pipelines return numpy scalars (a token-classification score is a
``np.float32``), arrays and tensors; the reply must be plain JSON, so
:func:`to_json` turns them into floats, ints and lists (a non-finite float
becomes ``null``: JSON has no NaN). It walks only containers, so the common
case (a list of small dicts of str and float) costs microseconds.

Batching runs a pipeline on a list of texts; a pipeline answers a list in a
shape that can differ from what it answers for each text alone.
:func:`unbatch` turns one element of a batched answer into exactly what
the pipeline gives that caller's call unbatched, so a caller cannot tell
whether its call was batched.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["to_json", "unbatch"]


def to_json(value: Any) -> Any:
    """``value`` with numpy and torch values turned into JSON-safe Python values."""
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist):
        if hasattr(value, "detach"):
            value = value.detach().cpu()
        return to_json(tolist())
    return str(value)


def unbatch(task: str, output: Any, text: Any, single: bool, tokenizer: Any = None,
            params: dict[str, Any] | None = None) -> Any:
    """What the pipeline answers unbatched for ``text``, from its element of a batched answer.

    ``single``: the caller sent this text alone (not in a list).
    text-classification answers a lone text with a list of one dict, and an
    element of a list with the dict itself. feature-extraction pads every
    text of a batch to the longest; the padding rows are cut off here (the
    tokenizer says how many tokens the text has alone).
    """
    if task == "text-classification" and single and isinstance(output, dict):
        return [output]
    if task == "feature-extraction" and tokenizer is not None and isinstance(text, str):
        kwargs = dict((params or {}).get("tokenize_kwargs") or {})
        if "truncation" in (params or {}):
            kwargs["truncation"] = (params or {})["truncation"]
        length = len(tokenizer(text, **kwargs)["input_ids"])
        left = getattr(tokenizer, "padding_side", "right") == "left"
        return [rows[-length:] if left else rows[:length] for rows in output]
    return output
