"""Models preloaded in tenant-neutral spares (``preload_models``), with the process backend.

A spare of a bridge with ``preload_models`` mounts those operator models and
loads them before anyone claims it; the claiming tenant's first model (or
pipeline) of one takes the loaded copy. Only models every tenant may load can
be preloaded, and only while the worker has no tenant.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import MLBridge
from orchestrator.backends.process import ProcessBackend
from orchestrator.models.catalog import ModelCatalog
from orchestrator.models.store import ModelStore
from orchestrator.policy import parse_policy
from runtimes.wire.errors import ConfigError, PermissionDenied
from tests.harness import ServerThread, make_config
from tests.tiny_models import tiny_model

pytest.importorskip("transformers")

TEXT = "the quick brown fox"


def _config(tmp: Path, **bridge: Any) -> Any:
    return make_config(tmp, default_bridge="transformers", model_store=str(tmp / "store"),
                       bridges={"transformers": {"runtime": "transformers", "pool_size": 1, "held": 0,
                                                 "models": True, "preload_models": ["tiny-bert"], **bridge}})


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, ModelStore]]:
    tmp = tmp_path_factory.mktemp("preload")
    store = ModelStore(tmp / "store")
    store.add(tiny_model("bert-classifier"), "tiny-bert")
    with ServerThread(_config(tmp)) as srv:
        yield srv, store


def _spare(srv: ServerThread) -> Any:
    pool = srv.orch.pools["transformers"]
    deadline = time.monotonic() + 120
    while not pool._spares:
        assert time.monotonic() < deadline, "no spare came up"
        time.sleep(0.05)
    return pool._spares[0]


def test_a_spare_holds_the_model_loaded_before_any_claim(served: tuple[ServerThread, ModelStore]) -> None:
    srv, _ = served
    spare = _spare(srv)
    assert spare.tenant == ""
    stats = srv.run(spare.call("transformers:stats", {}))
    assert stats["preloaded"] == ["tiny-bert"]


def test_the_tenants_first_model_takes_the_loaded_copy_once(served: tuple[ServerThread, ModelStore]) -> None:
    srv, store = served
    with MLBridge.connect(srv.target) as mb:
        tf = mb.get_adapter("transformers")
        first = tf.load_model("tiny-bert")
        second = tf.load_model("tiny-bert")  # the loaded copy went to the first: this one is read from disk
        infos = {r["resource_id"]: r["info"] for r in mb.list_resources("transformers", "model")}
        assert infos[first].get("preloaded") is True and infos[first]["hash"] == store.get("tiny-bert").hash
        assert "preloaded" not in infos[second]
        assert tf.run(first, TEXT) == tf.run(second, TEXT)  # the same weights either way
        assert mb.call("transformers", "transformers:stats", {})["preloaded"] == []


def test_a_claimed_worker_refuses_to_preload(served: tuple[ServerThread, ModelStore]) -> None:
    srv, store = served
    rec = store.get("tiny-bert")
    grant = {"name": rec.name, "hash": rec.hash, "path": "/etc", "files": {}}
    with MLBridge.connect(srv.target) as mb, pytest.raises(PermissionDenied, match="tenant-neutral spare"):
        mb.call("transformers", "common:preload_models", {"models": [grant]})


POLICY = """version: 1
defaults:
  bridges: ["*"]
  rules: [{name: all, effect: allow}]
tenants:
  alice: {models: ["tiny-*"]}
  bob: {models: ["other"]}
"""


def test_only_models_every_tenant_may_load_can_be_preloaded(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.add(tiny_model("bert-classifier"), "tiny-bert")
    policy = parse_policy(POLICY)
    assert policy.model_shared("tiny-bert") is False and policy.model_allowed("alice", "tiny-bert")
    cfg = _config(tmp_path)
    with pytest.raises(ConfigError, match="not every tenant of the policy may load it"):
        ModelCatalog(store, policy, ProcessBackend()).check_preloads(cfg.bridges)
    ModelCatalog(store, parse_policy(POLICY.replace('["other"]', '["*"]')), ProcessBackend()).check_preloads(cfg.bridges)
    missing = _config(tmp_path, preload_models=["absent"])
    with pytest.raises(ConfigError, match="mlbridge models add DIR --name absent"):
        ModelCatalog(store, None, ProcessBackend()).check_preloads(missing.bridges)
    with pytest.raises(ConfigError, match="preload_models needs models: true"):
        _config(tmp_path, models=False)
