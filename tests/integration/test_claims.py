"""The claim pipeline against real docker workers: a tenant's lower limits hold before its replayed code runs.

A tenant whose policy lowers the custom bridge's pids and memory limits
registers a resource type; the type's module records, when it is imported,
the cgroup limits it runs under. Its first worker is claimed (limits lowered
first), then retired; the next call claims a fresh spare, which replays the
registration. The replayed module must see the tenant's limits, not the
operator's: the claim applies limits before it replays anything.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from orchestrator import MLBridge
from orchestrator.claims import STEPS
from tests.harness import ServerThread, make_config

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TOKEN = f"acme-{uuid.uuid4().hex}"
MIB = 1024 * 1024
POLICY = f"""
version: 1
defaults:
  bridges: [custom]
  rules: [{{name: all, effect: allow}}]
tenants:
  acme:
    tokens: ["sha256:{hashlib.sha256(TOKEN.encode()).hexdigest()}"]
    limits:
      bridges:
        custom: {{pids: 48, memory: 200m}}
"""
PROBE = '''
def _read(*paths):
    for path in paths:
        try:
            with open(path) as fh:
                return fh.read().strip()
        except OSError:
            pass
    return "unreadable"

# Read once, when the module is imported: at registration, and again when a claim replays it.
SEEN = {
    "pids": _read("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"),
    "memory": _read("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
}

class Probe:
    def create(self, config):
        pass

    def execute(self, inputs):
        return SEEN
'''


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp("claims")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    policy.chmod(0o600)
    cfg = make_config(tmp, backend="docker", policy=str(policy), default_bridge="custom", bridges={
        "custom": {"runtime": "custom", "pool_size": 1, "limits": {"cpus": 1.0, "memory": "512m", "pids": 128}}})
    with ServerThread(cfg) as s:
        yield s


def _at_rest(srv: ServerThread, bridge: str = "custom") -> None:
    """Wait until the pool's spare is back and nothing is starting (nor being held)."""
    pool = srv.orch.pools[bridge]
    end = time.monotonic() + 60
    while (pool._starting or pool._holding or pool._spare_starts
           or not any(not w.tenant and w.state == "ready" for w in pool.workers.values())):
        assert time.monotonic() < end, "the pool did not refill its spare"
        time.sleep(0.05)


def test_claim_steps_are_in_the_documented_order() -> None:
    assert STEPS == ("limits", "secrets", "egress", "models", "configure", "replay", "naming")


def test_replayed_code_runs_under_the_tenants_lower_limits(srv: ServerThread) -> None:
    dk = docker.from_env()
    try:
        with MLBridge.connect(srv.target, token=TOKEN) as mb:
            mb.call("custom", "custom:register_type", {"name": "probe", "code": PROBE, "class": "Probe"})
            rid = mb.create_resource("custom", "probe", {})
            first = mb.execute_resource(rid)
            assert first == {"pids": "48", "memory": str(200 * MIB)}, first
            pool = srv.orch.pools["custom"]
            (old,) = pool.claimed("acme")
            _at_rest(srv)
            # The operator's limits are what a spare starts with.
            spare = next(w for w in pool.workers.values() if not w.tenant)
            assert dk.api.inspect_container(spare.handle.ref)["HostConfig"]["PidsLimit"] == 128
            srv.run(pool.retire(old, "retired by the test"))
            # The next use claims a fresh spare: limits, ..., then the registration is replayed,
            # the resource re-created from its spec, and the module's import-time reading returned.
            again = mb.execute_resource(rid)
            (new,) = pool.claimed("acme")
            assert new.id != old.id
            assert again == {"pids": "48", "memory": str(200 * MIB)}, again
            hc = dk.api.inspect_container(new.handle.ref)["HostConfig"]
            assert (hc["PidsLimit"], hc["Memory"], hc["MemorySwap"]) == (48, 200 * MIB, 200 * MIB)
    finally:
        dk.close()


def test_no_leftover_socket_dirs(srv: ServerThread) -> None:
    _at_rest(srv)
    live = {w.id for p in srv.orch.pools.values() for w in p.workers.values()}
    live |= {h.worker_id for p in srv.orch.pools.values() for h in p._held}  # started, runtime waiting
    on_disk = {p.name for p in Path(srv.app.backend.sockets.root).iterdir()}  # type: ignore[attr-defined]
    assert on_disk == live
