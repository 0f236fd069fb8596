"""The chaos suite: a docker-backend orchestrator under a 32-client mixed load while its workers are
killed, OOM-killed and paused, one fault every 3-5 s for 60 s.

Properties (each printed with its figures, all checked before the test fails):

- no resource lost: every resource the load created and did not delete is listed and executable at the
  end, and every journal entry acknowledged to a caller is still there;
- no audit record lost: the hash chain verifies and every call the load made has its record;
- every failed call carries a specific code from the orchestrator (never UNKNOWN / INTERNAL / a client-side
  error, nor a bare gRPC status because the orchestrator did not answer before the client gave up);
- calls to the faulted worker's tenant succeed again within 2 s of each fault (first success of a call
  started after the fault; the "settled" time, after the last failure, is printed too);
- OOM faults are real: the kernel killed the worker for memory, the orchestrator recorded it as ``oom``
  and callers saw OUT_OF_MEMORY.

The orchestrator runs as ``mlbridge serve`` in its own process (the load's 32 threads would otherwise
share its interpreter); the faults go through the Docker engine, to the containers carrying the
orchestrator's scope label.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from benchmarks._common import free_port
from orchestrator.chaos import ChaosPlan, ChaosReport, WorkloadSpec, run_chaos, scope_of_state_dir

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
TOKENS = ("chaos-token-a", "chaos-token-b")
DURATION_S = 60.0
CLIENTS = 32
EVERY_S = (3.0, 5.0)
FAULTS = ("kill", "oom", "pause")
PAUSE_S = 1.0
RECOVERY_BOUND_S = 2.0


@dataclass
class Served:
    address: str
    state_dir: Path
    audit_log: Path
    log: Path


def _policy(path: Path) -> None:
    tenants = "\n".join(f"""  {name}:
    tokens: ["sha256:{hashlib.sha256(token.encode()).hexdigest()}"]""" for name, token in
                        zip(("tenant-a", "tenant-b"), TOKENS, strict=True))
    path.write_text(f"""version: 1
defaults:
  bridges: [mock]
  rules:
    - {{name: read-only, effect: allow, actions: [list_bridges, describe, list_resources, stats, cancel]}}
    - {{name: all-mock, effect: allow, bridges: [mock]}}
  # The built-in quotas (8 calls in flight, 600 a minute) would refuse most of a 32-client load.
  quotas: {{max_concurrent_calls: 64, max_calls_per_minute: 1000000}}
tenants:
{tenants}
""")
    path.chmod(0o600)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("chaos")
    _policy(tmp / "policy.yaml")
    (tmp / "config.yaml").write_text(f"""default_bridge: mock
backend: docker
state_dir: {tmp / 'state'}
bridges:
  mock:
    runtime: mock
    pool_size: 2
    held: 2
    limits: {{cpus: 0.5, memory: 256m}}
""")
    address = f"127.0.0.1:{free_port()}"
    log = tmp / "serve.log"
    out = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", "--config", str(tmp / "config.yaml"),
                             "--listen", address, "--policy", str(tmp / "policy.yaml"),
                             "--audit-log", str(tmp / "audit.log")],
                            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 120
    while b"serving" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("mlbridge serve did not come up:\n" + log.read_text()[-3000:])
        time.sleep(0.2)
    try:
        yield Served(address, tmp / "state", tmp / "audit.log", log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        out.close()
        client = docker.from_env()
        scope = scope_of_state_dir(tmp / "state")
        for _ in range(3):  # held workers exit (and may appear) just after their orchestrator
            for c in client.containers.list(all=True, filters={"label": f"io.mlbridge.scope={scope}"}):
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    c.remove(force=True)
            time.sleep(1)
        client.close()


def _log_excerpt(log: Path, needles: tuple[str, ...] = ("ERROR", "Traceback", "WARNING")) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if any(n in ln for n in needles)]
    return "\n".join(lines[-40:])


def test_chaos_suite(served: Served) -> None:
    started = time.monotonic()
    report: ChaosReport = run_chaos(
        ChaosPlan(faults=FAULTS, every_s=EVERY_S, duration_s=DURATION_S, bridges=("mock",), claimed_only=True,
                  pause_s=PAUSE_S, oom_wait_s=5.0, seed=7),
        WorkloadSpec(clients=CLIENTS, tokens=TOKENS, bridge="mock", call_timeout_s=10.0),
        address=served.address, token=TOKENS[0], state_dir=served.state_dir, audit_log=served.audit_log,
        log=lambda line: print(line, flush=True))
    took = time.monotonic() - started
    print()
    print(report.render())
    summary = report.to_dict()
    print(json.dumps({k: summary[k] for k in ("failure_codes", "faults_by_kind", "recovery")}))
    print(f"chaos run took {took:.1f} s")

    problems: list[str] = []
    # Faults were really injected, at the rate asked.
    failed_faults = [f for f in report.faults if f.result.error]
    if len(report.faults) < int(DURATION_S / EVERY_S[1]) - 2 or failed_faults:
        problems.append(f"faults: {len(report.faults)} injected, failed: "
                        f"{[(f.kind, f.result.error) for f in failed_faults]}; skipped: {report.skipped}")
    # No resource lost.
    res = report.resources or {}
    if res.get("missing") or res.get("not_executable") or res.get("vanished_on_delete") \
            or res.get("journal_entries_lost"):
        problems.append(f"resources lost: missing {res.get('missing')}, not executable {res.get('not_executable')}, "
                        f"vanished before delete {res.get('vanished_on_delete')}, journal entries lost "
                        f"{res.get('journal_entries_lost')}")
    # No audit record lost.
    audit = report.audit or {}
    if not audit.get("chain_ok") or audit.get("missing"):
        problems.append(f"audit: chain ok {audit.get('chain_ok')} ({audit.get('reason')}), calls without a record "
                        f"{audit.get('missing')}: {json.dumps(audit.get('missing_sample'))[:2000]}")
    # Every failure carries a specific code, from the orchestrator (not the client's own deadline running out).
    if report.unspecific:
        problems.append("unspecific failures: " + json.dumps([r.to_dict() for r in report.unspecific[:10]]))
    if report.unanswered:
        problems.append(f"{len(report.unanswered)} calls never answered by the orchestrator (gRPC status at the "
                        "client's transport deadline, call deadline + 5 s): "
                        + json.dumps([r.to_dict() for r in report.unanswered[:10]]))
    # Calls succeed again within 2 s of each fault.
    slow = [(f.kind, f.worker.worker_id, f.recovery_s) for f in report.faults
            if f.worker.bridge == "mock" and not f.result.error and not f.result.gone
            and (f.recovery_s is None or f.recovery_s > RECOVERY_BOUND_S)]
    if slow:
        problems.append(f"not recovered within {RECOVERY_BOUND_S} s: {slow}")
    # The OOM faults were real out-of-memory kills, reported as such.
    ooms = [f for f in report.faults if f.kind == "oom" and not f.result.gone]
    not_oom = [(f.worker.worker_id, f.result.effect, f.result.details.get("orchestrator_cause")) for f in ooms
               if f.result.details.get("orchestrator_cause") != "oom"]
    if not ooms or not_oom or "OUT_OF_MEMORY" not in report.failure_codes:
        problems.append(f"oom: {len(ooms)} faults, not reported as oom: {not_oom}; callers saw "
                        f"{report.failure_codes}")
    if problems:
        print("orchestrator log (errors and warnings):\n" + _log_excerpt(served.log))
    assert not problems, "\n".join(problems)
