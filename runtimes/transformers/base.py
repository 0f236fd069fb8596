"""What the transformers bridge's resources share: the bridge's per-worker state and input checks.

The resources (:mod:`.resources`, :mod:`.pipelines`, and the training
engineer's :mod:`.datasets` / :mod:`.training`) reach their bridge through
:class:`TransformersBase`, and the bridge (:mod:`.bridge`) adds its hooks on
top, so the modules import in one direction only.

Every executable resource takes ``{"inputs": text | [texts], "parameters":
{...}}``. Parameters are passed to transformers as keyword arguments, so
the few that are not data but hooks or code (a streamer, a custom
``generate`` fetched from the hub, worker processes) are refused here:
JSON cannot carry a callable, and ``custom_generate`` or ``trust_remote_code``
would run code the model store never recorded.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from runtimes.core import Bridge, CallContext, Resource
from runtimes.wire.errors import InvalidArgument

__all__ = ["BATCH_BUCKETS", "LOAD_BUCKETS", "MAX_INPUTS", "TransformersBase", "TransformersResource", "check_keys", "holding", "parameters", "serial",
           "texts"]

#: Most texts one call may send.
MAX_INPUTS = 1024
#: Buckets of the ``batch_size`` metric (requests per model invocation).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
#: Buckets of the ``model_load_seconds`` metric.
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
#: Keyword arguments a call may not pass to a pipeline, ``generate`` or a tokenizer.
REFUSED_PARAMETERS = frozenset({
    "streamer", "stopping_criteria", "logits_processor", "prefix_allowed_tokens_fn", "assistant_model",
    "assistant_tokenizer", "generation_config", "custom_generate", "trust_remote_code", "synced_gpus",
    "num_workers", "device", "tokenizer", "model", "negative_prompt_ids", "negative_prompt_attention_mask",
})


_LOCKS_GUARD = threading.Lock()


def serial(tokenizer: Any) -> threading.Lock:
    """The lock every use of ``tokenizer`` holds: one call at a time per tokenizer.

    A fast tokenizer is a Rust object that changes its own padding and
    truncation settings per call; two threads doing that at once fail
    ("Already borrowed") or tokenize with each other's settings. Pipelines,
    model and tokenizer resources sharing a tokenizer therefore take turns;
    a batching pipeline turns the many callers into one invocation anyway.
    """
    lock: threading.Lock | None = getattr(tokenizer, "_mlbridge_lock", None)
    if lock is None:
        with _LOCKS_GUARD:
            lock = getattr(tokenizer, "_mlbridge_lock", None)
            if lock is None:
                lock = threading.Lock()
                tokenizer._mlbridge_lock = lock
    return lock


@contextlib.contextmanager
def holding(lock: threading.Lock, ctx: CallContext) -> Iterator[None]:
    """Hold ``lock``; while waiting for it, a cancelled call or one past its deadline gives up."""
    while not lock.acquire(timeout=0.2):
        ctx.check()
    try:
        yield
    finally:
        lock.release()


class TransformersBase(Bridge):
    """Per-worker counters ``transformers:stats`` reports (calls and generated tokens), and the bridge's
    metrics (``batch_size``, ``model_load_seconds``, ``tokens_generated``)."""

    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self.batch_size = self.metrics.histogram("batch_size", "Requests per model invocation (adaptive batching)",
                                                 buckets=BATCH_BUCKETS)
        self.model_load_seconds = self.metrics.histogram(
            "model_load_seconds", "Seconds to size, verify and read a model from the store", buckets=LOAD_BUCKETS)
        self.tokens_generated = self.metrics.counter("tokens_generated", "Tokens generated", labels=("model",))

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def generated(self, ctx: CallContext, model: str, tokens_in: int, tokens_out: int) -> None:
        """Count a generation: the stats' ``generated_tokens``, the ``tokens_generated`` metric and the
        call's usage (:meth:`CallContext.record_tokens`)."""
        self.count("generated_tokens", tokens_out)
        self.tokens_generated.inc(tokens_out, model=model or "unknown")
        ctx.record_tokens(tokens_in=tokens_in, tokens_out=tokens_out)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class TransformersResource(Resource):
    bridge: TransformersBase


def check_keys(value: dict[str, Any], schema: dict[str, Any], what: str) -> None:
    """Refuse keys the schema does not list (the SDK checks only required keys and top-level types)."""
    allowed = schema.get("properties", {})
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise InvalidArgument(f"{what} does not take {', '.join(map(repr, unknown))}; it takes: {', '.join(allowed)}")


def texts(inputs: dict[str, Any], what: str) -> tuple[list[str], bool]:
    """The call's texts and whether it sent one text (not a list)."""
    value = inputs.get("inputs")
    if isinstance(value, str):
        return [value], True
    if isinstance(value, list) and value and len(value) <= MAX_INPUTS and all(isinstance(v, str) for v in value):
        return list(value), False
    raise InvalidArgument(f"{what} takes {{\"inputs\": text or a list of 1 to {MAX_INPUTS} texts, "
                          f"\"parameters\": {{...}}}}")


def parameters(*layers: Any) -> dict[str, Any]:
    """The call's keyword arguments: each layer (resource defaults, then the call's) over the last.

    Raises:
        InvalidArgument: a layer is not an object, or names a refused parameter.
    """
    out: dict[str, Any] = {}
    for layer in layers:
        if layer is None:
            continue
        if not isinstance(layer, dict):
            raise InvalidArgument("parameters must be a JSON object of keyword arguments")
        refused = sorted(REFUSED_PARAMETERS.intersection(layer))
        if refused:
            raise InvalidArgument(f"parameter(s) {', '.join(refused)} cannot be set by a call (hooks, code or "
                                  f"placement the bridge controls); leave them out")
        out.update(layer)
    return out
