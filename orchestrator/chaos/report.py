"""What a chaos run saw: calls by outcome, recovery after each fault, resources, the audit log.

After a fault that took hold at time ``t`` (the kill sent, the pause in
place), the calls that count are the workload's calls to the faulted
worker's bridge, of its tenant when the worker was claimed (else all of the
bridge's), and the fault's window lasts until the next fault (or the end):

- ``recovery_s``: until calls succeed again: the end of the first call that
  started at or after ``t`` and succeeded, minus ``t``.
- ``settled_s``: until they stay successful: ``last`` is the end of the last
  of those calls that failed in the window (``t`` when none did); the end of
  the first call started at or after ``last`` that succeeded, minus ``t``.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..audit import verify_file
from .faults import FaultResult
from .targets import WorkerTarget
from .workload import CallRecord

__all__ = ["UNSPECIFIC_CODES", "ChaosReport", "FaultRecord", "check_audit", "outcomes", "recovery_times"]

#: Codes that say nothing about what went wrong: a failure must never carry one.
UNSPECIFIC_CODES = frozenset({"UNKNOWN", "INTERNAL", "INVALID_RESULT"})


def is_unspecific(code: str) -> bool:
    return code in UNSPECIFIC_CODES or code.startswith("CLIENT_ERROR")


@dataclass
class FaultRecord:
    """One fault: what, on which worker, when (monotonic), what it did, and the recovery after it."""

    kind: str
    worker: WorkerTarget
    at: float
    ended: float = 0.0
    result: FaultResult = field(default_factory=FaultResult)
    recovery_s: float | None = None
    settled_s: float | None = None
    failed_calls: int = 0

    @property
    def effective_at(self) -> float:
        return self.result.effective_at or self.at

    def to_dict(self, origin: float) -> dict[str, Any]:
        return {"kind": self.kind, "worker": self.worker.to_dict(), "at_s": round(self.at - origin, 3),
                "took_s": round(max(self.ended - self.at, 0.0), 3), "effect": self.result.effect,
                "gone": self.result.gone, "error": self.result.error, "details": self.result.details,
                "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 3),
                "settled_s": None if self.settled_s is None else round(self.settled_s, 3),
                "failed_calls": self.failed_calls}


def outcomes(records: Iterable[CallRecord]) -> dict[str, dict[str, int]]:
    """op -> code -> calls (``total`` -> code -> calls as well)."""
    table: dict[str, Counter[str]] = {}
    for r in records:
        table.setdefault(r.op, Counter())[r.code] += 1
        table.setdefault("total", Counter())[r.code] += 1
    return {op: dict(sorted(c.items())) for op, c in sorted(table.items())}


def recovery_times(faults: Sequence[FaultRecord], records: Sequence[CallRecord], bridge: str,
                   end: float) -> None:
    """Fill each fault's ``recovery_s``, ``settled_s`` and ``failed_calls`` (see the module's docstring);
    faults on another bridge than the workload's, or that found their worker gone, get None."""
    ordered = sorted(faults, key=lambda f: f.effective_at)
    for i, f in enumerate(ordered):
        if f.worker.bridge != bridge or f.result.error or f.result.gone:
            continue
        t = f.effective_at
        until = ordered[i + 1].effective_at if i + 1 < len(ordered) else end
        tenant = f.worker.tenant or None
        mine = [r for r in records if tenant is None or r.tenant == tenant]
        failed = [r for r in mine if not r.ok and t <= r.end < until]
        f.failed_calls = len(failed)
        first = [r.end for r in mine if r.ok and r.start >= t]
        f.recovery_s = (min(first) - t) if first else None
        last = max((r.end for r in failed), default=t)
        settled = [r.end for r in mine if r.ok and r.start >= last]
        f.settled_s = (min(settled) - t) if settled else None


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def check_audit(path: str | Path, records: Sequence[CallRecord]) -> dict[str, Any]:
    """The audit log's hash chain, and one call record per call the workload made.

    Calls with a call id (Call, CallStream, ExecuteResource) are matched by it;
    CreateResource and DeleteResource by method and resource id. A record whose
    outcome differs from what the caller saw is a mismatch.
    """
    result = verify_file(path)
    by_call: dict[str, list[dict[str, Any]]] = {}
    by_resource: dict[tuple[str, str], list[dict[str, Any]]] = {}
    kills: list[dict[str, Any]] = []
    with open(path, "rb") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") in ("worker_kill", "worker_stop"):
                kills.append(rec)
            if rec.get("event") not in ("call", "denial"):
                continue
            if rec.get("call_id"):
                by_call.setdefault(str(rec["call_id"]), []).append(rec)
            if rec.get("resource_id") and rec.get("method") in ("CreateResource", "DeleteResource"):
                by_resource.setdefault((str(rec["method"]), str(rec["resource_id"])), []).append(rec)
    missing: list[dict[str, Any]] = []
    mismatched: list[dict[str, Any]] = []
    duplicated = 0
    for r in records:
        found = by_call.get(r.call_id, []) if r.call_id else by_resource.get((r.method, r.resource_id), [])
        if not found:
            missing.append(r.to_dict())
            continue
        duplicated += len(found) > 1
        rec = found[0]
        seen = "OK" if rec.get("outcome") == "ok" else str(rec.get("error_code") or rec.get("outcome"))
        if seen != r.code and not r.code.startswith(("WRONG_RESULT", "CLIENT_ERROR")):
            mismatched.append({"call": r.to_dict(), "audit": {k: rec.get(k) for k in ("outcome", "error_code",
                                                                                       "seq", "method")}})
    causes = Counter(str((k.get("extra") or {}).get("cause", "?")) for k in kills if k.get("event") == "worker_kill")
    return {"path": str(path), "chain_ok": result.ok, "records": result.records, "broken_at": result.first_bad,
            "reason": result.reason, "calls_checked": len(records), "missing": len(missing),
            "missing_sample": missing[:10], "mismatched": len(mismatched), "mismatched_sample": mismatched[:10],
            "duplicated": duplicated, "worker_kills_by_cause": dict(sorted(causes.items())),
            # The orchestrator's word on each killed worker's end (its last worker_kill record).
            "worker_kill_causes": {str(k["worker_id"]): str((k.get("extra") or {}).get("cause", ""))
                                   for k in kills if k.get("event") == "worker_kill" and k.get("worker_id")},
            "oom_killed_workers": sorted(str(k.get("worker_id")) for k in kills
                                         if (k.get("extra") or {}).get("cause") == "oom")}


