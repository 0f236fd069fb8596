"""Chaos tooling: inject faults into a running orchestrator's workers while a workload runs, and report.

::

    from orchestrator.chaos import ChaosPlan, WorkloadSpec, run_chaos

    report = run_chaos(ChaosPlan(faults=("kill", "oom", "pause"), every_s=(3, 5), duration_s=60,
                                 bridges=("mock",), claimed_only=True, pause_s=1.0),
                       WorkloadSpec(clients=32, tokens=["token-a", "token-b"]),
                       address="127.0.0.1:50051", token="token-a", audit_log="audit.log")
    print(report.render())        # or report.to_dict()

Faults (:mod:`.faults` says exactly what each does per backend): ``kill``,
``pause``, ``oom``, ``slow``, ``cut``. ``mlbridge chaos`` is the same from
the command line (:mod:`.cli`).
"""

from .faults import FAULTS, FaultResult
from .report import UNSPECIFIC_CODES, ChaosReport, FaultRecord
from .runner import Chaos, ChaosPlan, run_chaos
from .targets import (
    ChaosRefused,
    DockerWorkers,
    ProcessWorkers,
    Selection,
    WorkerTarget,
    scope_of_state_dir,
)
from .workload import CallRecord, Workload, WorkloadSpec

__all__ = [
    "FAULTS",
    "UNSPECIFIC_CODES",
    "CallRecord",
    "Chaos",
    "ChaosPlan",
    "ChaosRefused",
    "ChaosReport",
    "DockerWorkers",
    "FaultRecord",
    "FaultResult",
    "ProcessWorkers",
    "Selection",
    "WorkerTarget",
    "Workload",
    "WorkloadSpec",
    "run_chaos",
    "scope_of_state_dir",
]
