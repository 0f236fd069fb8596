"""Model-store models reach hardened docker workers read-only, and only the tenant's own.

A ``custom`` bridge with ``models: true`` lets the test look inside a worker
with code: which model directories it sees, whether it can write to them,
and its export directory. Alice's policy grants ``bert-*``, Bob's
``gpt-small``; each worker was a tenant-neutral spare when it started, so
what it sees was mounted into it at claim.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import MLBridge
from orchestrator.backends.mountinfo import mount_points
from orchestrator.models import ModelStore
from tests.harness import ServerThread, make_config
from tests.tiny_models import fake_model_dir

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TOKENS = {"alice": "alice-models-token-81c2", "bob": "bob-models-token-5d07"}

PROBE = r'''
import os, errno
def main(inputs):
    out = {"models": sorted(os.listdir("/models"))}
    target = "/models/" + inputs["hash"]
    out["config"] = open(target + "/config.json").read()
    for name, path in (("write_in_model", target + "/new.bin"), ("write_in_models", "/models/new.bin")):
        try:
            open(path, "wb").write(b"x")
            out[name] = "written"
        except OSError as exc:
            out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
    os.makedirs("/export/run", exist_ok=True)
    open("/export/run/w.bin", "wb").write(b"y" * 1000)
    out["export"] = os.listdir("/export/run")
    return out
'''


def _digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("mounts")
    store = ModelStore(tmp / "store")
    recs = {name: store.add(fake_model_dir(tmp / "src" / name, name), name) for name in ("bert-a", "gpt-small")}
    policy = tmp / "policy.yaml"
    policy.write_text(f"""version: 1
defaults:
  bridges: [custom]
  rules: [{{name: all, effect: allow}}]
tenants:
  alice: {{tokens: ["{_digest(TOKENS['alice'])}"], models: ["bert-*"]}}
  bob: {{tokens: ["{_digest(TOKENS['bob'])}"], models: ["gpt-small"]}}
""")
    policy.chmod(0o600)
    bridges = {"custom": {"runtime": "custom", "pool_size": 1, "models": True, "export_size": "1m",
                          "limits": {"cpus": 0.5, "memory": "256m", "pids": 64}}}
    cfg = make_config(tmp, backend="docker", bridges=bridges, default_bridge="custom", policy=str(policy),
                      model_store=str(tmp / "store"))
    with ServerThread(cfg) as srv:
        yield {"srv": srv, "recs": recs, "store": store}


def _probe(env: dict[str, Any], tenant: str, model: str) -> dict[str, Any]:
    with MLBridge.connect(env["srv"].target, token=TOKENS[tenant]) as mb:
        listed = mb.call("custom", "common:list_models")
        out: dict[str, Any] = mb.call("custom", "custom:run", {"code": PROBE,
                                                                "inputs": {"hash": env["recs"][model].hash}})["result"]
        out["listed"] = listed
        return out


def test_a_tenant_sees_only_its_models_read_only(env: dict[str, Any]) -> None:
    recs = env["recs"]
    alice = _probe(env, "alice", "bert-a")
    assert alice["models"] == [recs["bert-a"].hash]
    assert json.loads(alice["config"])["seed"] == "bert-a"
    assert alice["write_in_model"] in ("EROFS", "EACCES")
    assert alice["write_in_models"] in ("EROFS", "EACCES")
    assert [m["name"] for m in alice["listed"]["models"]] == ["bert-a"]
    assert alice["listed"]["can_export"] is True
    assert alice["export"] == ["w.bin"]
    bob = _probe(env, "bob", "gpt-small")
    assert bob["models"] == [recs["gpt-small"].hash]
    assert [m["name"] for m in bob["listed"]["models"]] == ["gpt-small"]


def test_one_copy_on_disk_and_the_store_is_untouched(env: dict[str, Any]) -> None:
    store: ModelStore = env["store"]
    assert sorted(p.name for p in store.objects.iterdir()) == sorted(r.hash for r in env["recs"].values())
    for name in env["recs"]:
        assert store.verify(name) == []


def test_export_directory_has_a_size_cap(env: dict[str, Any]) -> None:
    code = "def main(i):\n    open('/export/big.bin', 'wb').write(b'z' * (4 << 20))\n"
    with MLBridge.connect(env["srv"].target, token=TOKENS["alice"]) as mb:
        with pytest.raises(Exception, match="No space left|ENOSPC|Errno 28"):
            mb.call("custom", "custom:run", {"code": code})


def test_mounts_are_gone_when_a_worker_is_retired(env: dict[str, Any]) -> None:
    srv = env["srv"]
    root = str(srv.orch.backend.sockets.root)
    _probe(env, "alice", "bert-a")  # alice holds a claimed worker with a model mounted
    pool = srv.orch.pools["custom"]
    [worker] = pool.claimed("alice")
    mine = [m for m in mount_points(root) if f"/{worker.id}." in m]
    assert any(m.endswith(".m") for m in mine) and any(m.endswith(".x") for m in mine)
    assert any(env["recs"]["bert-a"].hash in m for m in mine)
    srv.run(pool.retire(worker, "test"))
    assert [m for m in mount_points(root) if f"/{worker.id}." in m] == []
    assert not any(p.name.startswith(worker.id) for p in Path(root).iterdir())
