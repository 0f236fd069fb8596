"""The model store, its CLI, which models a tenant gets, and exported models taken in.

No Docker here: the store on disk, the catalog's choice per tenant, and the
process backend end to end (``common:list_models`` in a real worker).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator import MLBridge
from orchestrator.backends.process import ProcessBackend
from orchestrator.models import ModelCatalog, ModelStore
from orchestrator.policy import parse_policy
from runtimes.wire import metadata as meta
from runtimes.wire.artifacts import ArtifactError, manifest, manifest_hash, mismatches
from runtimes.wire.errors import AlreadyExists, ArtifactMismatch, InvalidArgument, NotFound
from tests.harness import ServerThread, make_config
from tests.tiny_models import fake_model_dir

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_hash_is_the_content_address(tmp_path: Path) -> None:
    a = fake_model_dir(tmp_path / "a", "one")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert manifest_hash(manifest(a)) == manifest_hash(manifest(b))
    assert set(manifest(a)) == {"config.json", "model.safetensors", "tok/vocab.txt"}
    (b / "config.json").write_text("{}")
    assert manifest_hash(manifest(a)) != manifest_hash(manifest(b))
    assert mismatches(b, manifest(a)) == ["config.json (sha256 differs)"]
    (b / "extra.bin").write_bytes(b"x")
    assert "extra.bin (not recorded)" in mismatches(b, manifest(a))


def test_links_and_empty_directories_are_refused(tmp_path: Path) -> None:
    d = fake_model_dir(tmp_path / "m", "x")
    (d / "escape").symlink_to("/etc/passwd")
    with pytest.raises(ArtifactError, match="not a regular file"):
        manifest(d)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="holds no files"):
        manifest(tmp_path / "empty")


def test_add_list_remove_share_one_copy(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    src = fake_model_dir(tmp_path / "src", "one")
    a = store.add(src, "alpha")
    b = store.add(src, "beta")
    assert a.hash == b.hash == manifest_hash(manifest(src))
    assert [p.name for p in store.objects.iterdir()] == [a.hash]  # one copy for two names
    assert [r.name for r in store.list()] == ["alpha", "beta"]
    obj = store.object_path(a.hash)
    assert not os.access(obj / "config.json", os.W_OK) or os.geteuid() == 0
    assert oct((obj / "config.json").stat().st_mode & 0o777) == "0o444"
    store.remove("alpha")
    assert obj.exists()  # beta still uses it
    store.remove("beta")
    assert not obj.exists()
    with pytest.raises(NotFound, match="no model 'beta'"):
        store.get("beta")


def test_same_name_other_content_needs_replace(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    first = store.add(fake_model_dir(tmp_path / "one", "one"), "m")
    other = fake_model_dir(tmp_path / "two", "two")
    with pytest.raises(AlreadyExists, match="--replace"):
        store.add(other, "m")
    second = store.add(other, "m", replace=True)
    assert second.hash != first.hash
    assert not store.object_path(first.hash).exists()  # the old content had no other name
    with pytest.raises(InvalidArgument, match="must match"):
        store.add(other, "../evil")


def test_expected_hash_is_checked_on_the_copy(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    src = fake_model_dir(tmp_path / "src", "one")
    with pytest.raises(ArtifactMismatch, match="not the"):
        store.add(src, "m", expect_hash="0" * 64)
    assert store.list() == []
    assert [p for p in store.objects.iterdir()] == []  # nothing half-imported left


def test_verify_finds_a_damaged_object(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    rec = store.add(fake_model_dir(tmp_path / "src", "one"), "m")
    assert store.verify("m") == []
    weights = store.object_path(rec.hash) / "model.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(b"tampered")
    assert store.verify("m") == ["model.safetensors (sha256 differs)"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "models", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_cli_add_list_verify_rm(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    src = fake_model_dir(tmp_path / "src", "one")
    out = _cli("add", str(src), "--name", "tiny", "--store", store)
    assert out.returncode == 0, out.stderr
    assert f"sha256:{manifest_hash(manifest(src))}" in out.stdout
    listed = json.loads(_cli("list", "--json", "--store", store).stdout)
    assert [(m["name"], m["files"], m["owner"]) for m in listed] == [("tiny", 3, "operator")]
    assert _cli("verify", "--store", store).stdout.strip() == "tiny: ok"
    dup = _cli("add", str(fake_model_dir(tmp_path / "o", "two")), "--name", "tiny", "--store", store)
    assert dup.returncode == 1 and "ALREADY_EXISTS" in dup.stderr
    assert _cli("rm", "tiny", "--store", store).returncode == 0
    missing = _cli("rm", "tiny", "--store", store)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


POLICY = """version: 1
defaults:
  bridges: ["*"]
  rules: [{name: all, effect: allow}]
