"""The transformers bridge in hardened docker workers, with models from a real model store.

The orchestrator serves the ``transformers`` bridge from ``mlbridge/transformers``
(CPU torch; one CPU, 1 GiB) with ``models: true``; the tiny models made here
are added to a model store, mounted read-only into the claimed worker and
checked there against the sha256 the store recorded. Every answer is
compared with the same model run directly on this host by transformers:
the sandbox must not change a single token or logit.

Network rule: the only connections go to the orchestrator on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from orchestrator import MLBridge
from orchestrator.client.transformers_adapter import TransformersAdapter
from orchestrator.models import ModelStore
from runtimes.wire.errors import ArtifactMismatch, QuotaExceeded
from tests.harness import ServerThread, make_config
from tests.tiny_models import tiny_model
from tests.unit.test_transformers_bridge import GREEDY, TEXTS, close, jsonable

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MEMORY_MIB = 1024
BRIDGES = {"transformers": {"runtime": "transformers", "pool_size": 1, "models": True, "call_timeout_s": 120,
                            "start_timeout_s": 120,
                            "limits": {"cpus": 1.0, "memory": f"{MEMORY_MIB}m", "pids": 512,
                                       "tmpfs_size": "64m"}}}


def _declared_model(root: Path, gib: int) -> Path:
    """A model directory whose safetensors header declares ``gib`` GiB of float32 weights (the file is tiny)."""
    root.mkdir(parents=True)
    shutil.copy(tiny_model("bert-classifier") / "config.json", root / "config.json")
    numel = gib * (1 << 30) // 4
    header = json.dumps({"w": {"dtype": "F32", "shape": [numel], "data_offsets": [0, numel * 4]}}).encode()
    (root / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("tfdocker")
    store = ModelStore(tmp / "store")
    store.add(tiny_model("bert-classifier"), "tiny-bert")
    store.add(tiny_model("gpt2"), "tiny-gpt2")
    store.add(tiny_model("bert-classifier", seed=1), "to-tamper")
    store.add(_declared_model(tmp / "big", 2), "two-gib")
    cfg = make_config(tmp, backend="docker", bridges=BRIDGES, default_bridge="transformers",
                      model_store=str(tmp / "store"))
    with ServerThread(cfg) as srv:
        yield {"srv": srv, "store": store}


@pytest.fixture(scope="module")
def tf(env: dict[str, Any]) -> Iterator[TransformersAdapter]:
    with MLBridge.connect(env["srv"].target) as mb:
        adapter = mb.get_adapter("transformers")
        assert isinstance(adapter, TransformersAdapter)
        yield adapter


@pytest.fixture(scope="module")
def host() -> dict[str, Any]:
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return {"clf": transformers.pipeline("text-classification", model=str(tiny_model("bert-classifier"))),
            "gen": transformers.pipeline("text-generation", model=str(tiny_model("gpt2")))}


def test_the_worker_sizes_torch_from_its_cgroup_and_has_no_gpu(tf: TransformersAdapter) -> None:
    devices = tf.devices()
    assert devices["cpu"] == {"torch_threads": 1, "cpu_limit": 1.0}
    assert devices["cuda_available"] is False and devices["auto"] == "cpu"
    assert sorted(devices["models"]) == ["tiny-bert", "tiny-gpt2", "to-tamper", "two-gib"]
    assert tf.stats()["memory"]["limit_mib"] == MEMORY_MIB


def test_greedy_generation_in_the_sandbox_is_token_identical(tf: TransformersAdapter, host: dict[str, Any]) -> None:
    gpt = tf.load_model("tiny-gpt2")
    tok = transformers.AutoTokenizer.from_pretrained(tiny_model("gpt2"))
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model("gpt2")).eval()
    for prompt in ("the quick brown", "models are loaded once"):
        enc = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**enc, **GREEDY, pad_token_id=tok.eos_token_id)[0][enc["input_ids"].shape[1]:]
        assert tf.run(gpt, prompt, **GREEDY)["token_ids"] == ids.tolist()
    gen = tf.pipeline("text-generation", model=gpt)
    assert tf.run(gen, "the quick brown", **GREEDY) == host["gen"]("the quick brown", **GREEDY)


def test_classification_logits_match_the_host(tf: TransformersAdapter, host: dict[str, Any]) -> None:
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_model("bert-classifier")).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_model("bert-classifier"))
    bert = tf.load_model("tiny-bert")
    for text, out in zip(TEXTS, tf.run(bert, TEXTS), strict=True):
        with torch.inference_mode():
            logits = model(**tok(text, return_tensors="pt")).logits[0].tolist()
        assert close(out["logits"], logits, 1e-5)
    clf = tf.pipeline("text-classification", model="tiny-bert")
    assert close(tf.run(clf, TEXTS, top_k=2), jsonable(host["clf"](TEXTS, top_k=2)), 1e-5)


def test_streaming_sends_tokens_one_by_one_before_the_final(tf: TransformersAdapter, host: dict[str, Any]) -> None:
    gen = tf.pipeline("text-generation", model="tiny-gpt2")
    events = list(tf.client.stream_resource(gen, {"inputs": "the quick brown", "parameters": GREEDY}))
    assert [e.kind for e in events] == ["chunk"] * 12 + ["result"]
    pieces = [e.data["text"] for e in events[:-1]]
    assert all(pieces) and "".join(pieces) == events[-1].data["text"]
    assert events[-1].data["output"] == host["gen"]("the quick brown", **GREEDY)


def test_concurrent_calls_to_a_batching_pipeline_share_invocations(tf: TransformersAdapter,
                                                                   host: dict[str, Any]) -> None:
    clf = tf.pipeline("text-classification", model="tiny-bert",
                      batching={"max_batch_size": 16, "max_batch_time_ms": 20})
    texts = [f"{TEXTS[i % 3]} {i}" for i in range(16)]
    results: list[Any] = [None] * 16
    start = threading.Barrier(16)

    def call(i: int) -> None:
        start.wait(10)
        results[i] = tf.run_detailed(clf, texts[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for text, (output, _) in zip(texts, results, strict=True):
        assert close(output, jsonable(host["clf"](text)), 1e-5)
    sizes = [size for _, size in results]
    stats = tf.stats()["batching"][clf]
    assert stats["requests"] == 16 and stats["invocations"] < 16 and max(sizes) > 1
    assert sum(1 / s for s in sizes) == pytest.approx(stats["invocations"])


def test_a_tampered_model_file_in_the_store_is_refused_at_load(env: dict[str, Any], tf: TransformersAdapter) -> None:
    store: ModelStore = env["store"]
    rec = store.get("to-tamper")
    weights = store.object_path(rec.hash) / "model.safetensors"
    os.chmod(weights, 0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert store.verify("to-tamper") == ["model.safetensors (sha256 differs)"]
    with pytest.raises(ArtifactMismatch, match=r"model.safetensors \(sha256 differs\)"):
        tf.load_model("to-tamper")
    with pytest.raises(ArtifactMismatch):
        tf.pipeline("text-classification", model="to-tamper")


def test_a_model_larger_than_the_memory_limit_is_refused_with_the_figures(tf: TransformersAdapter) -> None:
    with pytest.raises(QuotaExceeded) as refused:
        tf.load_model("two-gib")
    message = str(refused.value)
    assert f"needs about {2048 * 1.1:.0f} MiB" in message and f"memory limit {MEMORY_MIB} MiB" in message
    assert "MiB is free in this worker" in message and "limits.memory" in message
    assert tf.run(tf.load_model("tiny-bert"), "still serving")["label"]
