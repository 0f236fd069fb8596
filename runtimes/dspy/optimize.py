"""Optimizers and metrics a client may name: fixed sets, never user code.

A metric compares each label field of a training example (its non-input
fields that the program also outputs, or the ``metric_fields`` given) with
the prediction, after normalising case and whitespace:

- ``exact_match``: every field equal;
- ``contains``: every expected value found inside the predicted one.

Optimizer arguments are checked against a per-optimizer allowlist of plain
numbers, so no callable or teacher LM can be smuggled in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from runtimes.core.context import CallContext
from runtimes.wire.errors import InvalidArgument, MLBridgeError


def _norm(value: Any) -> str:
    return " ".join(str(value).lower().split())


METRICS: dict[str, Callable[[Any, Any], bool]] = {
    "exact_match": lambda expected, predicted: _norm(expected) == _norm(predicted),
    "contains": lambda expected, predicted: _norm(expected) in _norm(predicted),
}

# optimizer -> {argument: allowed JSON types}
OPTIMIZERS: dict[str, dict[str, tuple[type, ...]]] = {
    "BootstrapFewShot": {
        "max_bootstrapped_demos": (int,),
        "max_labeled_demos": (int,),
        "max_rounds": (int,),
        "max_errors": (int,),
        "metric_threshold": (int, float),
    },
    "LabeledFewShot": {"k": (int,)},
}


def check_optimizer(name: Any, args: Any, metric: Any) -> None:
    """InvalidArgument unless the optimizer, its args and the metric are allowed."""
    if name not in OPTIMIZERS:
        raise InvalidArgument(f"optimizer {name!r} is not supported; optimizers: {', '.join(OPTIMIZERS)}")
    if metric not in METRICS:
        raise InvalidArgument(f"metric {metric!r} is not supported; metrics: {', '.join(METRICS)}")
    if not isinstance(args, dict):
        raise InvalidArgument("optimizer_args must be an object")
    allowed = OPTIMIZERS[name]
    for key, value in args.items():
        if key not in allowed:
            raise InvalidArgument(
                f"{name} does not take {key!r}; arguments: {', '.join(allowed) or 'none'}"
            )
        if isinstance(value, bool) or not isinstance(value, allowed[key]) or _negative(value):
            raise InvalidArgument(f"{name} argument {key!r} must be a non-negative number")


def _negative(value: Any) -> bool:
    return isinstance(value, (int, float)) and value < 0


class _Stop(BaseException):
    """Carries Cancelled/DeadlineExceeded past DSPy's ``except Exception``."""

    def __init__(self, error: MLBridgeError) -> None:
        super().__init__(str(error))
        self.error = error


class ProgressMetric:
    """The named metric, reporting each call as progress and honouring cancel."""

    def __init__(self, name: str, fields: list[str] | None, outputs: list[str], total: int,
                 ctx: CallContext) -> None:
        self.compare = METRICS[name]
        self.name = name
        self.fields = fields
        self.outputs = outputs
        self.total = total
        self.ctx = ctx
        self.calls = 0
        self.passed = 0
        self._lock = threading.Lock()

    def __call__(self, example: Any, prediction: Any, trace: Any = None) -> bool:
        try:
            self.ctx.check()
        except MLBridgeError as err:
            raise _Stop(err) from None
        fields = self.fields or [k for k in example.labels() if k in self.outputs]
        ok = bool(fields) and all(
            k in example and self.compare(example[k], prediction.get(k, "")) for k in fields
        )
        with self._lock:
            self.calls += 1
            self.passed += ok
            step = self.calls
        self.ctx.progress(step, self.total, f"{self.name} on example {step}: {'pass' if ok else 'fail'}")
        return ok


def compile_program(optimizer: str, args: dict[str, Any], metric: ProgressMetric | None,
                    student: Any, trainset: list[Any], lm: Any) -> Any:
    """Run the optimizer under ``lm``; returns the compiled module."""
    import dspy  # type: ignore[import-untyped]

    with dspy.context(lm=lm):
        try:
            if optimizer == "LabeledFewShot":
                return dspy.LabeledFewShot(**args).compile(student, trainset=trainset)
            return dspy.BootstrapFewShot(metric=metric, **args).compile(student, trainset=trainset)
        except _Stop as stop:
            raise stop.error from None
