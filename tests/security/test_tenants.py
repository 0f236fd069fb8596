"""Tenant isolation of state: what one tenant's code leaves behind, the other's cannot see.

A policy with two tenants, both allowed the custom bridge. Alice's code
writes a file in ``/tmp`` and in its scratch space, a process-wide global
(``builtins``, ``sys.modules``, ``os.environ``) and a thread; her next call
sees all of it (so the state persists in her worker), Bob's code on his own
worker sees none of it, and Bob's file commands cannot reach her files.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from runtimes.wire.errors import NotFound
from tests.harness import digest

from .conftest import Sandbox, attack_server

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(180)]

ALICE_TOKEN = f"alice-{uuid.uuid4().hex}"
BOB_TOKEN = f"bob-{uuid.uuid4().hex}"


POLICY = f"""
version: 1
defaults:
  bridges: [mock, custom]
  rules:
    - {{name: read-only, effect: allow, actions: [list_bridges, describe, list_resources, stats, cancel]}}
    - {{name: custom-and-mock, effect: allow,
        actions: [call, create_resource, execute_resource, delete_resource], bridges: [mock, custom]}}
  quotas: {{max_concurrent_calls: 4, max_calls_per_minute: 1000, max_resources: 10, max_workers: 2}}
tenants:
  alice:
    tokens: ["{digest(ALICE_TOKEN)}"]
  bob:
    tokens: ["{digest(BOB_TOKEN)}"]
"""


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sandbox, Sandbox]]:
    tmp = tmp_path_factory.mktemp("tenants")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    policy.chmod(0o600)
    with attack_server(tmp, policy=str(policy)) as srv:
        alice, bob = Sandbox(srv, ALICE_TOKEN, "alice"), Sandbox(srv, BOB_TOKEN, "bob")
        try:
            yield alice, bob
        finally:
            alice.close()
            bob.close()


PLANT = """
import builtins, os, sys, threading, types

def main(inputs):
    secret = inputs["secret"]
    with open("/tmp/alice-secret.txt", "w") as f:
        f.write(secret)
    with open(os.path.join(WORKDIR, "alice-notes.txt"), "w") as f:
        f.write(secret)
    builtins.ALICE_SECRET = secret
    mod = types.ModuleType("alice_state")
    mod.SECRET = secret
    sys.modules["alice_state"] = mod
    os.environ["ALICE_SECRET"] = secret
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name=f"alice-{secret}", daemon=True)
    t.start()
    builtins.ALICE_STOP = stop
    return "planted"
"""

LOOK = """
import builtins, os, sys, threading

def main(inputs):
    secret = inputs["secret"]
    found = {}
    for path in ("/tmp/alice-secret.txt", os.path.join(WORKDIR, "alice-notes.txt")):
        found[path] = os.path.exists(path) and open(path).read() == secret
    found["builtins"] = getattr(builtins, "ALICE_SECRET", None) == secret
    found["sys.modules"] = getattr(sys.modules.get("alice_state"), "SECRET", None) == secret
    found["os.environ"] = os.environ.get("ALICE_SECRET") == secret
    found["thread"] = any(secret in t.name for t in threading.enumerate())
    hits = []
    for dirpath, dirnames, filenames in os.walk("/tmp"):
        for name in filenames:
            try:
                if secret in open(os.path.join(dirpath, name), errors="replace").read():
                    hits.append(os.path.join(dirpath, name))
            except OSError:
                pass
    found["any file under /tmp"] = sorted(hits)
    return found
"""


def test_one_tenants_state_is_invisible_to_the_other(tenants: tuple[Sandbox, Sandbox]) -> None:
    alice, bob = tenants
    secret = f"alice-{uuid.uuid4().hex}"
    assert alice.result(PLANT, {"secret": secret}) == "planted"
    # Alice's next call sees all of it: the state really persists in her worker ...
    assert alice.result(LOOK, {"secret": secret}) == {
        "/tmp/alice-secret.txt": True, "/tmp/mlbridge-scratch/alice-notes.txt": True, "builtins": True,
        "sys.modules": True, "os.environ": True, "thread": True,
        "any file under /tmp": ["/tmp/alice-secret.txt", "/tmp/mlbridge-scratch/alice-notes.txt"],
    }
    # ... and Bob's code, on his own worker, sees none of it.
    seen = bob.result(LOOK, {"secret": secret})
    assert seen == {
        "/tmp/alice-secret.txt": False, "/tmp/mlbridge-scratch/alice-notes.txt": False, "builtins": False,
        "sys.modules": False, "os.environ": False, "thread": False, "any file under /tmp": [],
    }, seen
    alice_worker, bob_worker = alice.tenant_worker(), bob.tenant_worker()
    assert alice_worker and bob_worker and alice_worker != bob_worker
    workers = alice.workers()
    assert workers[alice_worker]["tenant"] == "alice" and workers[bob_worker]["tenant"] == "bob"
    assert workers[alice_worker]["ref"] != workers[bob_worker]["ref"]  # separate containers

    # Bob's file commands see his own (empty) scratch space only.
    assert [e["path"] for e in alice.call("custom", "custom:list_files", {})["entries"]] == ["alice-notes.txt"]
    assert bob.call("custom", "custom:list_files", {})["entries"] == []
    with pytest.raises(NotFound) as info:
        bob.call("custom", "custom:download", {"paths": ["alice-notes.txt"]})
    assert info.value.details.get("reason") == "NO_SUCH_FILE"
    assert secret not in str(info.value) and secret not in json.dumps(info.value.details)
    # Nor can Bob see Alice's workers in his stats, or cancel her call by its id.
    assert {w["worker_id"] for w in bob.client.stats()["workers"]}.isdisjoint({alice_worker})
    call_id = f"alice-{uuid.uuid4().hex[:8]}"
    done: dict[str, object] = {}
    t = threading.Thread(target=lambda: done.update(r=alice.result(
        "def main(inputs):\n    sleep(1.5)\n    return 'finished'", call_id=call_id)), daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while call_id not in alice.srv.orch.runner.inflight:
        assert time.monotonic() < deadline, "alice's call never started"
        time.sleep(0.01)
    assert bob.client.cancel(call_id) is False
    t.join(10)
    assert done.get("r") == "finished"

    for who in (alice, bob):
        assert who.call("mock", "mock:echo", {"who": who.tenant}) == {"who": who.tenant}
        assert who.result("def main(i):\n    return 41 + 1") == 42
