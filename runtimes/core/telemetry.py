"""Bridge metrics: counters and histograms a bridge declares, reported to the orchestrator with replies.

Every :class:`~runtimes.core.bridge.Bridge` has ``self.metrics``, a
:class:`BridgeMetrics`. A bridge declares its metrics once (in ``__init__``
or ``setup``) and counts from any thread::

    self.tokens = self.metrics.counter("tokens_generated", "Tokens generated", labels=("model",))
    self.tokens.inc(5, model="m")
    self.batch = self.metrics.histogram("batch_size", "Requests per model invocation",
                                        buckets=(1, 2, 4, 8, 16, 32, 64))
    self.batch.observe(8)

The runtime reports what was counted since its last report on the next reply
it sends (reply metadata :data:`runtimes.wire.metadata.METRICS`); the
orchestrator adds it to its own series with the bridge and tenant labels,
which is why those label names are reserved here. A call that counts nothing
costs the reply nothing: :meth:`BridgeMetrics.take` answers ``None`` from one
flag while nothing changed.

Mistakes are :class:`ValueError` with a sentence saying what to fix, raised
where they are made (a bad declaration, an ``inc`` with the wrong labels or a
negative amount). Too many distinct label values is not a mistake a handler
could have foreseen: series beyond :data:`MAX_SERIES` per metric are ignored
and counted (:attr:`BridgeMetrics.dropped`), never raised.

Wire format of one report (JSON)::

    {"v": 1, "series": [
        {"name": "tokens_generated", "kind": "counter", "help": "...", "labels": {"model": "m"}, "value": 5.0},
        {"name": "batch_size", "kind": "histogram", "help": "...", "buckets": [1, 2, 4], "labels": {},
         "counts": [0, 1, 0, 0], "sum": 2.0, "count": 1}],
     "dropped": 0}

Values are deltas since the previous report. Histogram ``counts`` are per
bucket (a value ``v`` falls in the first bucket ``b`` with ``v <= b``), not
cumulative, with one more entry for ``+Inf``. ``dropped`` counts the series
updates ignored since the previous report (label sets over the limit, and
reports too large to send).
"""

from __future__ import annotations

import math
import re
import threading
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any, ClassVar

__all__ = [
    "DEFAULT_BUCKETS",
    "MAX_BUCKETS",
    "MAX_LABELS",
    "MAX_LABEL_VALUE_CHARS",
    "MAX_METRICS",
    "MAX_SERIES",
    "RESERVED_LABELS",
    "BridgeMetrics",
    "Counter",
    "Histogram",
]

