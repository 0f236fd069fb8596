"""The two-tenant example policy against real docker workers.

`mlbridge serve --backend docker --policy policies/examples/two-tenants.yaml
--audit-log FILE` in a subprocess; alice and bob (tokens `alice-example-token`
and `bob-example-token`) each do their work, every cross-tenant attempt fails
as specified, denials and quotas behave, the secret appears nowhere it must
not, and `mlbridge audit verify` passes on the log and fails on each kind of
tampering.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker
import pytest

from benchmarks._common import free_port
from orchestrator import MLBridge, NotFound, PermissionDenied, QuotaExceeded, Unauthenticated

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "policies" / "examples" / "two-tenants.yaml"
SECRET = "sk-alice-test-4f1c8e2b9d7a6350"
CONFIG = """
default_bridge: mock
backend: docker
bridges:
  mock:
    runtime: mock
    pool_size: 2
    limits: {cpus: 0.5, memory: 256m, pids: 128}
  dspy:
    runtime: dspy
    pool_size: 1
    secrets: [OPENAI_API_KEY, EXAMPLE_SETTING]
    limits: {cpus: 1.0, memory: 1g, pids: 256}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("two-tenants")
    # The registry goes to a fresh state dir; image records stay where `images build` put them.
    (tmp / "config.yaml").write_text(CONFIG + f"state_dir: {tmp / 'state'}\n")
    audit = tmp / "audit" / "audit.jsonl"
    port = free_port()
    log = (tmp / "serve.log").open("w")
    env = {**os.environ, "ALICE_OPENAI_API_KEY": SECRET, "MLBRIDGE_LOG_LEVEL": "DEBUG"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "serve", "--config", str(tmp / "config.yaml"),
         "--policy", str(POLICY), "--audit-log", str(audit), "--listen", f"127.0.0.1:{port}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 180
    while "serving" not in (tmp / "serve.log").read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("mlbridge serve did not come up:\n" + (tmp / "serve.log").read_text()[-3000:])
        time.sleep(0.2)
    yield {"address": f"127.0.0.1:{port}", "audit": audit, "log": tmp / "serve.log", "tmp": tmp, "proc": proc}
    proc.terminate()
    proc.wait(60)
    log.close()


def client(server: dict, token: str | None) -> MLBridge:
    return MLBridge.connect(server["address"], token=token)


def test_each_tenant_does_its_work(server: dict) -> None:
    with client(server, "alice-example-token") as alice:
        lm = alice.create_resource("dspy", "lm", {"provider": "dummy", "model": "dummy",
                                                  "answers": [{"answer": "4"}]})
        prog = alice.create_resource("dspy", "program", {"signature": "question -> answer",
                                                         "module": "Predict", "lm": lm})
        assert alice.execute_resource(prog, {"question": "2 + 2?"})["answer"] == "4"
        rid = alice.create_resource("mock", "counter", {"start": 1})
        assert alice.execute_resource(rid, {"add": 1}) == {"value": 2}
        # The secret reached alice's dspy worker: an OpenAI LM config finds its key.
        info = alice.create_resource("dspy", "lm", {"provider": "openai", "model": "openai/gpt-4o-mini"})
        assert info
    with client(server, "bob-example-token") as bob:
        rid = bob.create_resource("mock", "counter", {"start": 10})
        assert bob.execute_resource(rid, {"add": 5}) == {"value": 15}
        assert [b["name"] for b in bob.list_bridges()] == ["mock"]


def test_cross_tenant_attempts_fail_as_not_found(server: dict) -> None:
    with client(server, "alice-example-token") as alice, client(server, "bob-example-token") as bob:
        secret_rid = alice.create_resource("mock", "counter", {"start": 7_777_777})
        assert secret_rid not in [r["resource_id"] for r in bob.list_resources()]
        for op in (lambda: bob.execute_resource(secret_rid, {"add": 1}), lambda: bob.delete_resource(secret_rid)):
            with pytest.raises(NotFound) as other:
                op()
            assert "7777777" not in str(other.value)  # alice's state never shows
        with pytest.raises(NotFound) as missing:
            bob.execute_resource("res_not_there", {})
        assert type(missing.value) is NotFound
        assert alice.execute_resource(secret_rid, {"add": 0}) == {"value": 7_777_777}
        assert alice.call("mock", "mock:whoami")["tenant"] == "alice"
        assert bob.call("mock", "mock:whoami")["tenant"] == "bob"
        mine = {w["worker_id"] for w in alice.stats()["workers"]}
        theirs = {w["worker_id"] for w in bob.stats()["workers"]}
        assert mine and theirs and not (mine & theirs)


def test_denials_and_unauthenticated(server: dict) -> None:
    with client(server, "bob-example-token") as bob:
        with pytest.raises(PermissionDenied) as info:
            bob.create_resource("dspy", "lm", {"provider": "dummy", "model": "d", "answers": []})
        assert info.value.details["rule"]
        with pytest.raises(PermissionDenied) as info:
            bob.call("mock", "custom:run", {"code": "def main(i): return 1"})
        assert info.value.details["rule"] in ("no-custom-code", "bridge-not-allowed", "default-deny")
    for token in (None, "mallory-token"):
        with client(server, token) as anyone, pytest.raises(Unauthenticated):
            anyone.list_bridges()


def test_quota_names_itself(server: dict) -> None:
    with client(server, "bob-example-token") as bob:
        threads = [threading.Thread(target=bob.call, args=("mock", "mock:sleep", {"seconds": 1.5}))
                   for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        with pytest.raises(QuotaExceeded) as info:
            bob.call("mock", "mock:echo", {})
        assert info.value.details["quota"] == "max_concurrent_calls"
        for t in threads:
            t.join()


def test_secret_appears_nowhere(server: dict) -> None:
    with client(server, "alice-example-token") as alice:
        seen = json.dumps([alice.describe("dspy"), alice.describe("mock"), alice.stats(), alice.list_resources()])
        assert SECRET not in seen
        with pytest.raises(Exception) as info:
            alice.create_resource("dspy", "lm", {"provider": "openai", "model": "x", "api_key": SECRET})
        assert SECRET not in str(info.value)
    client_ = docker.from_env()
    try:
        containers = client_.containers.list(all=True, filters={"label": "io.mlbridge.bridge"})
        assert containers
        for c in containers:
            cfg = c.attrs["Config"]
            assert SECRET not in json.dumps(cfg.get("Env") or []) and SECRET not in json.dumps(cfg.get("Labels"))
            assert SECRET not in c.logs(tail=2000).decode(errors="replace")
    finally:
        client_.close()
    assert SECRET not in server["audit"].read_text()
    assert SECRET not in server["log"].read_text()


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "audit", "verify", str(path)],
                          capture_output=True, text=True, cwd=ROOT)


def test_audit_log_verifies_and_catches_tampering(server: dict) -> None:
    lines = server["audit"].read_text().splitlines()
    events = {json.loads(line)["event"] for line in lines}
    assert {"policy_load", "worker_start", "call", "denial", "auth_failure"} <= events
    ok = _verify(server["audit"])
    assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok.stdout + ok.stderr
    tmp = server["tmp"]
    edited = [*lines]
    rec = json.loads(edited[3])
    rec["tenant"] = "mallory"
    edited[3] = json.dumps(rec, separators=(",", ":"), sort_keys=True)
    cases = {
        "edit": edited,
        "delete": lines[:2] + lines[3:],
        "insert": lines[:2] + [lines[5]] + lines[2:],
        "reorder": lines[:2] + [lines[3], lines[2]] + lines[4:],
    }
    for name, content in cases.items():
        f = tmp / f"tampered-{name}.jsonl"
        f.write_text("\n".join(content) + "\n")
        r = _verify(f)
        assert r.returncode == 1, (name, r.stdout, r.stderr)
        assert "broken at record" in r.stdout + r.stderr, name
