"""The chaos run: pick workers, inject faults on a schedule, drive a workload, report."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtimes.wire.errors import MLBridgeError

from ..client import MLBridge
from .faults import FAULTS, DockerFaults, FaultResult, ProcessFaults
from .report import ChaosReport, FaultRecord, check_audit, recovery_times
from .targets import (
    ChaosRefused,
    DockerWorkers,
    ProcessWorkers,
    Selection,
    WorkerTarget,
    scope_of_state_dir,
    with_tenants,
)
from .workload import Workload, WorkloadSpec

__all__ = ["Chaos", "ChaosPlan", "run_chaos"]

#: Faults that last a while (run beside the schedule, each on its own thread).
_TIMED = ("pause", "slow", "cut", "oom")


@dataclass
class ChaosPlan:
    """What to inject, where, how often and for how long.

    Attributes:
        faults: kinds to inject, taken in turn (kill, pause, oom, slow, cut).
        every_s: seconds between faults, drawn uniformly from this range.
        duration_s: how long the run lasts (the workload runs all of it).
        bridges: only workers of these bridges (empty: all).
        tenant: only workers claimed by this tenant.
        claimed_only: only claimed workers (no spares).
        pause_s, slow_s, cut_s: how long a pause, throttle or cut lasts.
        oom_wait_s: how long an OOM fault waits for the kill before putting the limit back.
        settle_s: no fault starts in the last ``settle_s`` of the run (recovery is measured there).
        seed: makes the schedule and the choice of workers repeatable.
    """

    faults: Sequence[str] = ("kill",)
    every_s: tuple[float, float] = (3.0, 5.0)
    duration_s: float = 60.0
    bridges: Sequence[str] = ()
    tenant: str | None = None
    claimed_only: bool = False
    pause_s: float = 2.0
    slow_s: float = 3.0
    cut_s: float = 2.0
    oom_wait_s: float = 5.0
    settle_s: float = 3.0
    seed: int | None = None
    selection: Selection = field(init=False)

    def __post_init__(self) -> None:
        self.selection = Selection(tuple(self.bridges), self.tenant, self.claimed_only)
        bad = [f for f in self.faults if f not in FAULTS]
        if bad or not self.faults:
            raise ChaosRefused(f"unknown fault {', '.join(bad) or '(none given)'}: choose from {', '.join(FAULTS)}")
        lo, hi = self.every_s
        if not 0 < lo <= hi:
            raise ChaosRefused(f"every_s must be a range 0 < low <= high, got {lo}-{hi}")
        if self.duration_s <= 0:
            raise ChaosRefused("duration_s must be positive")


class Chaos:
    """Fault injection into one running orchestrator's workers.

    Which workers: with ``address``, the orchestrator is asked (GetStats) for
    its backend, id and its workers' tenants; without it, say ``backend`` and
    either ``orchestrator_id``, ``state_dir``/``scope`` (docker) or
    ``socket_root`` (process).

    Raises:
        ChaosRefused: the orchestrator cannot be asked, or its workers cannot be reached.
    """

    def __init__(self, *, address: str | None = None, token: str | None = None, backend: str | None = None,
                 orchestrator_id: str | None = None, state_dir: str | Path | None = None, scope: str | None = None,
                 socket_root: str | Path | None = None, docker_client: Any = None,
                 tls: dict[str, str | None] | None = None, proc: Path = Path("/proc")) -> None:
        self.address = address
        self.token = token
        self.tls = tls or {}
        self._api: MLBridge | None = None
        self._bridges: list[str] | None = None
        if address:
            stats = self._stats()
            backend = backend or str(stats.get("backend") or "")
            orchestrator_id = orchestrator_id or str(stats.get("orchestrator_id") or "") or None
            self._bridges = sorted(stats.get("bridges") or {})
        if scope is None and state_dir is not None:
            scope = scope_of_state_dir(state_dir)
        drivers: dict[str, Callable[[], tuple[DockerWorkers | ProcessWorkers, DockerFaults | ProcessFaults]]] = {
            "docker": lambda: self._docker(orchestrator_id, scope, docker_client),
            "process": lambda: self._process(orchestrator_id, socket_root, proc),
        }
        if not backend:
            raise ChaosRefused("say which backend runs the workers (or give the orchestrator's address)")
        if backend not in drivers:
            raise ChaosRefused(f"backend {backend!r}: chaos knows how to reach docker and process workers only")
        self.backend = backend
        self.finder, self.injector = drivers[backend]()

    @staticmethod
    def _docker(orchestrator_id: str | None, scope: str | None, client: Any) -> tuple[DockerWorkers, DockerFaults]:
        finder = DockerWorkers(orchestrator_id=orchestrator_id, scope=scope, client=client)
        return finder, DockerFaults(finder)

    @staticmethod
    def _process(orchestrator_id: str | None, root: str | Path | None, proc: Path) -> tuple[ProcessWorkers,
                                                                                            ProcessFaults]:
        return ProcessWorkers(orchestrator_id=orchestrator_id, socket_root=root, proc=proc), ProcessFaults()

    # -- the orchestrator's view -------------------------------------------------------------
    def _client(self) -> MLBridge:
        if self._api is None:
            assert self.address
            self._api = MLBridge.connect(self.address, self.token, timeout=10, tls_ca=self.tls.get("ca"),
                                         tls_cert=self.tls.get("cert"), tls_key=self.tls.get("key"))
        return self._api

    def _stats(self) -> dict[str, Any]:
        try:
            return self._client().stats()
        except MLBridgeError as err:
            raise ChaosRefused(f"cannot ask the orchestrator at {self.address}: {err.code}: {err.message}") from None

    def _tenants(self) -> dict[str, str]:
        try:
            return {str(w["worker_id"]): str(w.get("tenant") or "") for w in self._client().stats()["workers"]}
        except (MLBridgeError, KeyError, TypeError):
            return {}

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    def __enter__(self) -> Chaos:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- targets -----------------------------------------------------------------------------
    def workers(self, selection: Selection | None = None) -> list[WorkerTarget]:
        """The serving workers (with their tenants, when the orchestrator says), narrowed by ``selection``."""
        found = with_tenants(self.finder.list(), self._tenants if self.address else None)
        return selection.pick(found) if selection is not None else found

    def check_bridges(self, bridges: Sequence[str], found: Sequence[WorkerTarget] | None = None) -> None:
        """Refuse bridges the orchestrator does not serve (without its API: of which no worker runs)."""
        if self._bridges is not None:
            known = set(self._bridges)
        else:
            known = {w.bridge for w in (self.workers() if found is None else found)}
        unknown = [b for b in bridges if b not in known]
        if unknown:
            where = f"the orchestrator serves {', '.join(sorted(known)) or 'none'}" if self._bridges is not None \
                else f"no workers of it among {self.finder.selector()}"
            raise ChaosRefused(f"unknown bridge {', '.join(unknown)}: {where}")

    def check(self, plan: ChaosPlan) -> list[WorkerTarget]:
        """Refuse what cannot be done: unknown bridges, unsupported faults, no worker to hit.

        Returns:
            The workers the plan may hit now.

        Raises:
            ChaosRefused: saying what is wrong.
        """
        for kind in plan.faults:
            why = self.injector.refuses(kind)
            if why:
                raise ChaosRefused(why)
        every = self.workers()
        self.check_bridges(plan.bridges, every)
        chosen = plan.selection.pick(every)
        if not chosen:
            what = [f"bridge {', '.join(plan.bridges)}" if plan.bridges else "any bridge"]
            if plan.tenant is not None:
                what.append(f"tenant {plan.tenant}")
            elif plan.claimed_only:
                what.append("claimed by a tenant")
            extra = ""
            if isinstance(self.finder, ProcessWorkers) and self.finder.unreadable:
                extra = (f"; {self.finder.unreadable} worker processes could not be read (no permission: run as "
                         "their user or root)")
            raise ChaosRefused(f"no workers found ({', '.join(what)}) among {self.backend} workers of "
                               f"{self.finder.selector()} ({len(every)} serving in all){extra}")
        return chosen

    # -- faults ------------------------------------------------------------------------------
    def inject(self, kind: str, target: WorkerTarget, *, seconds: float | None = None, oom_wait_s: float = 5.0,
               stop: threading.Event | None = None) -> FaultRecord:
        """Inject one fault into ``target`` now; returns when it is over (a pause: after the resume).

        Raises:
            ChaosRefused: this backend cannot inject ``kind``, or has no permission to.
        """
        if kind not in FAULTS:
            raise ChaosRefused(f"unknown fault {kind!r}: choose from {', '.join(FAULTS)}")
        rec = FaultRecord(kind, target, at=time.monotonic())
        inj = self.injector
        if kind == "kill":
            rec.result = inj.kill(target)
        elif kind == "oom":
            rec.result = inj.oom(target, oom_wait_s)
        elif kind == "pause":
            rec.result = inj.pause(target, 2.0 if seconds is None else seconds, stop)
        elif kind == "slow":
            rec.result = inj.slow(target, 3.0 if seconds is None else seconds, stop)
        else:
            rec.result = inj.cut(target, 2.0 if seconds is None else seconds, stop)
        rec.ended = time.monotonic()
        return rec

    def run(self, plan: ChaosPlan, workload: WorkloadSpec | None = None, *,
            audit_log: str | Path | None = None, log: Callable[[str], None] | None = None) -> ChaosReport:
        """Inject ``plan``'s faults while ``workload`` (if any) runs; check resources and the audit log after.

        Raises:
            ChaosRefused: before anything was injected (see :meth:`check`, and the workload's refusals).
        """
        if workload is not None and not self.address:
            raise ChaosRefused("a workload needs the orchestrator's address")
        for kind in plan.faults:
            if why := self.injector.refuses(kind):
                raise ChaosRefused(why)
        self.check_bridges(plan.bridges)
        rng = random.Random(plan.seed)
        wl = Workload(self.address or "", workload, tls=self.tls, seed=plan.seed) if workload else None
        say = log or (lambda _line: None)
        faults: list[FaultRecord] = []
        skipped: list[str] = []
        threads: list[threading.Thread] = []
        busy: set[str] = set()
        stop = threading.Event()
        lock = threading.Lock()
        try:
            if wl is not None:
                wl.prepare()  # its first calls claim workers: only then can claimed ones be chosen
            self.check(plan)
            if wl is not None:
                wl.start()
            origin = time.monotonic()
            end = origin + plan.duration_s
            kinds = itertools.cycle(plan.faults)
            at = origin + rng.uniform(*plan.every_s)
            while at <= end - plan.settle_s:
                time.sleep(max(0.0, at - time.monotonic()))
                kind = next(kinds)
                target = self._pick(plan, rng, busy, lock)
                if target is None:
                    skipped.append(f"{time.monotonic() - origin:.1f} s: {kind}: no worker matched")
                    at += rng.uniform(*plan.every_s)
                    continue
                say(f"{time.monotonic() - origin:6.1f} s  {kind:<5} {target.describe()}")
                seconds = {"pause": plan.pause_s, "slow": plan.slow_s, "cut": plan.cut_s}.get(kind)
                if kind in _TIMED:
                    rec = FaultRecord(kind, target, at=time.monotonic())
                    faults.append(rec)
                    with lock:
                        busy.add(target.worker_id)
                    t = threading.Thread(target=self._timed, args=(rec, seconds, plan, stop, busy, lock),
                                         name=f"chaos-{kind}", daemon=True)
                    threads.append(t)
                    t.start()
                else:
                    faults.append(self.inject(kind, target))
                at += rng.uniform(*plan.every_s)
            time.sleep(max(0.0, end - time.monotonic()))
            stop.set()
            for t in threads:
                t.join(plan.oom_wait_s + 30)
        except BaseException:
            stop.set()  # paused, throttled or cut workers are let go at once
            for t in threads:
                t.join(10)
            if wl is not None:
                wl.stop()
                wl.close()
            raise
        if wl is not None:
            wl.stop()
        finished = time.monotonic()
        report = ChaosReport(self.backend, self.finder.selector(), finished - origin, origin, faults,
                             list(wl.records) if wl else [], workload.bridge if workload else None,
                             workload.clients if workload else 0, skipped=skipped)
        if wl is not None:
            recovery_times(faults, wl.records, workload.bridge if workload else "", finished)
            report.resources = wl.check_resources()
            wl.cleanup()
            wl.close()
        if audit_log is not None:
            report.audit = check_audit(audit_log, wl.records if wl else [])
            self._confirm(report)
        return report

    def _pick(self, plan: ChaosPlan, rng: random.Random, busy: set[str], lock: threading.Lock,
              wait_s: float = 2.0) -> WorkerTarget | None:
        """A worker the plan may hit, not under a fault already; waits up to ``wait_s`` for one (a replacement)."""
        deadline = time.monotonic() + wait_s
        while True:
            with lock:
                taken = set(busy)
            found = [w for w in plan.selection.pick(self.workers()) if w.worker_id not in taken]
            if found:
                return rng.choice(sorted(found, key=lambda w: w.worker_id))
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def _timed(self, rec: FaultRecord, seconds: float | None, plan: ChaosPlan, stop: threading.Event,
               busy: set[str], lock: threading.Lock) -> None:
        try:
            done = self.inject(rec.kind, rec.worker, seconds=seconds, oom_wait_s=plan.oom_wait_s, stop=stop)
            rec.result, rec.ended = done.result, done.ended
        except ChaosRefused as exc:
            rec.result, rec.ended = FaultResult(error=str(exc)), time.monotonic()
        except Exception as exc:  # noqa: BLE001 - reported with the fault
            rec.result, rec.ended = FaultResult(error=f"{type(exc).__name__}: {exc}"), time.monotonic()
        finally:
            with lock:
                busy.discard(rec.worker.worker_id)

    @staticmethod
    def _confirm(report: ChaosReport) -> None:
        """What the orchestrator recorded of each faulted worker's end (the audit log's worker_kill cause)."""
        if report.audit is None:
            return
        causes: dict[str, str] = report.audit["worker_kill_causes"]  # read once, by check_audit
        for f in report.faults:
            if f.worker.worker_id in causes:
                f.result.details["orchestrator_cause"] = causes[f.worker.worker_id]


def run_chaos(plan: ChaosPlan, workload: WorkloadSpec | None = None, *, audit_log: str | Path | None = None,
              log: Callable[[str], None] | None = None, **where: Any) -> ChaosReport:
    """``Chaos(**where).run(plan, workload, audit_log=...)``, closing the orchestrator's client after.

    Example::

        report = run_chaos(ChaosPlan(faults=("kill", "oom", "pause"), every_s=(3, 5), duration_s=60,
                                     bridges=("mock",), claimed_only=True),
                           WorkloadSpec(clients=32, tokens=["token-a", "token-b"]),
                           address="127.0.0.1:50051", token="token-a", audit_log="/var/log/mlbridge/audit.log")
        print(report.render())
    """
    with Chaos(**where) as chaos:
        return chaos.run(plan, workload, audit_log=audit_log, log=log)
