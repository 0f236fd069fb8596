"""The transformers bridge's serving side through a real runtime, on tiny models made here.

Most tests drive :class:`TransformersBridge` behind an in-process
:class:`Dispatcher` (the code the gRPC server calls) with grants of tiny
models (random weights from a fixed seed, tokenizers trained locally; no
hub), and compare every answer with the same model run directly on the host
through transformers itself. The batcher is also tested on its own with a
plain function as its runner, where thread timing must be controlled. The
last group serves the bridge from a process-backend orchestrator with a real
model store and uses the Python adapter.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from orchestrator.images import _lock
from runtimes.core import CallContext
from runtimes.core.dispatch import Dispatcher
from runtimes.transformers import TransformersBridge
from runtimes.transformers.batching import Batcher, BatchSettings
from runtimes.transformers.limits import (
    MiB,
    cpu_limit,
    memory_figures,
    threads_for_limit,
    torch_threads,
)
from runtimes.transformers.placement import OVERHEAD, check_fits, estimate_bytes, resolve_device
from runtimes.wire import metadata as meta
from runtimes.wire.artifacts import manifest
from runtimes.wire.errors import (
    Cancelled,
    ConfigError,
    DeadlineExceeded,
    MLBridgeError,
    QuotaExceeded,
)
from tests.harness import InProcessRuntime
from tests.tiny_models import grant_for, tiny_model

ROOT = Path(__file__).resolve().parents[2]
KINDS = {"clf": "bert-classifier", "gpt": "gpt2", "tag": "bert-tagger", "mlm": "bert-mlm"}
TEXTS = ["this movie was great and i loved it", "paris is the capital of france", "good morning"]
GREEDY = {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False}
LONG = " ".join(["the cat sat on the mat"] * 40)  # over the tiny models' 128 positions


class Runtime(InProcessRuntime):
    """A transformers runtime in this process with the tiny models granted, 32 handler threads (as served)."""

    def __init__(self, extra: list[Any] | None = None) -> None:
        grants = [grant_for(tiny_model(kind), name) for name, kind in KINDS.items()]
        super().__init__(TransformersBridge(), models=grants + (extra or []))
        self.d = Dispatcher(self.bridge, max_message_bytes=16 * 1024 * 1024, threads=32)
        self.d.configure("tenant-a", {}, None, grants + (extra or []), "")

    def stream(self, rid: str, inputs: dict[str, Any], call_id: str = "",
               on_chunk: Any = None) -> tuple[list[tuple[str, Any]], Any]:
        """(events before the final, the final result or error) of an ExecuteResourceStream."""
        cid = call_id or uuid.uuid4().hex

        async def go() -> list[tuple[str, Any]]:
            out = []
            fields = {"call_id": cid, "command": "common:execute_resource", "resource_id": rid}
            async for kind, payload in self.d.stream(fields, json.dumps(inputs)):
                if kind == "chunk" and on_chunk is not None:
                    on_chunk(payload)
                out.append((kind, payload))
            return out

        events = asyncio.run(go())
        final = events[-1][1]
        return events[:-1], final.error if final.error is not None else json.loads(final.result)

    def concurrently(self, rid: str, inputs: list[dict[str, Any]]) -> list[tuple[Any, dict[str, str]]]:
        """Execute ``rid`` once per inputs, all at once (as concurrent clients do): (result or error, metadata)."""
        async def one(args: dict[str, Any]) -> tuple[Any, dict[str, str]]:
            ctx = self.d.make_context(call_id=uuid.uuid4().hex, command="common:execute_resource", resource_id=rid)
            out = await self.d.run(ctx, json.dumps(args))
            return (out.error if out.error is not None else json.loads(out.result)), out.metadata

        async def all_() -> list[tuple[Any, dict[str, str]]]:
            return list(await asyncio.gather(*[one(i) for i in inputs]))

        return asyncio.run(all_())


@pytest.fixture(scope="module")
def rt() -> Runtime:
    return Runtime()


@pytest.fixture(scope="module")
def host() -> dict[str, Any]:
    """The same tiny models run directly by transformers on the host: the source of truth."""
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    path = {name: str(tiny_model(kind)) for name, kind in KINDS.items()}
    return {
        "path": path,
        "text-classification": transformers.pipeline("text-classification", model=path["clf"]),
        "token-classification": transformers.pipeline("token-classification", model=path["tag"]),
        "fill-mask": transformers.pipeline("fill-mask", model=path["mlm"]),
        "feature-extraction": transformers.pipeline("feature-extraction", model=path["clf"]),
        "text-generation": transformers.pipeline("text-generation", model=path["gpt"]),
    }


def close(a: Any, b: Any, tol: float = 1e-5) -> bool:
    """Equal JSON values, floats within ``tol``."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, abs_tol=tol)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    return bool(a == b)


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def chunks(events: list[tuple[str, Any]]) -> list[str]:
    return [payload["text"] for kind, payload in events if kind == "chunk"]


