"""Two tenants through the real gRPC server with a policy and an audit log (process backend)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from orchestrator import MLBridge, NotFound, PermissionDenied, QuotaExceeded, Unauthenticated
from orchestrator.audit import verify_file
from orchestrator.proto import mlbridge_pb2 as pb
from orchestrator.proto import mlbridge_pb2_grpc as pb_grpc
from runtimes.wire.errors import DeadlineExceeded
from tests.harness import ServerThread, digest, make_config

SECRET = "s3cr3t-value-for-alice-7f3a9"


POLICY = f"""
version: 1
defaults:
  bridges: [mock]
  rules:
    - {{name: read-only, effect: allow, actions: [list_bridges, describe, list_resources, stats, cancel]}}
    - {{name: mock-all, effect: allow, actions: [call, create_resource, execute_resource, delete_resource], bridges: [mock]}}
    - {{name: no-crash, effect: deny, commands: ["mock:crash"]}}
  quotas: {{max_concurrent_calls: 2, max_calls_per_minute: 1000, max_resources: 3, max_workers: 1}}
  limits: {{call_timeout_s: 1.5}}
tenants:
  alice:
    tokens: ["{digest('alice-token')}"]
    secrets:
      mock: {{MOCK_API_KEY: {{env: TEST_ALICE_MOCK_KEY}}}}
  bob:
    tokens: ["{digest('bob-token')}"]
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, ):
    tmp = tmp_path_factory.mktemp("tenancy")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    policy.chmod(0o600)
    audit = tmp / "audit" / "audit.jsonl"
    mp = pytest.MonkeyPatch()
    mp.setenv("TEST_ALICE_MOCK_KEY", SECRET)
    cfg = make_config(tmp, policy=str(policy), audit_log=str(audit),
                      bridges={"mock": {"runtime": "mock", "pool_size": 2, "secrets": ["MOCK_API_KEY"],
                                        "cancel_grace_s": 1.0}})
    with ServerThread(cfg) as srv:
        yield srv, audit, tmp
    mp.undo()


@pytest.fixture()
def alice(env):
    with MLBridge.connect(env[0].target, token="alice-token") as c:
        yield c


@pytest.fixture()
def bob(env):
    with MLBridge.connect(env[0].target, token="bob-token") as c:
        yield c


def test_authentication(env) -> None:
    srv = env[0]
    for token in (None, "wrong-token", ""):
        with MLBridge.connect(srv.target, token=token) as c, pytest.raises(Unauthenticated) as info:
            c.call("mock", "mock:echo", {})
        assert "alice" not in str(info.value) and "bob" not in str(info.value)
    with grpc.insecure_channel(srv.target) as ch:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.MLBridgeStub(ch).ListBridges(pb.ListBridgesRequest(), metadata=(("authorization", "Basic x"),))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_each_tenant_works_and_cannot_see_the_other(alice: MLBridge, bob: MLBridge) -> None:
    rid = alice.create_resource("mock", "counter", {"start": 7})
    assert alice.execute_resource(rid, {"add": 1}) == {"value": 8}
    assert rid not in [r["resource_id"] for r in bob.list_resources()]
    with pytest.raises(NotFound) as other:
        bob.execute_resource(rid, {"add": 1})
    with pytest.raises(NotFound) as missing:
        bob.execute_resource("res_never_existed", {"add": 1})
    # Indistinguishable from a resource that does not exist.
    assert str(other.value).replace(rid, "X") == str(missing.value).replace("res_never_existed", "X")
    with pytest.raises(NotFound):
        bob.delete_resource(rid)
    # Same client-chosen id in both tenants: two separate resources.
    alice.create_resource("mock", "counter", {"start": 1}, resource_id="shared-name")
    bob.create_resource("mock", "counter", {"start": 100}, resource_id="shared-name")
    assert alice.execute_resource("shared-name") == {"value": 2}
    assert bob.execute_resource("shared-name") == {"value": 101}
    assert alice.execute_resource(rid, {"add": 0}) == {"value": 8}  # bob touched nothing
    for c, r in ((alice, "shared-name"), (bob, "shared-name"), (alice, rid)):
        c.delete_resource(r)


def test_workers_belong_to_one_tenant(env, alice: MLBridge, bob: MLBridge) -> None:
    srv = env[0]
    assert alice.call("mock", "mock:whoami")["tenant"] == "alice"
    assert bob.call("mock", "mock:whoami")["tenant"] == "bob"
    a_workers = {w["worker_id"] for w in alice.stats()["workers"]}
    b_workers = {w["worker_id"] for w in bob.stats()["workers"]}
    assert a_workers and b_workers and not (a_workers & b_workers)
    tenants = {w.tenant for w in srv.orch.pools["mock"].workers.values()}
    assert {"alice", "bob"} <= tenants


def test_permission_denied_names_the_rule(alice: MLBridge, env) -> None:
    with pytest.raises(PermissionDenied) as info:
        alice.call("mock", "mock:crash")
    assert info.value.details["rule"] == "no-crash"
    with grpc.insecure_channel(env[0].target) as ch:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.MLBridgeStub(ch).Call(pb.CallRequest(bridge="mock", command="mock:crash"),
                                          metadata=(("authorization", "Bearer alice-token"),))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        detail = error_details_pb2.ErrorInfo()
        rpc_status.from_call(err.value).details[0].Unpack(detail)
        assert detail.reason == "PERMISSION_DENIED" and detail.metadata["rule"] == "no-crash"