#: Most metrics one bridge may declare.
MAX_METRICS = 32
#: Most label names one metric may have.
MAX_LABELS = 4
#: Most buckets (besides +Inf) one histogram may have.
MAX_BUCKETS = 32
#: Most distinct label sets one metric keeps; updates of further ones are dropped and counted.
MAX_SERIES = 64
#: Label values are cut to this many characters.
MAX_LABEL_VALUE_CHARS = 64
#: Help texts are cut to this many characters.
MAX_HELP_CHARS = 256
#: Label names the orchestrator adds itself (or Prometheus reserves for buckets).
RESERVED_LABELS = frozenset({"bridge", "tenant", "le", "worker"})
#: Buckets of a histogram declared without any (seconds, as Prometheus' default).
DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WIRE_VERSION = 1

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_LABEL = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
_SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, got {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return out


def _wire_number(value: float) -> float | int:
    """A bucket bound as written: 2 rather than 2.0 when it is whole."""
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


class _Metric:
    """What counters and histograms share: name, labels, and the label sets seen."""

    kind: ClassVar[str] = ""
    __slots__ = ("_delta", "_known", "_owner", "help", "labels", "name")

    def __init__(self, owner: BridgeMetrics, name: str, help: str, labels: tuple[str, ...]) -> None:
        self._owner = owner
        self.name = name
        self.help = help
        self.labels = labels
        self._known: set[tuple[str, ...]] = set()
        self._delta: dict[tuple[str, ...], Any] = {}

    def _key(self, given: dict[str, object]) -> tuple[str, ...]:
        names = self.labels
        if not given and not names:
            return ()
        if len(given) != len(names) or any(n not in given for n in names):
            want = ", ".join(names) or "no labels"
            got = ", ".join(sorted(given)) or "none"
            raise ValueError(f"metric {self.name!r} takes exactly the labels it was declared with ({want}); "
                             f"got {got}")
        return tuple(str(given[n])[:MAX_LABEL_VALUE_CHARS] for n in names)

    def _admit(self, key: tuple[str, ...]) -> bool:
        """Whether ``key`` is a series this metric keeps (the owner's lock is held)."""
        known = self._known
        if key in known:
            return True
        if len(known) < MAX_SERIES:
            known.add(key)
            return True
        self._owner._drop(1)
        return False

    def _same(self, kind: str, labels: tuple[str, ...], buckets: tuple[float, ...] | None) -> bool:
        return self.kind == kind and self.labels == labels

    def _series(self, key: tuple[str, ...], delta: Any) -> dict[str, Any]:
        raise NotImplementedError


class Counter(_Metric):
    """A count that only goes up. ``inc(amount=1, **labels)``."""

    kind: ClassVar[str] = "counter"
    __slots__ = ()

    def inc(self, amount: float = 1, /, **labels: object) -> None:
        """Add ``amount`` (finite, >= 0) to the series of ``labels`` (exactly the declared label names).

        Raises:
            ValueError: a negative, infinite or non-numeric amount, or other labels than declared.
        """
        if amount.__class__ is not int or amount < 0:  # the common inc() / inc(n) skips the checks
            amount = _number(amount, f"the increment of counter {self.name!r}")
            if amount < 0:
                raise ValueError(f"counter {self.name!r} only goes up: the increment must be >= 0, got {amount!r}")
        key = self._key(labels) if labels or self.labels else ()
        owner = self._owner
        with owner._lock:
            delta = self._delta
            if key in delta:
                delta[key] += amount
            elif self._admit(key):
                delta[key] = float(amount)
            else:
                return
            owner.pending = True

    def _series(self, key: tuple[str, ...], delta: Any) -> dict[str, Any]:
        return {"name": self.name, "kind": "counter", "help": self.help, "labels": dict(zip(self.labels, key,
                                                                                            strict=True)),
                "value": float(delta)}


class Histogram(_Metric):
    """Observations counted into buckets. ``observe(value, **labels)``."""

    kind: ClassVar[str] = "histogram"
    __slots__ = ("_wire_buckets", "buckets")

    def __init__(self, owner: BridgeMetrics, name: str, help: str, labels: tuple[str, ...],
                 buckets: tuple[float, ...]) -> None:
        super().__init__(owner, name, help, labels)
        self.buckets = buckets
        self._wire_buckets = [_wire_number(b) for b in buckets]

    def _same(self, kind: str, labels: tuple[str, ...], buckets: tuple[float, ...] | None) -> bool:
        return self.kind == kind and self.labels == labels and self.buckets == buckets

    def observe(self, value: float, /, **labels: object) -> None:
        """Count ``value`` (finite) in its bucket of the series of ``labels``.

        Raises:
            ValueError: a non-finite or non-numeric value, or other labels than declared.
        """
        value = _number(value, f"the value observed by histogram {self.name!r}")
        key = self._key(labels) if labels or self.labels else ()
        slot = bisect_left(self.buckets, value)
        owner = self._owner
        with owner._lock:
            delta = self._delta
            cell = delta.get(key)
            if cell is None:
                if not self._admit(key):
                    return
                cell = delta[key] = [[0] * (len(self.buckets) + 1), 0.0, 0]
            cell[0][slot] += 1
            cell[1] += value
            cell[2] += 1
            owner.pending = True

    def _series(self, key: tuple[str, ...], delta: Any) -> dict[str, Any]:
        counts, total, count = delta
        return {"name": self.name, "kind": "histogram", "help": self.help, "buckets": self._wire_buckets,
                "labels": dict(zip(self.labels, key, strict=True)), "counts": counts, "sum": total,
                "count": count}


class BridgeMetrics:
    """The metrics one bridge declared, and what they counted since the last :meth:`take`.

    Thread-safe: handlers count from the dispatcher's threads and the event
    loop; one lock guards every update.

    Attributes:
        pending: whether :meth:`take` would return a report (read without the lock: a cheap check).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, _Metric] = {}
        self._dropped = 0
        self._dropped_delta = 0
        self.pending = False

    # -- declaring ----------------------------------------------------------------------
    def counter(self, name: str, help: str = "", labels: Sequence[str] = ()) -> Counter:
        """Declare (or get again) a counter.

        Raises:
            ValueError: a bad name or label names, more than :data:`MAX_METRICS`
                metrics, or ``name`` declared before as another kind or with other labels.
        """
        found = self._declare("counter", name, help, labels, None)
        assert isinstance(found, Counter)
        return found

    def histogram(self, name: str, help: str = "", buckets: Sequence[float] = DEFAULT_BUCKETS,
                  labels: Sequence[str] = ()) -> Histogram:
        """Declare (or get again) a histogram with ``buckets`` (upper bounds, strictly increasing).

        Raises:
            ValueError: as :meth:`counter`, or buckets that are empty, more than
                :data:`MAX_BUCKETS`, not finite numbers, or not strictly increasing.
        """
        found = self._declare("histogram", name, help, labels, _check_buckets(name, buckets))
        assert isinstance(found, Histogram)
        return found

    def _declare(self, kind: str, name: str, help: str, labels: Sequence[str],
                 buckets: tuple[float, ...] | None) -> _Metric:
        _check_name(name)
        names = _check_labels(name, labels)
        text = str(help)[:MAX_HELP_CHARS]
        with self._lock:
            old = self._metrics.get(name)
            if old is not None:
                if not old._same(kind, names, buckets):
                    raise ValueError(f"metric {name!r} was declared before as a {old.kind} with labels "
                                     f"{old.labels!r}" + (f" and buckets {list(old.buckets)!r}"
                                                          if isinstance(old, Histogram) else "")
                                     + "; declare it the same way again, or use another name")
                return old
            if len(self._metrics) >= MAX_METRICS:
                raise ValueError(f"a bridge may declare at most {MAX_METRICS} metrics; {name!r} would be one more")
            metric: _Metric = (Counter(self, name, text, names) if buckets is None
                               else Histogram(self, name, text, names, buckets))
            self._metrics[name] = metric
            return metric

    # -- reading --------------------------------------------------------------------------
    @property
    def dropped(self) -> int:
        """Series updates ignored since this worker started (label sets over :data:`MAX_SERIES`,
        reports too large to send)."""
        return self._dropped

    def names(self) -> list[str]:
        """The declared metrics' names, in declaration order."""
        with self._lock:
            return list(self._metrics)

    def take(self) -> dict[str, Any] | None:
        """What was counted since the last take (the wire format above), and start counting afresh.

        None when nothing changed (one flag read: cheap on every reply).
        """
        if not self.pending:
            return None
        with self._lock:
            if not self.pending:
                return None
            taken = [(m, m._delta) for m in self._metrics.values() if m._delta]
            for m, _ in taken:
                m._delta = {}
            dropped, self._dropped_delta = self._dropped_delta, 0
            self.pending = False
        series = [m._series(key, delta) for m, deltas in taken for key, delta in deltas.items()]
        return {"v": WIRE_VERSION, "series": series, "dropped": dropped}

    def count_dropped(self, n: int) -> None:
        """Count ``n`` series updates lost on the way out (a report too large to send)."""
        if n > 0:
            with self._lock:
                self._drop(n)

    def _drop(self, n: int) -> None:
        # The lock is held.
        self._dropped += n
        self._dropped_delta += n
        self.pending = True


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"metric name {name!r} must match {_NAME.pattern} (lower case, digits, underscores; "
                         f"at most 63 characters)")
    if name.endswith(_SUFFIXES):
        raise ValueError(f"metric name {name!r} must not end in {', '.join(_SUFFIXES)}: the orchestrator adds "
                         f"those suffixes itself")