# -- describe, threads, devices ------------------------------------------------------------------
def test_describe_lists_every_resource_type_with_its_schema(rt: Runtime) -> None:
    d = rt.ok("common:describe")
    types = {t["name"]: t for t in d["resource_types"]}
    assert set(types) == {"model", "tokenizer", "pipeline", "dataset", "training_run"}
    assert types["model"]["schema"]["required"] == ["model"]
    assert set(types["model"]["schema"]["properties"]) == {"model", "hash", "dtype", "device", "kind"}
    assert types["pipeline"]["schema"]["properties"]["task"]["enum"] == [
        "text-generation", "text-classification", "token-classification", "fill-mask", "feature-extraction"]
    assert set(types["pipeline"]["schema"]["properties"]["batching"]["properties"]) == {
        "max_batch_size", "max_batch_time_ms"}
    assert types["pipeline"]["streaming"] and types["model"]["streaming"]
    assert {"transformers:stats", "transformers:devices"} <= {c["name"] for c in d["commands"]}
    assert d["framework"] == "transformers" and d["framework_version"] == transformers.__version__
    assert d["packages"]["torch"].startswith("2.13.0")


def test_torch_threads_follow_the_cpu_limit(rt: Runtime) -> None:
    assert rt.bridge.threads == torch_threads() == torch.get_num_threads()  # type: ignore[attr-defined]
    assert threads_for_limit(None, 4) == 4
    assert threads_for_limit(0.5, 4) == 1 and threads_for_limit(1.0, 4) == 1 and threads_for_limit(1.5, 4) == 2
    assert threads_for_limit(8.0, 2) == 2


def test_cgroup_v1_and_v2_limits_are_read_from_the_tree(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "memory").mkdir()
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(512 * MiB))
    (v1 / "memory" / "memory.usage_in_bytes").write_text(str(200 * MiB))
    (v1 / "memory" / "memory.stat").write_text(f"total_inactive_file {50 * MiB}\n")
    assert cpu_limit(v1) == 1.5
    fig = memory_figures(v1)
    assert (fig.limit, fig.usage) == (512 * MiB, 150 * MiB)
    assert fig.free == min(362 * MiB, fig.available) and "memory limit 512 MiB" in fig.describe()
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu memory\n")
    (v2 / "cpu.max").write_text("max 100000\n")
    (v2 / "memory.max").write_text("max\n")
    (v2 / "memory.current").write_text(str(100 * MiB))
    assert cpu_limit(v2) is None
    assert memory_figures(v2).limit is None and "no cgroup memory limit" in memory_figures(v2).describe()
    (v2 / "cpu.max").write_text("50000 100000\n")
    (v2 / "memory.max").write_text(str(256 * MiB))
    assert cpu_limit(v2) == 0.5 and memory_figures(v2).limit == 256 * MiB


def test_device_choice_on_this_machine(rt: Runtime) -> None:
    if torch.cuda.is_available():  # a GPU machine: auto picks the GPU
        assert resolve_device("auto") == "cuda:0" and resolve_device("cuda") == "cuda:0"
        return
    assert resolve_device("auto") == resolve_device(None) == "cpu"
    for spec in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(ConfigError, match=r"no GPU is available.*bridges\.transformers\.limits\.gpus"):
            resolve_device(spec)
    err = rt.fail("common:create_resource", {"model": "clf", "device": "cuda"}, "gpu-model", "model")
    assert err.code == "FAILED_PRECONDITION" and "limits.gpus" in err.message
    assert rt.fail("common:create_resource", {"task": "fill-mask", "model": "mlm", "device": "tpu"}, "x",
                   "pipeline").code == "INVALID_ARGUMENT"
    devices = rt.ok("transformers:devices")
    assert devices["cuda_available"] is False and devices["gpus"] == [] and devices["auto"] == "cpu"
    assert rt.create("model", "auto-model", {"model": "clf", "device": "auto"})["info"]["device"] == "cpu"