tenants:
  alice: {models: ["bert-*"]}
  bob: {models: ["gpt-small"]}
  carol: {}
"""


def test_catalog_gives_each_tenant_its_models(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    for name in ("bert-a", "bert-b", "gpt-small"):
        store.add(fake_model_dir(tmp_path / name, name), name)
    store.add(fake_model_dir(tmp_path / "ft", "ft"), "bert-a", owner="bob")  # bob's own export, same name
    catalog = ModelCatalog(store, parse_policy(POLICY), ProcessBackend())
    assert sorted(r.name for r in catalog.for_tenant("alice")) == ["bert-a", "bert-b"]
    bob = {r.name: r for r in catalog.for_tenant("bob")}
    assert sorted(bob) == ["bert-a", "gpt-small"]
    assert bob["bert-a"].owner == "bob"  # his own model shadows the operator's name
    assert catalog.for_tenant("carol") == []  # no models key: none of the operator's


class _Worker:
    def __init__(self, handle: Any) -> None:
        self.handle, self.id = handle, "w1"


def test_exports_are_imported_as_the_tenants_own(tmp_path: Path) -> None:
    from orchestrator.backends.base import WorkerHandle
    from orchestrator.backends.unix import UnixSocketChannel

    store = ModelStore(tmp_path / "store")
    backend = ProcessBackend(tmp_path / "sockets")
    handle = WorkerHandle("w1", "transformers", UnixSocketChannel(tmp_path / "sockets" / "w1"))
    (tmp_path / "sockets" / "w1").mkdir(parents=True)
    export_root = backend.export_dir(handle)
    assert export_root is not None
    out = fake_model_dir(export_root[1] / "run1", "trained")
    digest = manifest_hash(manifest(out))
    catalog = ModelCatalog(store, None, backend)
    md = {meta.EXPORTED_MODELS: json.dumps([{"name": "ft", "hash": digest, "dir": "run1"}])}
    import asyncio

    [rec] = asyncio.run(catalog.import_exports("alice", _Worker(handle), md))  # type: ignore[arg-type]
    assert (rec.name, rec.hash, rec.owner) == ("ft", digest, "alice")
    assert not out.exists()  # taken out of the worker's export directory
    assert [r.name for r in store.list("alice")] == ["ft"] and store.list() == []
    for bad, match in ((
            [{"name": "x", "hash": digest, "dir": "../../etc"}], "not a path inside"),
            ([{"name": "x", "hash": digest, "dir": "nope"}], "not a directory"),
            ([{"name": "x"}], "needs string")):
        with pytest.raises(InvalidArgument, match=match):
            asyncio.run(catalog.import_exports("alice", _Worker(handle),  # type: ignore[arg-type]
                                               {meta.EXPORTED_MODELS: json.dumps(bad)}))
    lying = fake_model_dir(export_root[1] / "run2", "other")
    with pytest.raises(ArtifactMismatch):
        asyncio.run(catalog.import_exports("alice", _Worker(handle),  # type: ignore[arg-type]
                                           {meta.EXPORTED_MODELS: json.dumps(
                                               [{"name": "ft2", "hash": digest, "dir": "run2"}])}))
    assert not lying.exists() and [r.name for r in store.list("alice")] == ["ft"]


def test_workers_are_told_their_tenants_models(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    allowed = store.add(fake_model_dir(tmp_path / "a", "a"), "bert-a")
    store.add(fake_model_dir(tmp_path / "g", "g"), "gpt-small")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace("alice: {", 'alice: {tokens: ["sha256:' + hashlib.sha256(b"alice-tok").hexdigest()
                                     + '"], '))
    policy.chmod(0o600)
    bridges = {"mock": {"runtime": "mock", "pool_size": 1, "models": True}}
    cfg = make_config(tmp_path, bridges=bridges, default_bridge="mock", policy=str(policy),
                      model_store=str(tmp_path / "store"))
    with ServerThread(cfg) as srv, MLBridge.connect(srv.target, token="alice-tok") as mb:
        got = mb.call("mock", "common:list_models")
        assert got["can_export"] is True
        assert got["models"] == [{"name": "bert-a", "hash": allowed.hash, "size_bytes": allowed.size_bytes,
                                  "files": 3}]


def test_a_claim_with_no_models_mounts_nothing(tmp_path: Path) -> None:
    from orchestrator.backends.mounts import ModelMounts

    mounts = ModelMounts(tmp_path, 10001, 10001)
    mounts.grant("w1", tmp_path / "store-not-made-yet" / "objects", [])  # an empty store: no view, no error
    assert not (tmp_path / "store-not-made-yet").exists()