def _check_labels(name: str, labels: Sequence[str]) -> tuple[str, ...]:
    if isinstance(labels, str):
        raise ValueError(f"labels of metric {name!r} must be a tuple of names, not a string; "
                         f"write labels=({labels!r},)")
    names = tuple(labels)
    if len(names) > MAX_LABELS:
        raise ValueError(f"metric {name!r} has {len(names)} labels; at most {MAX_LABELS} are allowed")
    for label in names:
        if not isinstance(label, str) or not _LABEL.match(label):
            raise ValueError(f"label name {label!r} of metric {name!r} must match {_LABEL.pattern}")
        if label in RESERVED_LABELS:
            raise ValueError(f"label name {label!r} of metric {name!r} is reserved (the orchestrator adds "
                             f"{', '.join(sorted(RESERVED_LABELS))}); pick another")
    if len(set(names)) != len(names):
        raise ValueError(f"metric {name!r} names a label twice: {names!r}")
    return names


def _check_buckets(name: str, buckets: Sequence[float]) -> tuple[float, ...]:
    if isinstance(buckets, str) or not isinstance(buckets, Sequence):
        raise ValueError(f"buckets of histogram {name!r} must be a sequence of numbers")
    if not 1 <= len(buckets) <= MAX_BUCKETS:
        raise ValueError(f"histogram {name!r} needs 1 to {MAX_BUCKETS} buckets, got {len(buckets)}")
    out = tuple(_number(b, f"bucket {b!r} of histogram {name!r}") for b in buckets)
    if any(b >= c for b, c in zip(out, out[1:], strict=False)):
        raise ValueError(f"buckets of histogram {name!r} must be strictly increasing, got {list(buckets)!r}")
    return out