# -- model and tokenizer resources against the host ----------------------------------------------
def test_classifier_model_logits_match_the_host(rt: Runtime, host: dict[str, Any]) -> None:
    info = rt.create("model", "clf-m", {"model": "clf"})["info"]
    assert info["kind"] == "sequence-classification" and info["model"] == "clf" and info["tokenizer"] is True
    model = transformers.AutoModelForSequenceClassification.from_pretrained(host["path"]["clf"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(host["path"]["clf"])
    outs = rt.execute("clf-m", {"inputs": TEXTS})["output"]
    for text, out in zip(TEXTS, outs, strict=True):
        with torch.inference_mode():
            logits = model(**tok(text, return_tensors="pt")).logits[0]
        assert close(out["logits"], logits.tolist())
        assert out["label"] == model.config.id2label[int(logits.argmax())]
    assert rt.execute("clf-m", {"inputs": TEXTS[0]})["output"] == outs[0]
    assert rt.ok("common:delete_resource", {}, "clf-m")["deleted"]
    assert rt.fail("common:execute_resource", {"inputs": "x"}, "clf-m").code == "NOT_FOUND"


def test_causal_lm_model_generates_exactly_the_hosts_tokens(rt: Runtime, host: dict[str, Any]) -> None:
    rt.create("model", "gpt-m", {"model": "gpt", "dtype": "float32"})
    model = transformers.AutoModelForCausalLM.from_pretrained(host["path"]["gpt"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(host["path"]["gpt"])
    for prompt in ("the quick brown", "paris is"):
        enc = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**enc, **GREEDY, pad_token_id=tok.eos_token_id)[0][enc["input_ids"].shape[1]:]
        out = rt.execute("gpt-m", {"inputs": prompt, "parameters": GREEDY})["output"]
        assert out["token_ids"] == ids.tolist() and len(ids) == 12
        assert out["text"] == tok.decode(ids, skip_special_tokens=True)


def test_tagger_masked_lm_and_base_models(rt: Runtime, host: dict[str, Any]) -> None:
    rt.create("model", "tag-m", {"model": "tag"})
    out = rt.execute("tag-m", {"inputs": "paris is the capital"})["output"]
    assert out["tokens"][0] == "[CLS]" and len(out["logits"]) == len(out["tokens"]) and len(out["logits"][0]) == 2
    rt.create("model", "mlm-m", {"model": "mlm"})
    masks = rt.execute("mlm-m", {"inputs": "paris is the [MASK] of france", "parameters": {"top_k": 3}})["output"]
    best = host["fill-mask"]("paris is the [MASK] of france", top_k=3)
    assert [t["token_id"] for t in masks["masks"][0]["top"]] == [b["token"] for b in best]
    assert rt.fail("common:execute_resource", {"inputs": "no mask here"}, "mlm-m").code == "INVALID_ARGUMENT"
    info = rt.create("model", "base-m", {"model": "clf", "kind": "base"})["info"]
    assert info["kind"] == "base" and info["architectures"] == ["BertForSequenceClassification"]
    emb = rt.execute("base-m", {"inputs": TEXTS[1]})["output"]["embedding"]
    hidden = host["feature-extraction"](TEXTS[1])[0]
    assert close(emb, torch.tensor(hidden).mean(0).tolist())


def test_tokenizer_resource_encodes_and_decodes_like_the_host(rt: Runtime, host: dict[str, Any]) -> None:
    info = rt.create("tokenizer", "tok", {"model": "gpt"})["info"]
    assert info["model"] == "gpt" and info["vocab_size"] > 100
    tok = transformers.AutoTokenizer.from_pretrained(host["path"]["gpt"])
    out = rt.execute("tok", {"inputs": TEXTS})["output"]
    assert [o["input_ids"] for o in out] == [tok(t)["input_ids"] for t in TEXTS]
    assert out[0]["tokens"] == tok.convert_ids_to_tokens(tok(TEXTS[0])["input_ids"])
    assert rt.execute("tok", {"decode": out[0]["input_ids"]})["output"] == TEXTS[0]
    assert rt.execute("tok", {"decode": [o["input_ids"] for o in out]})["output"] == TEXTS
    assert rt.fail("common:execute_resource", {"decode": "nope"}, "tok").code == "INVALID_ARGUMENT"


# -- pipelines: the five tasks against the host's pipelines --------------------------------------
@pytest.mark.parametrize("task,model,text,params", [
    ("text-classification", "clf", TEXTS[0], {}),
    ("text-classification", "clf", TEXTS[0], {"top_k": 2}),
    ("token-classification", "tag", TEXTS[1], {}),
    ("fill-mask", "mlm", "paris is the [MASK] of france", {"top_k": 4}),
    ("feature-extraction", "clf", TEXTS[2], {}),
    ("text-generation", "gpt", "the quick brown", GREEDY),
])
def test_pipeline_answers_as_the_host_pipeline(rt: Runtime, host: dict[str, Any], task: str, model: str, text: str,
                                               params: dict[str, Any]) -> None:
    rid = f"p-{task}-{len(params)}"
    info = rt.create("pipeline", rid, {"task": task, "model": model})["info"]
    assert info["task"] == task and info["model"] == model and info["batching"] is None
    want = jsonable(host[task](text, **params))
    assert close(rt.execute(rid, {"inputs": text, "parameters": params})["output"], want)
    pair = [text, "good [MASK]" if task == "fill-mask" else TEXTS[0]]
    want_list = jsonable(host[task](pair, **params))
    assert close(rt.execute(rid, {"inputs": pair, "parameters": params})["output"], want_list)
    assert rt.ok("common:delete_resource", {}, rid)["deleted"]


def test_pipeline_over_shared_model_and_tokenizer_resources(rt: Runtime, host: dict[str, Any]) -> None:
    rt.create("model", "shared-gpt", {"model": "gpt"})
    rt.create("tokenizer", "shared-tok", {"model": "gpt"})
    info = rt.create("pipeline", "gen", {"task": "text-generation", "model_resource": "shared-gpt",
                                         "tokenizer_resource": "shared-tok",
                                         "parameters": {"max_new_tokens": 6, "do_sample": False}})["info"]
    assert info["model_resource"] == "shared-gpt" and info["parameters"]["max_new_tokens"] == 6
    assert rt.bridge.resources.get("gen").pipe.model is rt.bridge.resources.get("shared-gpt").model  # type: ignore[attr-defined]
    want = host["text-generation"]("paris is", max_new_tokens=6, do_sample=False)
    assert rt.execute("gen", {"inputs": "paris is"})["output"] == want  # the defaults apply
    err = rt.fail("common:create_resource", {"task": "fill-mask", "model_resource": "shared-gpt"}, "bad", "pipeline")
    assert err.code == "INVALID_ARGUMENT" and "'masked-lm'" in err.message and '"kind"' in err.message
    err = rt.fail("common:create_resource", {"task": "fill-mask", "model_resource": "shared-gpt", "dtype": "float16"},
                  "bad", "pipeline")
    assert "belong to the model resource" in err.message


def test_default_classification_calls_take_the_vectorised_path_only_where_it_answers_alike(
        rt: Runtime, host: dict[str, Any], tmp_path: Path) -> None:
    from orchestrator.models.tiny import make_tiny_model

    rt.create("pipeline", "fast-clf", {"task": "text-classification", "model": "clf"})
    assert rt.bridge.resources.get("fast-clf").fast is not None  # type: ignore[attr-defined]
    batch = TEXTS + [LONG[:200]]
    assert close(rt.execute("fast-clf", {"inputs": batch})["output"], jsonable(host["text-classification"](batch)))
    many = [f"{TEXTS[i % 3]} {i}" for i in range(70)]  # more than one forward pass of the vectorised path
    assert close(rt.execute("fast-clf", {"inputs": many})["output"], jsonable(host["text-classification"](many)))
    one_label = make_tiny_model(tmp_path / "one", "bert-classifier", num_labels=1)  # scored by sigmoid
    fresh = Runtime(extra=[grant_for(one_label, "one-label")])
    fresh.create("pipeline", "sigmoid", {"task": "text-classification", "model": "one-label"})
    assert fresh.bridge.resources.get("sigmoid").fast is None  # type: ignore[attr-defined]
    want = transformers.pipeline("text-classification", model=str(one_label))(TEXTS)
    assert close(fresh.execute("sigmoid", {"inputs": TEXTS})["output"], jsonable(want))


# -- streaming and cancellation -------------------------------------------------------------------
def test_streamed_generation_sends_each_token_before_the_final(rt: Runtime, host: dict[str, Any]) -> None:
    rt.create("pipeline", "stream-gen", {"task": "text-generation", "model": "gpt"})
    events, final = rt.stream("stream-gen", {"inputs": "the quick brown", "parameters": GREEDY})
    pieces = chunks(events)
    assert len(pieces) == 12 and all(pieces)  # one chunk per generated token (no split UTF-8 here)
    assert [k for k, _ in events] == ["chunk"] * 12
    assert final["text"] == "".join(pieces)
    assert final["output"] == host["text-generation"]("the quick brown", **GREEDY)
    assert final["output"][0]["generated_text"] == "the quick brown" + final["text"]
    rt.create("model", "stream-model", {"model": "gpt"})
    events, final = rt.stream("stream-model", {"inputs": "paris is", "parameters": GREEDY})
    assert "".join(chunks(events)) == final["output"]["text"] and len(chunks(events)) == 12
    err = rt.stream("stream-model", {"inputs": ["a", "b"], "parameters": GREEDY})[1]
    assert isinstance(err, MLBridgeError) and err.code == "INVALID_ARGUMENT"


def test_cancel_stops_generation_within_a_token(rt: Runtime) -> None:
    rt.create("pipeline", "long-gen", {"task": "text-generation", "model": "gpt"})
    cid = uuid.uuid4().hex
    seen: list[str] = []

    def on_chunk(payload: dict[str, Any]) -> None:
        seen.append(payload["text"])
        if len(seen) == 3:
            rt.d.cancel(cid)

    long = {"max_new_tokens": 110, "min_new_tokens": 110, "do_sample": False}
    started = time.monotonic()
    events, final = rt.stream("long-gen", {"inputs": "the", "parameters": long}, call_id=cid, on_chunk=on_chunk)
    assert isinstance(final, MLBridgeError) and final.code == "CANCELLED"
    assert 3 <= len(chunks(events)) < 100 and time.monotonic() - started < 5
    assert rt.ok("common:ping")["pong"]  # the worker keeps serving
    assert rt.create("model", "slow-gen", {"model": "gpt"})["info"]["kind"] == "causal-lm"
    started = time.monotonic()
    err = rt.fail("common:execute_resource", {"inputs": "the", "parameters": {**long, "num_beams": 4}}, "slow-gen",
                  deadline_unix_ms=int((time.time() + 0.05) * 1000))
    assert err.code == "DEADLINE_EXCEEDED" and time.monotonic() - started < 1.0
    err = rt.fail("common:execute_resource", {"inputs": "the", "parameters": {"max_new_tokens": 500,
                                                                                "min_new_tokens": 500}}, "slow-gen")
    assert err.code == "INVALID_ARGUMENT" and "max_position_embeddings" in err.message


# -- adaptive batching ------------------------------------------------------------------------------
def test_concurrent_calls_are_batched_and_each_gets_its_own_answer(rt: Runtime, host: dict[str, Any]) -> None:
    rt.create("pipeline", "batched", {"task": "text-classification", "model": "clf",
                                      "batching": {"max_batch_size": 16, "max_batch_time_ms": 50}})
    texts = [f"{TEXTS[i % 3]} number {i}" for i in range(16)]
    replies = rt.concurrently("batched", [{"inputs": t} for t in texts])
    sizes = [int(md[meta.BATCH_SIZE]) for _, md in replies]
    for text, (result, _) in zip(texts, replies, strict=True):
        assert close(result["output"], jsonable(host["text-classification"](text)))
    stats = rt.ok("transformers:stats")["batching"]["batched"]
    assert stats["requests"] == 16 and stats["invocations"] < 16 and max(sizes) > 1
    assert sum(1 / s for s in sizes) == pytest.approx(stats["invocations"])
    # Lists, other parameters and feature extraction (padded in a batch, cut back per caller) batch too.
    rt.create("pipeline", "batched-fx", {"task": "feature-extraction", "model": "clf",
                                         "batching": {"max_batch_size": 8}})
    inputs = [{"inputs": TEXTS[i % 3]} for i in range(6)] + [{"inputs": TEXTS}, {"inputs": TEXTS[0]}]
    for args, (result, md) in zip(inputs, rt.concurrently("batched-fx", inputs), strict=True):
        assert close(result["output"], jsonable(host["feature-extraction"](args["inputs"])))
        assert int(md[meta.BATCH_SIZE]) >= 1
    mixed = [{"inputs": TEXTS[0]}, {"inputs": TEXTS[1], "parameters": {"top_k": 2}}, {"inputs": [TEXTS[2]]}] * 3
    for args, (result, _) in zip(mixed, rt.concurrently("batched", mixed), strict=True):
        assert close(result["output"], jsonable(host["text-classification"](args["inputs"],
                                                                             **args.get("parameters", {}))))


def test_a_bad_input_in_a_batch_fails_only_its_caller(rt: Runtime, host: dict[str, Any]) -> None:
    rt.create("pipeline", "batched-err", {"task": "text-classification", "model": "clf",
                                          "batching": {"max_batch_size": 16, "max_batch_time_ms": 50}})
    texts = [TEXTS[i % 3] for i in range(7)] + [LONG]
    replies = rt.concurrently("batched-err", [{"inputs": t} for t in texts])
    for text, (result, _) in zip(texts[:-1], replies[:-1], strict=True):
        assert close(result["output"], jsonable(host["text-classification"](text)))
    err = replies[-1][0]
    assert isinstance(err, MLBridgeError) and err.code == "INVALID_ARGUMENT" and "truncation" in err.message
    truncated = rt.execute("batched-err", {"inputs": LONG, "parameters": {"truncation": True, "max_length": 128}})
    assert close(truncated["output"], jsonable(host["text-classification"](LONG, truncation=True, max_length=128)))
    err = rt.fail("common:create_resource", {"task": "text-generation", "model": "gpt", "batching": {}}, "x",
                  "pipeline")
    assert "batching is for the encoder tasks" in err.message


def _ctx(deadline_s: float = 0.0) -> CallContext:
    return CallContext(call_id=uuid.uuid4().hex, command="common:execute_resource",
                       deadline_unix_ms=int((time.time() + deadline_s) * 1000) if deadline_s else 0)


class Gated:
    """A batcher runner: upper-cases its payloads once ``gate`` is open; "bad" raises."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[tuple[list[str], str]] = []

    def __call__(self, payloads: list[str], params: dict[str, Any]) -> list[str]:
        self.calls.append((list(payloads), threading.current_thread().name))
        self.gate.wait(10)
        if "bad" in payloads:
            raise ValueError("bad input")
        return [p.upper() for p in payloads]


def _submit(b: Batcher, payload: str, ctx: CallContext | None = None) -> dict[str, Any]:
    box: dict[str, Any] = {}

    def go() -> None:
        try:
            with b.arriving() as ticket:
                box["answer"] = b.submit(ticket, ctx or _ctx(), payload, 1, {}, "")
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            box["error"] = exc

    box["thread"] = threading.Thread(target=go, name=f"caller-{payload}")
    box["thread"].start()
    return box


def _queued(b: Batcher, n: int) -> None:
    end = time.monotonic() + 5
    while b.stats()["queued"] != n:
        assert time.monotonic() < end, b.stats()
        time.sleep(0.005)


def test_batcher_retries_a_failed_batch_per_request_and_drops_stopped_callers() -> None:
    run = Gated()
    b = Batcher(run, BatchSettings(max_batch_size=16, max_batch_time_ms=20), name="t")
    first = _submit(b, "first")  # the model is idle: this caller runs its own invocation, in its own thread
    while not run.calls:
        time.sleep(0.001)
    cancelled, late = _ctx(), _ctx(deadline_s=0.15)
    boxes = [_submit(b, p) for p in ("a", "b", "bad")]
    boxes += [_submit(b, "gone", cancelled), _submit(b, "late", late)]
    _queued(b, 5)
    cancelled.cancel()
    time.sleep(0.3)  # the cancelled caller leaves at once; the late one at its deadline
    run.gate.set()
    for box in [first, *boxes]:
        box["thread"].join(5)
    assert first["answer"] == ("FIRST", 1) and run.calls[0] == (["first"], "caller-first")
    assert isinstance(boxes[3]["error"], Cancelled) and isinstance(boxes[4]["error"], DeadlineExceeded)
    assert sorted(run.calls[1][0]) == ["a", "b", "bad"] and run.calls[1][1] == "batcher-t"
    assert sorted(c[0][0] for c in run.calls[2:]) == ["a", "b", "bad"]  # one at a time after the failure
    assert boxes[0]["answer"] == ("A", 1) and boxes[1]["answer"] == ("B", 1)
    assert isinstance(boxes[2]["error"], ValueError)
    b.close()


def test_batcher_waits_for_arriving_callers_but_not_for_nobody() -> None:
    run = Gated()
    run.gate.set()
    b = Batcher(run, BatchSettings(max_batch_size=8, max_batch_time_ms=2000), name="w")
    started = time.monotonic()
    alone = _submit(b, "alone")
    alone["thread"].join(5)
    assert alone["answer"] == ("ALONE", 1) and run.calls == [(["alone"], "caller-alone")]
    assert time.monotonic() - started < 1.0  # no wait for the 2 s batch time: nobody else was in flight
    run.gate.clear()
    blocker = _submit(b, "blocker")
    while len(run.calls) < 2:
        time.sleep(0.001)
    queued = _submit(b, "queued")
    _queued(b, 1)
    with b.arriving() as ticket:  # a caller still parsing its request: the batch waits for it
        run.gate.set()
        time.sleep(0.2)
        assert b.stats()["queued"] == 1
        assert b.submit(ticket, _ctx(), "arrived", 1, {}, "") == ("ARRIVED", 2)
    for box in (blocker, queued):
        box["thread"].join(5)
    assert queued["answer"] == ("QUEUED", 2) and sorted(run.calls[2][0]) == ["arrived", "queued"]
    b.close()


# -- grants, verification, memory -------------------------------------------------------------------
def test_model_not_granted_or_with_another_hash_is_refused(rt: Runtime) -> None:
    rt.create("model", "refusing", {"model": "gpt"})
    err = rt.fail("common:create_resource", {"model": "nope"}, "x", "model")
    assert err.code == "NOT_FOUND" and "models it may load: clf, gpt, mlm, tag" in err.message
    err = rt.fail("common:create_resource", {"model": "clf", "hash": "deadbeef"}, "x", "model")
    assert err.code == "PERMISSION_DENIED"
    good = rt.bridge.models["clf"].hash[:12]
    assert rt.create("model", "pinned", {"model": "clf", "hash": good})["info"]["hash"].startswith(good)
    err = rt.fail("common:create_resource", {"model": "clf", "colour": "red"}, "x", "model")
    assert err.code == "INVALID_ARGUMENT" and "'colour'" in err.message
    err = rt.fail("common:execute_resource", {"inputs": "x", "parameters": {"custom_generate": "evil/repo"}},
                  "refusing")
    assert err.code == "INVALID_ARGUMENT" and "custom_generate" in err.message


def test_a_tampered_model_file_is_refused_at_load(tmp_path: Path) -> None:
    copy = tmp_path / "clf"
    shutil.copytree(tiny_model("bert-classifier"), copy)
    rt = Runtime(extra=[grant_for(copy, "copied")])
    assert rt.create("model", "ok", {"model": "copied"})["info"]["model"] == "copied"
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    for rtype, config in (("model", {"model": "copied"}), ("tokenizer", {"model": "copied"}),
                          ("pipeline", {"task": "text-classification", "model": "copied"})):
        err = rt.fail("common:create_resource", config, f"t-{rtype}", rtype)
        assert err.code == "ARTIFACT_MISMATCH" and "model.safetensors (sha256 differs)" in err.message


def _huge_model(root: Path) -> Path:
    """A model directory whose safetensors header declares 1 TiB of float32 weights (the file is tiny)."""
    root.mkdir()
    shutil.copy(tiny_model("bert-classifier") / "config.json", root / "config.json")
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 20, 1 << 18], "data_offsets": [0, 1 << 40]}}).encode()
    (root / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return root


def test_memory_estimate_and_refusal_with_figures(tmp_path: Path) -> None:
    path = tiny_model("bert-classifier")
    params = sum(p.numel() for p in transformers.AutoModel.from_pretrained(
        path, local_files_only=True).parameters())
    files = manifest(path)
    f32 = estimate_bytes(path, files, "float32")
    assert f32 == estimate_bytes(path, files, "auto") and f32 >= int(params * 4 * (1 + OVERHEAD))
    assert estimate_bytes(path, files, "float16") == pytest.approx(f32 / 2, rel=0.01)
    check_fits("tiny", f32, f32, "limit")
    with pytest.raises(QuotaExceeded) as refused:
        check_fits("big", 300 * MiB, 200 * MiB, "memory limit 256 MiB, 56 MiB in use")
    assert "needs about 300 MiB" in str(refused.value) and "only 200 MiB is free" in str(refused.value)
    assert refused.value.details == {"quota": "memory", "needed_mib": 300.0, "free_mib": 200.0}
    # End to end: a 1 TiB model, refused with both figures before any file is hashed.
    huge = _huge_model(tmp_path / "huge")
    grant = grant_for(huge, "huge")
    (huge / "config.json").write_text((huge / "config.json").read_text() + " ")  # tampered too: size comes first
    rt = Runtime(extra=[grant])
    free = memory_figures().free / MiB
    err = rt.fail("common:create_resource", {"model": "huge"}, "h", "model")
    needed = (1 << 40) * (1 + OVERHEAD) / MiB
    assert err.code == "RESOURCE_EXHAUSTED" and f"needs about {needed:.0f} MiB" in err.message
    assert "MiB is free in this worker (" in err.message and "limits.memory" in err.message
    assert err.details["needed_mib"] == pytest.approx(needed, abs=0.1)
    assert err.details["free_mib"] == pytest.approx(free, abs=512)
    half = rt.fail("common:create_resource", {"model": "huge", "dtype": "float16"}, "h", "model")
    assert half.details["needed_mib"] == pytest.approx(needed / 2, abs=0.1)


def test_allocation_failures_come_back_as_out_of_memory_naming_the_limit(rt: Runtime) -> None:
    with pytest.raises(RuntimeError) as failed:
        torch.empty(1 << 46, dtype=torch.uint8)  # 64 TiB: torch's allocator refuses it
    err = rt.bridge.to_error(failed.value)
    assert err.code == "OUT_OF_MEMORY" and "can't allocate memory" in err.message
    assert memory_figures().describe() in err.message and "limits.memory" in err.message
    assert rt.bridge.to_error(MemoryError()).code == "OUT_OF_MEMORY"
    rt.create("pipeline", "long-input", {"task": "text-classification", "model": "clf"})
    err = rt.fail("common:execute_resource", {"inputs": LONG}, "long-input")
    assert err.code == "INVALID_ARGUMENT" and "max_position_embeddings" in err.message


# -- the image recipe and the process backend --------------------------------------------------------
def test_image_lock_pins_the_cpu_torch_and_the_hosts_framework_versions() -> None:
    pkgs = _lock.read_lock(ROOT / "images/transformers/requirements.lock")
    base = {p.name: p.version for p in _lock.read_lock(ROOT / "images/base/requirements.lock")}
    assert {p.name: p.version for p in pkgs if p.name in base} == base
    assert _lock.pinned_version(pkgs, "torch") == "2.13.0+cpu"
    for name in ("transformers", "tokenizers", "safetensors", "datasets", "accelerate"):
        assert _lock.pinned_version(pkgs, name) == metadata.version(name), name
    dockerfile = (ROOT / "images/transformers/Dockerfile").read_text()
    for env in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "HF_DATASETS_OFFLINE=1", "HF_HUB_DISABLE_TELEMETRY=1",
                "HF_HOME=/tmp/hf"):
        assert env in dockerfile
    assert "NOT BUILT HERE" in (ROOT / "images/transformers/cuda/Dockerfile").read_text()
    assert "torch==2.13.0+cu" in (ROOT / "images/transformers/cuda/requirements.in").read_text()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from orchestrator.models.store import ModelStore
    from tests.harness import ServerThread, make_config

    tmp = tmp_path_factory.mktemp("tf")
    store = ModelStore(tmp / "store")
    store.add(tiny_model("bert-classifier"), "tiny-bert")
    store.add(tiny_model("gpt2"), "tiny-gpt2")
    cfg = make_config(tmp, default_bridge="transformers", model_store=str(tmp / "store"),
                      bridges={"transformers": {"runtime": "transformers", "pool_size": 1, "models": True,
                                                "call_timeout_s": 60}})
    with ServerThread(cfg) as srv:
        yield srv, store


def test_adapter_through_a_served_orchestrator(served: Any, host: dict[str, Any]) -> None:
    from orchestrator import MLBridge
    from orchestrator.client.transformers_adapter import TransformersAdapter

    srv, store = served
    with MLBridge.connect(srv.target) as mb:
        tf = mb.get_adapter("transformers")
        assert isinstance(tf, TransformersAdapter)
        listed = mb.call("transformers", "common:list_models", {})
        assert {m["name"]: m["hash"] for m in listed["models"]} == {r.name: r.hash for r in store.list()}
        clf = tf.pipeline("text-classification", model="tiny-bert", batching={"max_batch_size": 16})
        assert close(tf.run(clf, TEXTS[0]), jsonable(host["text-classification"](TEXTS[0])))
        out, size = tf.run_detailed(clf, TEXTS, top_k=2)
        assert close(out, jsonable(host["text-classification"](TEXTS, top_k=2))) and size == 1
        results: list[Any] = [None] * 16

        def call(i: int) -> None:
            results[i] = tf.run_detailed(clf, f"{TEXTS[i % 3]} {i}")

        threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for i, (output, size) in enumerate(results):
            assert close(output, jsonable(host["text-classification"](f"{TEXTS[i % 3]} {i}"))) and size >= 1
        gpt = tf.load_model("tiny-gpt2")
        pieces = list(tf.generate(gpt, "the quick brown", **GREEDY))
        final = pieces.pop()
        assert len(pieces) == 12 and "".join(pieces) == final["output"]["text"]
        gen = tf.pipeline("text-generation", model=gpt)
        *streamed, last = tf.generate(gen, "the quick brown", **GREEDY)
        assert last["output"] == host["text-generation"]("the quick brown", **GREEDY)
        assert "".join(streamed) == last["text"]
        assert tf.stats()["resources"]["pipeline"] == 2 and tf.devices()["auto"] == "cpu"
        assert tf.delete(gen)
