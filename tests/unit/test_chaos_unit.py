"""``orchestrator.chaos`` against the process backend: it finds the right workers, kill / pause / cut hit
them, the report counts what callers saw, and refusals say why."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator import MLBridge
from orchestrator.chaos import (
    CallRecord,
    Chaos,
    ChaosPlan,
    ChaosRefused,
    FaultRecord,
    FaultResult,
    ProcessWorkers,
    WorkerTarget,
    WorkloadSpec,
    run_chaos,
)
from orchestrator.chaos.report import check_audit, outcomes, recovery_times
from orchestrator.chaos.targets import docker_client, runtime_argv
from orchestrator.cli import main
from tests.harness import ServerThread, make_config

BRIDGES = {"mock": {"runtime": "mock", "pool_size": 1, "held": 0}}


@pytest.fixture()
def srv(tmp_path: Path):
    with ServerThread(make_config(tmp_path, bridges=BRIDGES, audit_log=str(tmp_path / "audit.log"))) as s:
        yield s


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _alive(pid: int) -> bool:
    return _state(pid) not in ("gone", "Z", "X")


def _wait(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _two_ready(srv: ServerThread) -> bool:
    workers = srv.orch.pools["mock"].workers.values()
    return len(workers) == 2 and all(w.state == "ready" for w in workers)


def _claimed(chaos: Chaos) -> WorkerTarget:
    [w] = [w for w in chaos.workers() if w.tenant == "default"]
    return w


# -- finding workers ---------------------------------------------------------------------------

def test_finds_exactly_this_orchestrators_workers_with_their_tenants(tmp_path: Path, srv: ServerThread) -> None:
    other_cfg = make_config(tmp_path / "other", bridges=BRIDGES)
    with ServerThread(other_cfg) as other, MLBridge.connect(srv.target) as mb, Chaos(address=srv.target) as chaos:
        assert chaos.backend == "process"
        mb.call("mock", "mock:echo", {})
        _wait(lambda: _two_ready(srv))  # the claimed one and its refill
        found = chaos.workers()
        assert {w.worker_id for w in found} == set(srv.orch.pools["mock"].workers)
        assert not {w.worker_id for w in found} & set(other.orch.pools["mock"].workers)
        by_id = {w.worker_id: w for w in found}
        for wid, worker in srv.orch.pools["mock"].workers.items():
            assert by_id[wid].tenant == (worker.tenant or "")
            assert by_id[wid].pid == worker.handle.ref.pid and by_id[wid].bridge == "mock"
        # Without the API: by orchestrator id, or by the socket root; tenants unknown then.
        by_id_only = ProcessWorkers(orchestrator_id=srv.orch.id).list()
        assert {w.worker_id for w in by_id_only} == set(srv.orch.pools["mock"].workers)
        root = srv.orch.backend.sockets.root
        assert {w.worker_id for w in ProcessWorkers(socket_root=root).list()} == set(srv.orch.pools["mock"].workers)


def test_runtime_argv_reads_only_runtime_command_lines() -> None:
    assert runtime_argv(b"/usr/bin/python3\0-m\0runtimes.start\0--bridge\0m:B\0--socket\0/r/w/runtime.sock\0") \
        == {"bridge": "m:B", "socket": "/r/w/runtime.sock"}
    assert runtime_argv(b"python\0-c\0runtimes.start --socket x\0") is None
    assert runtime_argv(b"sh\0-m\0runtimes.start\0--socket\0x\0") is None


# -- faults hit the right worker ----------------------------------------------------------------

def test_kill_hits_the_chosen_worker_only_and_the_next_call_is_served(srv: ServerThread) -> None:
    with MLBridge.connect(srv.target) as mb, Chaos(address=srv.target) as chaos:
        mb.call("mock", "mock:echo", {})
        _wait(lambda: _two_ready(srv))
        target = _claimed(chaos)
        [spare] = [w for w in chaos.workers() if w.worker_id != target.worker_id]
        rec = chaos.inject("kill", target)
        assert rec.result.effect == "SIGKILL" and not rec.result.error
        assert target.pid is not None and spare.pid is not None
        _wait(lambda: not _alive(target.pid))  # type: ignore[arg-type]
        assert _alive(spare.pid)
        assert mb.call("mock", "mock:echo", {"after": 1}) == {"after": 1}
        assert target.worker_id not in srv.orch.pools["mock"].workers


def test_pause_stops_the_worker_for_its_length_then_resumes_it(srv: ServerThread) -> None:
    with MLBridge.connect(srv.target) as mb, Chaos(address=srv.target) as chaos:
        mb.call("mock", "mock:echo", {})
        target = _claimed(chaos)
        assert target.pid is not None
        states: list[str] = []
        timing: dict[str, float] = {}

        def call_during_pause() -> None:
            _wait(lambda: _state(target.pid) == "T")  # type: ignore[arg-type]
            states.append("T")
            started = time.monotonic()
            mb.call("mock", "mock:echo", {"during": 1})
            timing["took"] = time.monotonic() - started

        t = threading.Thread(target=call_during_pause)
        t.start()
        rec = chaos.inject("pause", target, seconds=0.8)
        t.join(10)
        assert states == ["T"] and rec.result.effect == "stopped 0.8 s"
        assert timing["took"] > 0.4  # the call waited for the resume
        assert _alive(target.pid) and _state(target.pid) != "T"
        assert target.worker_id in srv.orch.pools["mock"].workers  # a short pause is survived


def test_cut_hides_the_socket_and_stops_the_runtime_then_restores_both(srv: ServerThread) -> None:
    with MLBridge.connect(srv.target) as mb, Chaos(address=srv.target) as chaos:
        mb.call("mock", "mock:echo", {})
        target = _claimed(chaos)
        assert target.socket_path and os.path.exists(target.socket_path)
        seen: list[tuple[bool, str]] = []

        def watch() -> None:
            _wait(lambda: _state(target.pid) == "T")  # type: ignore[arg-type]
            seen.append((os.path.exists(target.socket_path or ""), _state(target.pid)))  # type: ignore[arg-type]

        t = threading.Thread(target=watch)
        t.start()
        rec = chaos.inject("cut", target, seconds=0.5)
        t.join(10)
        assert seen == [(False, "T")] and "socket hidden" in rec.result.effect
        assert os.path.exists(target.socket_path) and _state(target.pid) != "T"  # type: ignore[arg-type]
        assert mb.call("mock", "mock:echo", {"x": 1}) == {"x": 1}


# -- a run and its report -----------------------------------------------------------------------

def test_a_short_run_counts_every_call_and_checks_resources_and_audit(srv: ServerThread) -> None:
    audit = srv.config.audit_log
    report = run_chaos(ChaosPlan(faults=("kill", "pause"), every_s=(0.8, 0.8), duration_s=3.0, bridges=("mock",),
                                 claimed_only=True, pause_s=0.3, settle_s=0.5, seed=1),
                       WorkloadSpec(clients=3, call_timeout_s=5.0), address=srv.target, audit_log=audit)
    assert [f.kind for f in report.faults] == ["kill", "pause", "kill"][:len(report.faults)]
    assert len(report.faults) >= 2 and not [f for f in report.faults if f.result.error]
    total = report.outcomes["total"]
    assert sum(total.values()) == len(report.records) > 10
    assert sum(n for op, by in report.outcomes.items() if op != "total" for n in by.values()) == len(report.records)
    assert set(report.failure_codes) <= {"WORKER_DIED", "UNAVAILABLE"}, report.failure_codes
    assert report.resources is not None and report.resources["expected"] == report.resources["listed"]
    assert report.audit is not None and report.audit["chain_ok"] and report.audit["missing"] == 0
    assert report.audit["calls_checked"] == len(report.records)
    data = report.to_dict()
    assert data["outcomes"] == report.outcomes and len(data["faults"]) == len(report.faults)
    text = report.render()
    assert "FAULT" in text and "resources:" in text and "audit: chain verifies" in text


def _rec(op: str, start: float, end: float, code: str = "OK", tenant: str = "t") -> CallRecord:
    return CallRecord(op, "Call", tenant, start, end, code)


def test_outcomes_and_recovery_arithmetic() -> None:
    records = [_rec("echo", 0.0, 0.1), _rec("echo", 1.0, 2.5, "WORKER_DIED"), _rec("execute", 1.1, 2.6, "WORKER_DIED"),
               _rec("echo", 1.2, 2.0), _rec("echo", 2.7, 2.8), _rec("echo", 1.3, 1.4, tenant="other"),
               _rec("echo", 5.1, 5.2)]
    assert outcomes(records) == {"echo": {"OK": 5, "WORKER_DIED": 1}, "execute": {"WORKER_DIED": 1},
                                 "total": {"OK": 5, "WORKER_DIED": 2}}
    target = WorkerTarget("w1", "mock", "process", "1", "pid 1", tenant="t")
    kill = FaultRecord("kill", target, at=1.0, result=FaultResult(effective_at=1.05))
    gone = FaultRecord("kill", target, at=5.0, result=FaultResult(gone=True))
    recovery_times([kill, gone], records, "mock", end=6.0)
    # First success of a call started after the fault: the echo started at 1.2, done at 2.0.
    assert kill.recovery_s == pytest.approx(0.95)
    # Stayed successful: after the last failure (2.6), the echo done at 2.8.
    assert kill.settled_s == pytest.approx(1.75) and kill.failed_calls == 2
    assert gone.recovery_s is None


def test_audit_check_finds_calls_without_records(tmp_path: Path, srv: ServerThread) -> None:
    with MLBridge.connect(srv.target) as mb:
        mb.call("mock", "mock:echo", {}, call_id="c" * 32)
    seen = CallRecord("echo", "Call", "default", 0, 1, call_id="c" * 32)
    made_up = CallRecord("echo", "Call", "default", 0, 1, call_id="d" * 32)
    wrong = CallRecord("echo", "Call", "default", 0, 1, code="WORKER_DIED", call_id="c" * 32)
    result = check_audit(srv.config.audit_log or "", [seen, made_up, wrong])
    assert result["chain_ok"] and result["missing"] == 1 and result["mismatched"] == 1
    assert result["missing_sample"][0]["call_id"] == "d" * 32


# -- refusals -----------------------------------------------------------------------------------

def test_refuses_an_unknown_bridge_a_fault_the_backend_cannot_take_and_no_workers(srv: ServerThread) -> None:
    with Chaos(address=srv.target) as chaos:
        with pytest.raises(ChaosRefused, match="unknown bridge nope: the orchestrator serves mock"):
            chaos.check(ChaosPlan(bridges=("nope",)))
        with pytest.raises(ChaosRefused, match="process backend enforces none"):
            chaos.check(ChaosPlan(faults=("oom",)))
        with pytest.raises(ChaosRefused, match=r"no workers found \(bridge mock, tenant nobody\)"):
            chaos.check(ChaosPlan(bridges=("mock",), tenant="nobody"))
        with pytest.raises(ChaosRefused, match="the workload"):
            chaos.run(ChaosPlan(duration_s=1), WorkloadSpec(bridge="nope"))
    with pytest.raises(ChaosRefused, match="unknown fault explode"):
        ChaosPlan(faults=("explode",))
    with pytest.raises(ChaosRefused, match="no workers found"):
        Chaos(backend="process", orchestrator_id="not-running").check(ChaosPlan())
    with pytest.raises(ChaosRefused, match="say whose workers"):
        Chaos(backend="process")


def test_refuses_without_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import docker
    from docker import errors as derr

    def denied(**_: Any) -> Any:
        raise derr.DockerException("Error while fetching server API version: ('Connection aborted.', "
                                   "PermissionError(13, 'Permission denied'))")

    monkeypatch.setattr(docker, "from_env", denied)
    with pytest.raises(ChaosRefused, match="no permission to the Docker engine"):
        docker_client()
    with pytest.raises(ChaosRefused, match="no permission to the Docker engine"):
        Chaos(backend="docker", state_dir=tmp_path)
    # A worker process whose environment cannot be read is not ours to touch, and the refusal says so.
    proc = tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    (proc / "4242" / "cmdline").write_bytes(b"python3\0-m\0runtimes.start\0--socket\0/x/w/runtime.sock\0")
    (proc / "4242" / "stat").write_text("4242 (python3) S 1")
    with pytest.raises(ChaosRefused, match="could not be read"):
        Chaos(backend="process", orchestrator_id="o1", proc=proc).check(ChaosPlan())


def test_cli(srv: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    with MLBridge.connect(srv.target) as mb:
        mb.call("mock", "mock:echo", {})
    assert main(["--address", srv.target, "chaos", "workers", "--bridge", "nope"]) == 2
    assert "unknown bridge nope" in capsys.readouterr().err
    assert main(["--address", srv.target, "chaos", "run", "--faults", "oom", "--duration", "1"]) == 2
    assert "process backend enforces none" in capsys.readouterr().err
    assert main(["--address", srv.target, "chaos", "workers", "--claimed"]) == 0
    assert "default" in capsys.readouterr().out
    assert main(["--address", srv.target, "chaos", "inject", "pause", "--claimed", "--seconds", "0.2"]) == 0
    assert "pause" in capsys.readouterr().out
    with contextlib.suppress(SystemExit):
        main(["--address", srv.target, "chaos", "run", "--every", "5-1"])
    assert "LOW <= HIGH" in capsys.readouterr().err