def test_quotas(alice: MLBridge, bob: MLBridge) -> None:
    ids = [alice.create_resource("mock", "counter", {}) for _ in range(3)]
    with pytest.raises(QuotaExceeded) as info:
        alice.create_resource("mock", "counter", {})
    assert info.value.details["quota"] == "max_resources" and "max_resources" in str(info.value)
    for r in ids:
        alice.delete_resource(r)
    # Two concurrent calls allowed, the third refused while they run.
    threads = [threading.Thread(target=bob.call, args=("mock", "mock:sleep", {"seconds": 1.0})) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    with pytest.raises(QuotaExceeded) as info:
        bob.call("mock", "mock:echo", {})
    assert info.value.details["quota"] == "max_concurrent_calls"
    for t in threads:
        t.join()
    assert bob.call("mock", "mock:echo", {"ok": 1}) == {"ok": 1}


def test_policy_deadline_is_the_sooner(alice: MLBridge) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        alice.call("mock", "mock:sleep", {"seconds": 10})  # policy says 1.5 s
    assert time.monotonic() - started < 4
    with pytest.raises(DeadlineExceeded):
        alice.call("mock", "mock:sleep", {"seconds": 10}, timeout=0.3)  # the client's is sooner


def test_secret_reaches_only_its_tenant_and_appears_nowhere(env, alice: MLBridge, bob: MLBridge) -> None:
    srv, audit, tmp = env
    assert alice.call("mock", "mock:whoami")["secret_names"] == ["MOCK_API_KEY"]
    assert bob.call("mock", "mock:whoami")["secret_names"] == []
    with pytest.raises(PermissionDenied) as denied:
        alice.call("mock", "mock:crash")
    seen = json.dumps([alice.describe("mock"), alice.stats(), alice.list_bridges(), alice.list_resources(),
                       str(denied.value)])
    assert SECRET not in seen
    assert SECRET not in audit.read_text()
    for log in Path(srv.app.backend.sockets.root).rglob("*.log"):
        assert SECRET not in log.read_text(errors="replace")


def test_audit_log_records_and_verifies(env, alice: MLBridge, bob: MLBridge) -> None:
    srv, audit, tmp = env
    alice.call("mock", "mock:echo", {"code": "print('hi')"})
    with pytest.raises(PermissionDenied):
        bob.call("mock", "mock:crash")
    with MLBridge.connect(srv.target, token="nope") as c, pytest.raises(Unauthenticated):
        c.call("mock", "mock:echo", {})
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    events = {r["event"] for r in records}
    assert {"policy_load", "worker_start", "call", "denial", "auth_failure"} <= events
    call = next(r for r in records if r["event"] == "call" and r.get("command") == "mock:echo"
                and r.get("code_sha256"))
    assert call["tenant"] == "alice" and call["outcome"] == "ok" and call["code_sha256"] == \
        "sha256:" + hashlib.sha256(b"print('hi')").hexdigest() or call["code_sha256"].endswith(
        hashlib.sha256(b"print('hi')").hexdigest())
    assert "print('hi')" not in audit.read_text()
    denial = next(r for r in records if r["event"] == "denial" and r["tenant"] == "bob")
    assert denial["rule"] == "no-crash" and denial["decision"] == "deny"
    result = verify_file(audit)
    assert result.ok, result.reason


def test_read_only_denials_are_audited_too(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""version: 1
tenants:
  mute:
    tokens: ["{digest('mute-token')}"]
    bridges: [mock]
    rules: [{{name: calls-only, effect: allow, actions: [call]}}]
""")
    policy.chmod(0o600)
    audit = tmp_path / "audit.jsonl"
    cfg = make_config(tmp_path, policy=str(policy), audit_log=str(audit),
                      bridges={"mock": {"runtime": "mock", "pool_size": 1}})
    with ServerThread(cfg) as srv, MLBridge.connect(srv.target, token="mute-token") as mb:
        for op in (mb.list_bridges, mb.list_resources, mb.stats):
            with pytest.raises(PermissionDenied):
                op()
    denials = [json.loads(line) for line in audit.read_text().splitlines() if '"denial"' in line]
    assert {d["method"] for d in denials} == {"ListBridges", "ListResources", "GetStats"}
    assert all(d["tenant"] == "mute" and d["rule"] for d in denials)
    assert verify_file(audit).ok


def test_worker_records_carry_usage(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    policy.chmod(0o600)
    audit = tmp_path / "audit.jsonl"
    cfg = make_config(tmp_path, policy=str(policy), audit_log=str(audit),
                      bridges={"mock": {"runtime": "mock", "pool_size": 1}})
    with ServerThread(cfg) as srv, MLBridge.connect(srv.target, token="alice-token") as mb:
        mb.call("mock", "mock:allocate", {"mb": 40})
    stops = [json.loads(line) for line in audit.read_text().splitlines() if '"worker_stop"' in line]
    alice = next(r for r in stops if r.get("tenant") == "alice")
    assert alice["usage"]["memory_peak_bytes"] > 40 * 1024 * 1024  # the 40 MB it held shows
    assert alice["usage"]["cpu_ns"] > 0
    assert verify_file(audit).ok
