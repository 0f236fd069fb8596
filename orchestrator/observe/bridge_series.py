"""The series bridges declare themselves (``Bridge.metrics`` in the runtime), kept and exposed by the orchestrator.

A runtime reports what it counted since its last report in reply metadata
(:data:`runtimes.wire.metadata.METRICS`). That text comes from a container and
is untrusted: every name, label and number is checked, and the totals are
capped, so a worker can neither break the exposition nor grow the
orchestrator's memory. What is refused is counted in
``mlbridge_bridge_series_dropped_total{bridge,reason}``.

Exposed as ``mlbridge_bridge_<name>_total`` (counters) and
``mlbridge_bridge_<name>_bucket|_sum|_count`` (histograms), labelled with the
bridge and the tenant the worker serves, then the bridge's own labels.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["BridgeSeries"]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_LABEL = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
_RESERVED_LABELS = frozenset({"bridge", "tenant", "le", "worker"})
_SUFFIXES = ("_total", "_bucket", "_sum", "_count")
#: Declared metrics per bridge, label names per metric, buckets per histogram.
MAX_METRICS_PER_BRIDGE = 32
MAX_LABELS = 4
MAX_BUCKETS = 32
#: Label sets (bridge, tenant and the bridge's labels) kept per metric name.
MAX_SETS_PER_METRIC = 1000
#: Metric names kept over all bridges.
MAX_NAMES = 256


@dataclass
class _Family:
    kind: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()
    # label values (bridge, tenant, *labels) -> counter value, or [per-bucket counts..., +Inf count, sum]
    values: dict[tuple[str, ...], Any] = field(default_factory=dict)


class BridgeSeries(Collector):
    """Totals of the bridges' own series; a Prometheus collector."""

    def __init__(self, on_drop: Any = None) -> None:
        self._families: dict[str, _Family] = {}
        self._per_bridge: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        #: Called with (bridge, reason) for every refused series.
        self.on_drop = on_drop

    def _drop(self, bridge: str, reason: str) -> None:
        if self.on_drop is not None:
            self.on_drop(bridge, reason)

    def add(self, bridge: str, tenant: str, text: str) -> int:
        """Add one report (the metadata's JSON text); returns how many series were taken."""
        try:
            report = json.loads(text)
        except ValueError:
            self._drop(bridge, "malformed")
            return 0
        series = report.get("series") if isinstance(report, dict) else None
        if not isinstance(series, list):
            self._drop(bridge, "malformed")
            return 0
        taken = 0
        with self._lock:
            for item in series[:MAX_METRICS_PER_BRIDGE * 64]:
                reason = self._add_one(bridge, tenant, item)
                if reason:
                    self._drop(bridge, reason)
                else:
                    taken += 1
        return taken

    def _add_one(self, bridge: str, tenant: str, item: Any) -> str:
        if not isinstance(item, dict):
            return "malformed"
        name, kind = item.get("name"), item.get("kind")
        if not isinstance(name, str) or not _NAME.match(name) or name.endswith(_SUFFIXES):
            return "bad_name"
        if kind not in ("counter", "histogram"):
            return "malformed"
        labels = item.get("labels") or {}
        if not isinstance(labels, dict) or len(labels) > MAX_LABELS or not all(
                isinstance(k, str) and _LABEL.match(k) and k not in _RESERVED_LABELS and isinstance(v, str)
                for k, v in labels.items()):
            return "bad_labels"
        names = tuple(sorted(labels))
        buckets: tuple[float, ...] = ()
        if kind == "histogram":
            raw = item.get("buckets")
            if not isinstance(raw, list) or not 0 < len(raw) <= MAX_BUCKETS or not all(
                    isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in raw):
                return "malformed"
            buckets = tuple(float(b) for b in raw)
            if any(a >= b for a, b in zip(buckets, buckets[1:], strict=False)):
                return "malformed"
        family = self._families.get(name)
        if family is None:
            mine = self._per_bridge.setdefault(bridge, set())
            if len(mine) >= MAX_METRICS_PER_BRIDGE or len(self._families) >= MAX_NAMES:
                return "too_many_metrics"
            help_ = item.get("help")
            family = _Family(kind, (help_ if isinstance(help_, str) else "")[:200] or f"{name} (bridge)",
                             names, buckets)
            self._families[name] = family
            mine.add(name)
        elif family.kind != kind or family.labels != names or family.buckets != buckets:
            return "conflict"
        key = (bridge, tenant, *(labels[n][:64] for n in names))
        if key not in family.values and len(family.values) >= MAX_SETS_PER_METRIC:
            return "too_many_series"
        if kind == "counter":
            value = item.get("value")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                return "bad_value"
            family.values[key] = family.values.get(key, 0.0) + float(value)
            return ""
        counts, total = item.get("counts"), item.get("sum")
        if (not isinstance(counts, list) or len(counts) != len(buckets) + 1
                or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
                or not isinstance(total, (int, float)) or isinstance(total, bool) or not math.isfinite(total)):
            return "bad_value"
        acc = family.values.setdefault(key, [0] * (len(buckets) + 1) + [0.0])
        for i, c in enumerate(counts):
            acc[i] += c
        acc[-1] += float(total)
        return ""

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snapshot = [(name, f.kind, f.help, f.labels, f.buckets, dict(f.values))
                        for name, f in self._families.items()]
        for name, kind, help_, labels, buckets, values in snapshot:
            label_names = ["bridge", "tenant", *labels]
            full = f"mlbridge_bridge_{name}"
            if kind == "counter":
                counter = CounterMetricFamily(full, help_, labels=label_names)
                for key, value in values.items():
                    counter.add_metric(list(key), value)
                yield counter
                continue
            hist = HistogramMetricFamily(full, help_, labels=label_names)
            for key, acc in values.items():
                cumulative, points = 0, []
                for bound, count in zip((*buckets, math.inf), acc[:-1], strict=True):
                    cumulative += count
                    points.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
                hist.add_metric(list(key), points, acc[-1])
            yield hist
