"""Building and running DSPy modules, with and without streaming.

Modules: ``Predict`` and ``ChainOfThought`` (both take only a signature).
``ProgramOfThought`` needs a Deno sandbox and ``ReAct`` needs tools, so
neither is offered.

Every call runs inside ``dspy.context(lm=...)``, never ``dspy.configure``,
so concurrent calls with different LMs in different threads do not mix.

Streaming (what was checked against DSPy 3.4.1): a streaming call wraps the
module with ``dspy.streamify(..., async_streaming=False)`` and one
``StreamListener`` per output field (plus ``reasoning`` for
ChainOfThought). Each ``StreamResponse`` becomes a chunk
``{"type": "token", "field", "text", "last"}``, and the stream always ends
with one ``{"type": "prediction", "outputs": {...}}`` chunk; the call's final
result is the same ``outputs`` dict. Real provider LMs stream tokens this
way. Plain ``dspy.utils.DummyLM`` takes a non-streaming shortcut inside
DSPy, so with it a stream holds only the final prediction chunk; the dummy
LM with ``stream_tokens: true`` streams word by word through DSPy's real
streaming path (listeners included). A response served from DSPy's cache
also arrives as the final chunk only.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

from runtimes.wire.errors import FrameworkError, InvalidArgument, InvalidResult

MODULES: tuple[str, ...] = ("Predict", "ChainOfThought")


def build_module(name: Any, signature: Any) -> Any:
    """A fresh DSPy module of the named kind for ``signature``."""
    import dspy  # type: ignore[import-untyped]

    if name not in MODULES:
        raise InvalidArgument(f"program module {name!r} is not supported; modules: {', '.join(MODULES)}")
    return getattr(dspy, name)(signature)


def check_inputs(signature: Any, inputs: dict[str, Any]) -> None:
    """InvalidArgument unless ``inputs`` holds exactly the signature's input fields."""
    want = list(signature.input_fields)
    missing = [k for k in want if k not in inputs]
    extra = sorted(set(inputs) - set(want))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s): {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected input(s): {', '.join(extra)}")
        raise InvalidArgument(f"{'; '.join(parts)} (inputs of {signature.signature!r}: {', '.join(want)})")


def outputs_of(prediction: Any, signature: Any) -> dict[str, Any]:
    """The prediction's output fields (``reasoning`` first when present), JSON-safe."""
    names = list(signature.output_fields)
    keys = list(prediction.keys())
    if "reasoning" in keys and "reasoning" not in names:
        names.insert(0, "reasoning")
    return {n: _jsonable(prediction.get(n)) for n in names if n in keys}


def run(module: Any, lm: Any, inputs: dict[str, Any]) -> Any:
    """One call of ``module`` under ``lm``; returns the Prediction."""
    import dspy  # type: ignore[import-untyped]

    with dspy.context(lm=lm):
        return module(**inputs)


def stream(module: Any, signature: Any, lm: Any,
           inputs: dict[str, Any]) -> Generator[dict[str, Any], None, dict[str, Any]]:
    """Yield token chunks then the prediction chunk; return the outputs dict."""
    import dspy  # type: ignore[import-untyped]
    from dspy.streaming import StatusMessage, StreamListener, StreamResponse  # type: ignore[import-untyped]

    fields = list(signature.output_fields)
    if isinstance(module, dspy.ChainOfThought) and "reasoning" not in fields:
        fields.insert(0, "reasoning")
    listeners = [StreamListener(signature_field_name=f) for f in fields]
    streaming = dspy.streamify(module, stream_listeners=listeners, async_streaming=False)
    prediction = None
    with dspy.context(lm=lm):
        events = streaming(**inputs)
        try:
            for value in events:
                if isinstance(value, StreamResponse):
                    yield {"type": "token", "field": value.signature_field_name, "text": value.chunk,
                           "last": bool(value.is_last_chunk)}
                elif isinstance(value, StatusMessage):
                    yield {"type": "status", "message": value.message}
                elif isinstance(value, dspy.Prediction):
                    prediction = value
        finally:
            events.close()
    if prediction is None:
        raise FrameworkError("the program's stream ended without a prediction")
    outputs = outputs_of(prediction, signature)
    yield {"type": "prediction", "outputs": outputs}
    return outputs


# What a predictor's saved state may hold. ``load_state`` sets any other key
# as an attribute, and an ``lm`` entry would build an LM outside lm
# resources, so a client-supplied state is cut down to these (``lm`` -> None).
_STATE_KEYS = frozenset({"demos", "signature", "traces", "train", "fields", "lm"})


def dump_state(module: Any) -> dict[str, Any]:
    """The module's learned state (demos, instructions), JSON, with no LM."""
    state = {name: _clean_entry(entry, name) for name, entry in _entries(module, module.dump_state())}
    state = state["self"] if "self" in state and len(state) == 1 else state
    try:
        json.dumps(state, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidResult(f"the program's state is not JSON-serialisable: {exc}") from None
    return state


def load_state(module: Any, state: Any) -> None:
    """Load a state from :func:`dump_state` (possibly from a client) into ``module``."""
    if not isinstance(state, dict):
        raise InvalidArgument("program 'state' must be an object")
    clean = {name: _clean_entry(entry, name) for name, entry in _entries(module, state)}
    try:
        module.load_state(clean["self"] if "self" in clean and len(clean) == 1 else clean)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgument(f"program 'state' does not fit this program: {type(exc).__name__}: {exc}") from None


def _entries(module: Any, state: dict[str, Any]) -> list[tuple[str, Any]]:
    import dspy  # type: ignore[import-untyped]

    if isinstance(module, dspy.Predict):
        return [("self", state)]
    names = [name for name, _ in module.named_parameters()]
    missing = [n for n in names if n not in state]
    if missing or set(state) - set(names):
        raise InvalidArgument(f"program 'state' must have exactly the entries: {', '.join(names)}")
    return [(n, state[n]) for n in names]


def _clean_entry(entry: Any, name: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise InvalidArgument(f"program 'state' entry {name!r} must be an object")
    unknown = sorted(set(entry) - _STATE_KEYS)
    if unknown:
        raise InvalidArgument(f"program 'state' entry {name!r} has unexpected key(s): {', '.join(unknown)}")
    demos = entry.get("demos", [])
    if not isinstance(demos, list) or not all(isinstance(d, dict) for d in demos):
        raise InvalidArgument(f"program 'state' entry {name!r}: 'demos' must be a list of objects")
    return {**entry, "lm": None}


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return str(value)
    return value
