"""What the dspy bridge's resources share with it: the default LM and the counters.

The resources (:mod:`.resources`) reach their bridge through this base class,
and the bridge (:mod:`.bridge`) adds the commands on top, so the two modules
import in one direction only.
"""

from __future__ import annotations

import threading
from typing import Any

from runtimes.core import Bridge
from runtimes.core.telemetry import Counter


class DSPyBase(Bridge):
    """Per-worker DSPy state: the default LM and execution counters."""

    def __init__(self) -> None:
        super().__init__()
        self.default_lm: Any = None
        self.default_lm_info: dict[str, Any] | None = None
        self._counts: dict[str, int] = {"executions": 0, "optimizations": 0}
        self._client_secrets: set[str] = set()
        self._lock = threading.Lock()
        self.lm_calls = self.metrics.counter("lm_calls", "LM calls made by DSPy programs", labels=("model",))

    def count(self, name: str) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + 1

    def instrument(self, lm: Any) -> Any:
        """Have ``lm`` count its calls in the ``lm_calls`` metric (one DSPy callback on the LM itself,
        which its copies keep); returns ``lm``."""
        callbacks = getattr(lm, "callbacks", None)
        if isinstance(callbacks, list):
            cls = _lm_counter_class()
            if not any(isinstance(c, cls) for c in callbacks):
                callbacks.append(cls(self.lm_calls))
        return lm


_counter_cls: type | None = None


def _lm_counter_class() -> type:
    """A DSPy callback counting LM calls (built on first use: ``import dspy`` stays lazy)."""
    global _counter_cls
    if _counter_cls is None:
        from dspy.utils.callback import BaseCallback  # type: ignore[import-untyped]

        class LMCallCounter(BaseCallback):  # type: ignore[misc]
            def __init__(self, counter: Counter) -> None:
                self.counter = counter

            def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
                self.counter.inc(model=str(getattr(instance, "model", "") or "unknown"))

            def __deepcopy__(self, memo: dict[int, Any]) -> Any:
                return self  # the metric is the bridge's: never copied

        _counter_cls = LMCallCounter
    return _counter_cls
