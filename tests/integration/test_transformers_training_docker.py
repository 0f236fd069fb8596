"""Fine-tuning inside hardened docker workers, through the public API: progress, cancel, export to the store.

The orchestrator serves the ``transformers`` bridge from its image with a
model store holding one tiny classifier (made here, random weights and a
locally trained tokenizer); tenant ``alice`` may load it. A training run in
her worker streams one progress event per step, can be cancelled while the
worker keeps serving, and its export arrives in the host's model store as
her model, under the new name and the hash the run returned.

Network rule: the only connections are to the orchestrator on loopback.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator import MLBridge
from orchestrator.models import ModelStore
from runtimes.wire.errors import Cancelled, QuotaExceeded
from tests.harness import ServerThread, make_config
from tests.tiny_models import tiny_model

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TOKEN = "alice-train-token-3c9e1f07"
BRIDGES = {"transformers": {"runtime": "transformers", "pool_size": 1, "models": True, "export_size": "64m",
                            "call_timeout_s": 120, "cancel_grace_s": 2,
                            "limits": {"cpus": 1.0, "memory": "1536m", "pids": 512, "tmpfs_size": "256m"}}}
CSV = ("text,label\n" + "this movie was great and i loved it,POSITIVE\nthis movie was terrible and i hated it,"
       "NEGATIVE\ngood morning how are you today,POSITIVE\nthe cat sat on the mat,NEGATIVE\n" * 4).encode()
ARGS = {"max_steps": 6, "per_device_train_batch_size": 4, "learning_rate": 5e-3, "seed": 0}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("train-docker")
    store = ModelStore(tmp / "store")
    base = store.add(tiny_model("bert-classifier"), "clf")
    policy = tmp / "policy.yaml"
    digest = "sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest()
    policy.write_text(f"""version: 1
defaults:
  bridges: [transformers]
  rules: [{{name: all, effect: allow}}]
tenants:
  alice: {{tokens: ["{digest}"], models: ["clf"]}}
""")
    policy.chmod(0o600)
    cfg = make_config(tmp, backend="docker", bridges=BRIDGES, default_bridge="transformers", policy=str(policy),
                      model_store=str(tmp / "store"))
    with ServerThread(cfg) as srv:
        yield {"srv": srv, "store": store, "base": base}


@pytest.fixture(scope="module")
def mb(env: dict[str, Any]) -> Iterator[MLBridge]:
    with MLBridge.connect(env["srv"].target, token=TOKEN, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def base(mb: MLBridge) -> dict[str, str]:
    """A model resource of the store's classifier and a dataset uploaded as a CSV attachment."""
    model = mb.create_resource("transformers", "model", {"model": "clf"})
    data = mb.create_resource("transformers", "dataset", {"attachment": "reviews.csv"},
                              attachments={"reviews.csv": CSV})
    return {"model": model, "dataset": data}


def _logits(mb: MLBridge, rid: str) -> list[float]:
    out: list[float] = mb.execute_resource(rid, {"inputs": "this movie was great"})["output"]["logits"]
    return out


def test_a_run_streams_each_step_and_its_export_arrives_in_the_model_store(
        mb: MLBridge, env: dict[str, Any], base: dict[str, str]) -> None:
    before = _logits(mb, base["model"])
    run = mb.create_resource("transformers", "training_run", {
        "model_resource": base["model"], "dataset": base["dataset"], "args": ARGS,
        "export": {"name": "clf-tuned"}})
    events = list(mb.stream_resource(run, timeout=120))
    steps = [(e.step, e.total, json.loads(e.message)) for e in events if e.kind == "progress"]
    assert [s for s, _, _ in steps] == [1, 2, 3, 4, 5, 6] and {t for _, t, _ in steps} == {6}
    assert all(0 < m["loss"] < 10 for _, _, m in steps)
    result = events[-1].data
    assert events[-1].kind == "result" and result["steps"] == 6
    assert result["losses"] == [m["loss"] for _, _, m in steps]
    # The export is in the host's store as alice's model, with the hash the run announced, intact.
    store: ModelStore = env["store"]
    rec = store.get("clf-tuned", owner="alice")
    assert rec.hash == result["export"]["hash"] and store.verify("clf-tuned", owner="alice") == []
    assert rec.hash != env["base"].hash and "config.json" in rec.files and "tokenizer.json" in rec.files
    # The fine-tuned model is a resource like any other, and the base is unchanged.
    tuned = result["model_resource"]
    listed = {r["resource_id"]: r for r in mb.list_resources(type="model")}
    assert tuned in listed and listed[tuned]["info"]["kind"] == "sequence-classification"
    after = _logits(mb, tuned)
    assert max(abs(a - b) for a, b in zip(after, before, strict=True)) > 1e-4
    assert _logits(mb, base["model"]) == pytest.approx(before, abs=1e-6)


def test_cancel_stops_a_run_and_the_worker_keeps_serving(mb: MLBridge, base: dict[str, str]) -> None:
    big = mb.create_resource("transformers", "dataset", {"attachment": "big.csv"},
                             attachments={"big.csv": CSV + CSV.split(b"\n", 1)[1] * 40})
    run = mb.create_resource("transformers", "training_run", {
        "model_resource": base["model"], "dataset": big,
        "args": {"num_train_epochs": 50, "per_device_train_batch_size": 2}})
    models = {r["resource_id"] for r in mb.list_resources(type="model")}
    call_id = uuid.uuid4().hex
    seen: list[int] = []
    with pytest.raises(Cancelled):
        for ev in mb.stream_resource(run, call_id=call_id, timeout=120):
            if ev.kind == "progress":
                seen.append(ev.step)
                if len(seen) == 3:
                    assert mb.cancel(call_id)
    assert 3 <= len(seen) < 100 and seen == list(range(1, len(seen) + 1))
    # The same worker still answers, and the run can be used again.
    assert len(_logits(mb, base["model"])) == 2
    state = mb.call("transformers", "common:get_resource", {"resource_id": run})["info"]
    assert state["state"] in ("cancelled", "running") and state["runs"] == []  # the handler ends just after the reply
    assert {r["resource_id"] for r in mb.list_resources(type="model")} == models  # a cancelled run makes no model
    short = mb.create_resource("transformers", "training_run", {
        "model_resource": base["model"], "dataset": base["dataset"], "args": {**ARGS, "max_steps": 2}})
    assert mb.execute_resource(short)["steps"] == 2


def test_an_export_larger_than_the_export_directory_is_refused_with_the_fix(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("train-small-export")
    ModelStore(tmp / "store").add(tiny_model("bert-classifier"), "clf")
    bridges = {"transformers": {**BRIDGES["transformers"], "export_size": "128k"}}  # the model is ~400 KiB
    cfg = make_config(tmp, backend="docker", bridges=bridges, default_bridge="transformers",
                      model_store=str(tmp / "store"))
    with ServerThread(cfg) as srv, MLBridge.connect(srv.target, timeout=120) as client:
        model = client.create_resource("transformers", "model", {"model": "clf"})
        data = client.create_resource("transformers", "dataset", {"attachment": "r.csv"}, attachments={"r.csv": CSV})
        run = client.create_resource("transformers", "training_run", {
            "model_resource": model, "dataset": data, "args": {**ARGS, "max_steps": 2},
            "export": {"name": "too-big"}})
        with pytest.raises(QuotaExceeded, match="does not fit the export directory.*raise the bridge's export_size"):
            client.execute_resource(run)
        assert ModelStore(tmp / "store").list(None)[0].name == "clf" and len(ModelStore(tmp / "store").list(None)) == 1
        assert len(_logits(client, model)) == 2  # the worker still serves