@dataclass
class ChaosReport:
    """Everything one run found; :meth:`to_dict` is the ``--json`` output, :meth:`render` the table."""

    backend: str
    selector: str
    duration_s: float
    origin: float
    faults: list[FaultRecord]
    records: list[CallRecord]
    workload_bridge: str | None = None
    clients: int = 0
    resources: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def outcomes(self) -> dict[str, dict[str, int]]:
        return outcomes(self.records)

    @property
    def failure_codes(self) -> dict[str, int]:
        c = Counter(r.code for r in self.records if not r.ok)
        return dict(sorted(c.items()))

    @property
    def unspecific(self) -> list[CallRecord]:
        return [r for r in self.records if not r.ok and (is_unspecific(r.code) or r.code == "WRONG_RESULT")]

    @property
    def unanswered(self) -> list[CallRecord]:
        """Failures gRPC reported, not mlbridge (no error details): the orchestrator never answered in time."""
        return [r for r in self.records if not r.ok and r.transport]

    @property
    def recoveries(self) -> list[float | None]:
        return [f.recovery_s for f in self._measured()]

    def _measured(self) -> list[FaultRecord]:
        return [f for f in self.faults if f.worker.bridge == self.workload_bridge
                and not f.result.error and not f.result.gone]

    def recovery_summary(self) -> dict[str, Any]:
        values = [v for v in self.recoveries if v is not None]
        settled = [f.settled_s for f in self._measured() if f.settled_s is not None]
        return {"faults_measured": len(self.recoveries), "not_recovered": sum(v is None for v in self.recoveries),
                "worst_s": round(max(values), 3) if values else None,
                "p50_s": round(statistics.median(values), 3) if values else None,
                "p90_s": round(_percentile(values, 0.9), 3) if values else None,
                "settled_worst_s": round(max(settled), 3) if settled else None,
                "settled_p50_s": round(statistics.median(settled), 3) if settled else None}

    @property
    def resources_lost(self) -> int:
        r = self.resources or {}
        return (len(r.get("missing") or []) + len(r.get("not_executable") or {})
                + len(r.get("vanished_on_delete") or []))

    @property
    def clean(self) -> bool:
        """No unspecific code, no unanswered call, no resource or journal entry lost, the audit log whole; every fault recovered."""
        audit_ok = self.audit is None or (self.audit["chain_ok"] and not self.audit["missing"])
        lost_entries = bool((self.resources or {}).get("journal_entries_lost"))
        return (not self.unspecific and not self.unanswered and not self.resources_lost and not lost_entries
                and audit_ok and None not in self.recoveries)

    def error_samples(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for r in self.records:
            if not r.ok and r.code not in out:
                out[r.code] = f"{r.op}: {r.message}"
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "workers": self.selector, "duration_s": round(self.duration_s, 3),
            "workload": {"bridge": self.workload_bridge, "clients": self.clients, "calls": len(self.records)}
            if self.workload_bridge else None,
            "outcomes": self.outcomes, "failure_codes": self.failure_codes,
            "unspecific_failures": [r.to_dict() for r in self.unspecific[:20]],
            "unanswered": [r.to_dict() for r in self.unanswered[:20]],
            "error_samples": self.error_samples(),
            "faults": [f.to_dict(self.origin) for f in self.faults],
            "faults_by_kind": dict(sorted(Counter(f.kind for f in self.faults).items())),
            "recovery": self.recovery_summary(), "resources": self.resources, "audit": self.audit,
            "skipped": self.skipped, "clean": self.clean,
        }

    def render(self) -> str:
        from ..cli import _table

        lines = [f"chaos: {len(self.faults)} faults over {self.duration_s:.1f} s on {self.backend} workers "
                 f"({self.selector})"]
        if self.faults:
            lines += ["", _table([[f"{f.at - self.origin:.1f}", f.kind, f.worker.worker_id,
                                   "spare" if f.worker.tenant == "" else (f.worker.tenant or "?"),
                                   (f.result.error or f.result.effect)[:60],
                                   "-" if f.recovery_s is None else f"{f.recovery_s:.3f}",
                                   "-" if f.settled_s is None else f"{f.settled_s:.3f}", str(f.failed_calls)]
                                  for f in self.faults],
                                 ["AT-S", "FAULT", "WORKER", "TENANT", "EFFECT", "RECOVERY-S", "SETTLED-S",
                                  "FAILED-CALLS"])]
        for line in self.skipped:
            lines.append(f"skipped: {line}")
        if self.workload_bridge:
            rec = self.recovery_summary()
            codes = sorted({c for by in self.outcomes.values() for c in by})
            lines += ["", f"workload: {self.clients} clients on bridge {self.workload_bridge}, "
                          f"{len(self.records)} calls",
                      "", _table([[op, *(str(by.get(c, 0)) for c in codes)] for op, by in self.outcomes.items()],
                                 ["OP", *codes]),
                      "", f"recovery (first success): worst {rec['worst_s']} s, p50 {rec['p50_s']} s, p90 "
                          f"{rec['p90_s']} s over {rec['faults_measured']} faults; not recovered: "
                          f"{rec['not_recovered']}; settled (no failure after): worst {rec['settled_worst_s']} s, "
                          f"p50 {rec['settled_p50_s']} s"]
            for code, sample in self.error_samples().items():
                lines.append(f"  {code}: {sample[:150]}")
            bad = self.unspecific
            lines.append(f"unspecific failures (UNKNOWN/INTERNAL/client/wrong result): {len(bad)}")
            lost = self.unanswered
            lines.append(f"unanswered (a gRPC status, no mlbridge error: the client's own deadline ran out): "
                         f"{len(lost)}" + (f", e.g. {lost[0].op} {lost[0].call_id or lost[0].resource_id}" if lost else ""))
        if self.resources is not None:
            r = self.resources
            lines.append(f"resources: {r['expected']} expected, {r['listed']} listed, {len(r['missing'])} missing, "
                         f"{len(r['not_executable'])} not executable, {len(r['vanished_on_delete'])} vanished before "
                         f"their delete; journal entries lost: {sum(map(len, r['journal_entries_lost'].values()))} "
                         f"of {r['journal_entries_checked']}")
        if self.audit is not None:
            a = self.audit
            chain = "verifies" if a["chain_ok"] else f"BROKEN at record {a['broken_at']}: {a['reason']}"
            lines.append(f"audit: chain {chain} ({a['records']} records); calls without a record: {a['missing']} "
                         f"of {a['calls_checked']}; outcome mismatches: {a['mismatched']}; worker kills by cause: "
                         f"{a['worker_kills_by_cause']}")
        lines.append("result: " + ("clean" if self.clean else "FINDINGS (see above)"))
        return "\n".join(lines)
