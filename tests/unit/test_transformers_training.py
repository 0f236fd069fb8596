"""Datasets and fine-tuning in the transformers bridge, through a real runtime dispatcher, on tiny models.

Every test drives :class:`TransformersBridge` behind an in-process
:class:`Dispatcher` (the code the gRPC server calls) with grants of tiny
models made here (random weights, locally trained tokenizers). Runs are a
handful of steps, so each test takes about a second; streaming tests read
the same progress and chunk events a client receives.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from runtimes.transformers import TransformersBridge
from runtimes.transformers.train_loop import CheckpointCap, tree_bytes
from runtimes.wire import metadata as meta
from runtimes.wire.artifacts import manifest, manifest_hash
from runtimes.wire.errors import MLBridgeError, QuotaExceeded
from tests.harness import InProcessRuntime
from tests.tiny_models import grant_for, tiny_model

ROWS = [{"text": "this movie was great and i loved it", "label": "POSITIVE"},
        {"text": "this movie was terrible and i hated it", "label": "NEGATIVE"},
        {"text": "good morning how are you today", "label": "POSITIVE"},
        {"text": "the cat sat on the mat", "label": "NEGATIVE"}] * 4
FAST = {"max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 5e-3, "seed": 0}


def _no_pad_gpt2(root: Path) -> Path:
    """The tiny GPT-2 with a tokenizer saved without a pad token (as most causal LMs ship)."""
    from transformers import AutoTokenizer

    out = root / "gpt2-nopad"
    if not out.exists():
        shutil.copytree(tiny_model("gpt2"), out)
        tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
        tok.pad_token = None
        tok.save_pretrained(out)
    return out


class Runtime(InProcessRuntime):
    """A transformers runtime in this process with the tiny models granted and an export directory."""

    def __init__(self, export_dir: Path | None, extra: list[Any] | None = None) -> None:
        grants = [grant_for(tiny_model(k), n) for k, n in
                  (("bert-classifier", "clf"), ("gpt2", "gpt"), ("bert-tagger", "tagger"), ("bert-mlm", "mlm"))]
        super().__init__(TransformersBridge(), models=grants + (extra or []),
                         export_dir=str(export_dir) if export_dir else "")

    def stream(self, rid: str, inputs: dict[str, Any] | None = None, call_id: str = "",
               on_event: Callable[[str, Any], None] | None = None, **fields: Any) -> tuple[list[tuple[str, Any]], Any]:
        """(events before the final, final result or error) of a streaming execute of ``rid``."""
        cid = call_id or uuid.uuid4().hex

        async def go() -> list[tuple[str, Any]]:
            out = []
            req = {"call_id": cid, "command": "common:execute_resource", "resource_id": rid, **fields}
            async for kind, payload in self.d.stream(req, json.dumps(inputs or {})):
                if on_event is not None:
                    on_event(kind, payload)
                out.append((kind, payload))
            return out

        events = asyncio.run(go())
        final = events[-1][1]
        self.metadata = final.metadata
        return events[:-1], final.error if final.error is not None else json.loads(final.result)

    def logits(self, rid: str, text: str = "this movie was great") -> torch.Tensor:
        res = self.bridge.resources.get(rid)
        enc = res.tokenizer(text, return_tensors="pt")  # type: ignore[attr-defined]
        with torch.no_grad():
            return res.model(**enc).logits  # type: ignore[attr-defined, no-any-return]


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    out = tmp_path / "export"
    out.mkdir()
    return out


@pytest.fixture
def rt(export_dir: Path) -> Runtime:
    r = Runtime(export_dir)
    r.create("model", "clf", {"model": "clf"})
    r.create("dataset", "rows", {"rows": ROWS})
    return r


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``cond``: a handler reports its end a moment after the reply (later still on a loaded machine)."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def progress(events: list[tuple[str, Any]]) -> list[tuple[int, int, dict[str, Any]]]:
    return [(s, t, json.loads(m)) for k, (s, t, m) in ((k, p) for k, p in events if k == "progress")]


# -- datasets ------------------------------------------------------------------------------------------------
def test_dataset_from_rows_reports_columns_and_serves_rows(rt: Runtime) -> None:
    info = rt.create("dataset", "d", {"rows": ROWS, "split": {"test_size": 4, "seed": 1}})["info"]
    assert info["rows"] == 16 and info["columns"] == ["text", "label"] and info["splits"] == {"train": 12, "test": 4}
    assert info["source"] == "rows" and info["text_column"] == "text" and "string" in info["features"]["text"]
    head = rt.execute("d", {"head": 3})
    assert head["rows"] == ROWS[:3] and head["total"] == 16
    assert rt.execute("d", {"head": 2, "offset": 4})["rows"] == ROWS[4:6]
    test = rt.execute("d", {"split": "test", "head": 10})
    assert test["total"] == 4 and all(r in ROWS for r in test["rows"])
    shuffled = rt.execute("d", {"head": 16, "shuffle": 7})["rows"]
    assert shuffled != ROWS and sorted(map(json.dumps, shuffled)) == sorted(map(json.dumps, ROWS))
    assert rt.execute("d", {"head": 16})["rows"] == ROWS  # a shuffled view leaves the dataset as it was


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


ATTACHED = [{"text": "good morning", "label": 1}, {"text": "terrible day", "label": 0},
            {"text": "paris is lovely", "label": 1}]


@pytest.mark.parametrize("name,fmt,data", [
    ("train.csv", None, b"text,label\ngood morning,1\nterrible day,0\nparis is lovely,1\n"),
    ("train.jsonl", None, "".join(json.dumps(r) + "\n" for r in ATTACHED).encode()),
    ("rows.bin", "json", json.dumps(ATTACHED).encode()),
    ("train.parquet", None, _parquet(ATTACHED)),
])
def test_dataset_from_an_attachment_in_each_format(rt: Runtime, name: str, fmt: str | None, data: bytes) -> None:
    config = {"attachment": name, **({"format": fmt} if fmt else {})}
    out = rt.call("common:create_resource", config, "f", "dataset", attachments={name: data})
    assert not isinstance(out, MLBridgeError), out.flat()
    info = out["info"]
    assert info["rows"] == 3 and info["source"] == f"attachment:{name}" and info["label_kind"] == "int"
    assert info["bytes"] == len(data)
    assert rt.execute("f", {"head": 5})["rows"] == ATTACHED


def test_a_text_file_is_a_dataset_without_labels(rt: Runtime) -> None:
    out = rt.call("common:create_resource", {"attachment": "corpus.txt"}, "t", "dataset",
                  attachments={"corpus.txt": b"the quick brown fox\nparis is the capital of france\n"})
    assert not isinstance(out, MLBridgeError), out.flat()
    assert out["info"]["label_column"] is None and out["info"]["rows"] == 2


@pytest.mark.parametrize("config,attachments,fragment", [
    ({"rows": []}, {}, "no rows"),
    ({"rows": [{"text": "a", "label": 0}, "b"]}, {}, "row 1 must be an object"),
    ({"rows": [{"text": "a", "label": 0}, {"text": "b"}]}, {}, "same columns"),
    ({"rows": [{"sentence": "a", "label": 0}]}, {}, "no text column 'text'"),
    ({"rows": [{"text": "a", "label": None}]}, {}, "row 0: label column 'label' holds nothing"),
    ({"rows": [{"text": 3, "label": 0}]}, {}, "must hold a string"),
    ({"rows": [{"text": "a", "y": 0}], "label_column": "label"}, {}, "no label column 'label'"),
    ({"rows": [{"text": "a", "label": 0}] * 5, "max_rows": 4}, {}, "over the dataset's cap of 4"),
    ({"rows": [{"text": "a" * 200, "label": 0}], "max_bytes": 100}, {}, "over the dataset's cap of 100"),
    ({"rows": [{"text": "a", "label": 0}], "max_rows": 10**9}, {}, "max_rows must be an integer from 1"),
    ({"rows": [{"text": "a", "label": 0}] * 3, "split": {"test_size": 3}}, {}, "test_size must be"),
    ({"rows": [{"text": "a", "label": 0}], "attachment": "x.csv"}, {}, "exactly one of"),
    ({"attachment": "x.csv"}, {}, "not attached to this call"),
    ({"attachment": "x.csv"}, {"x.csv": b"text,label\n\"a,1\n"}, "could not read attachment 'x.csv' as csv"),
    ({"attachment": "x.xlsx"}, {"x.xlsx": b"PK"}, "cannot tell the format"),
    ({"attachment": "x.csv"}, {"x.csv": b"text,label\n" + b"abc,1\n" * 50}, None),  # fine: the control case
    ({"attachment": "x.csv", "max_bytes": 10}, {"x.csv": b"text,label\nabc,1\n"}, "over the dataset's cap of 10"),
    ({"rows": [{"words": ["a", "b"], "tags": ["O"]}], "text_column": "words", "label_column": "tags"}, {},
     "1 tags for 2 words"),
])
def test_dataset_refuses_bad_rows_columns_and_caps(rt: Runtime, config: dict[str, Any], attachments: dict[str, bytes],
                                                   fragment: str | None) -> None:
    out = rt.call("common:create_resource", config, "bad", "dataset", attachments=attachments)
    if fragment is None:
        assert not isinstance(out, MLBridgeError), out.flat()
        return
    assert isinstance(out, MLBridgeError) and out.code == "INVALID_ARGUMENT", out
    assert fragment in out.message
    assert "bad" not in rt.bridge.resources


# -- creating a run checks everything, trains nothing ----------------------------------------------------------
@pytest.mark.parametrize("config,code,fragment", [
    ({"task": "causal-lm"}, "INVALID_ARGUMENT", "does not train for causal-lm"),
    ({"args": {"push_to_hub": True}}, "INVALID_ARGUMENT", "push_to_hub are not allowed"),
    ({"args": {"learning_rate": 5}}, "INVALID_ARGUMENT", "learning_rate must be in (0, 1]"),
    ({"args": {"max_steps": 0}}, "INVALID_ARGUMENT", "max_steps must be in [1,"),
    ({"args": {"save_total_limit": 2}}, "INVALID_ARGUMENT", "needs save_steps"),
    ({"dataset": "unlabelled"}, "INVALID_ARGUMENT", "needs labels"),
    ({"dataset": "out-of-range"}, "INVALID_ARGUMENT", "label 5 is out of range: the model has 2 labels"),
    ({"dataset": "unknown-name"}, "INVALID_ARGUMENT", "label 'MAYBE' is not a label of the model"),
    ({"dataset": "nope"}, "NOT_FOUND", "dataset 'nope'"),
    ({"model_resource": "rows"}, "INVALID_ARGUMENT", "is a 'dataset' resource, not 'model'"),
    ({"export": {"name": "bad name!"}}, "INVALID_ARGUMENT", "must match"),
    ({"max_checkpoint_bytes": 1000, "args": {"save_steps": 1}}, "INVALID_ARGUMENT", "over max_checkpoint_bytes"),
    ({"tokenizer_resource": "nopad"}, "INVALID_ARGUMENT", "no pad token"),
])
def test_creating_a_run_refuses_what_cannot_train(rt: Runtime, tmp_path: Path, config: dict[str, Any], code: str,
                                                  fragment: str) -> None:
    rt.create("dataset", "unlabelled", {"rows": [{"text": "a b"}, {"text": "c"}]})
    rt.create("dataset", "out-of-range", {"rows": [{"text": "a", "label": 0}, {"text": "b", "label": 5}]})
    rt.create("dataset", "unknown-name", {"rows": [{"text": "a", "label": "MAYBE"}]})
    rt.bridge.models["gpt-nopad"] = grant_for(_no_pad_gpt2(tmp_path), "gpt-nopad")
    rt.create("tokenizer", "nopad", {"model": "gpt-nopad"})
    err = rt.fail("common:create_resource", {"model_resource": "clf", "dataset": "rows", **config}, "run",
                  "training_run")
    assert err.code == code and fragment in err.message, err.flat()
    assert "run" not in rt.bridge.resources and rt.bridge.resources.counts_by_type().get("model") == 1


def test_export_without_an_export_directory_is_refused_before_training() -> None:
    r = Runtime(None)
    r.create("model", "clf", {"model": "clf"})
    r.create("dataset", "rows", {"rows": ROWS})
    err = r.fail("common:create_resource", {"model_resource": "clf", "dataset": "rows", "export": {"name": "x"}},
                 "run", "training_run")
    assert err.code == "FAILED_PRECONDITION" and "no export directory" in err.message


# -- running ---------------------------------------------------------------------------------------------------
def test_a_run_streams_one_progress_event_per_step_with_its_loss(rt: Runtime) -> None:
    info = rt.create("training_run", "run", {"model_resource": "clf", "dataset": "rows", "args": FAST})["info"]
    assert info["task"] == "sequence-classification" and info["state"] == "ready"
    events, result = rt.stream("run")
    steps = progress(events)
    assert [s for s, _, _ in steps] == [1, 2, 3, 4] and all(t == 4 for _, t, _ in steps)
    losses = [m["loss"] for _, _, m in steps]
    assert all(isinstance(x, float) and 0 < x < 10 for x in losses)
    assert result["steps"] == 4 and result["losses"] == losses and result["final_loss"] == losses[-1]
    assert [m["step"] for _, _, m in steps] == [1, 2, 3, 4] and steps[0][2]["learning_rate"] == 5e-3
    logs = [p for k, p in events if k == "chunk" and p["type"] == "log"]
    assert logs and logs[-1]["train_loss"] == pytest.approx(sum(losses) / 4)
    assert rt.ok("common:get_resource", {}, "run")["info"]["state"] == "done"


def test_a_finished_run_makes_a_new_model_whose_outputs_differ_and_leaves_the_base_alone(rt: Runtime) -> None:
    base_before = rt.logits("clf")
    threads = torch.get_num_threads()
    rt.create("training_run", "run", {"model_resource": "clf", "dataset": "rows", "args": FAST})
    _, result = rt.stream("run", {"model_resource": "tuned"})
    assert result["model_resource"] == "tuned" and result["export"] is None
    assert isinstance(rt.bridge, TransformersBridge)
    assert torch.get_num_threads() == threads == rt.bridge.threads  # the bridge's thread count holds
    created = json.loads(rt.metadata[meta.CREATED_RESOURCES])
    assert [c["resource_id"] for c in created] == ["tuned"] and created[0]["type"] == "model"
    assert created[0]["config"] == {"trained_by": "run", "base": "clf", "device": "cpu"}
    assert torch.equal(rt.logits("clf"), base_before)  # the base resource was not trained
    assert not torch.allclose(rt.logits("tuned"), base_before, atol=1e-4)
    # The new model serves like any other: executed directly and behind a pipeline.
    out = rt.execute("tuned", {"inputs": "this movie was great"})["output"]
    assert out["logits"] == pytest.approx(rt.logits("tuned")[0].tolist(), abs=1e-5)
    rt.create("pipeline", "p", {"task": "text-classification", "model_resource": "tuned"})
    assert rt.execute("p", {"inputs": "i loved it"})["output"][0]["label"] in ("NEGATIVE", "POSITIVE")
    err = rt.fail("common:execute_resource", {"model_resource": "tuned"}, "run")
    assert err.code == "ALREADY_EXISTS"


def test_cancel_during_training_ends_cancelled_and_the_worker_keeps_serving(rt: Runtime) -> None:
    rt.create("dataset", "many", {"rows": ROWS * 20})
    rt.create("training_run", "long", {"model_resource": "clf", "dataset": "many",
                                       "args": {"num_train_epochs": 20, "per_device_train_batch_size": 2}})
    cid = uuid.uuid4().hex
    at_cancel: list[int] = []

    def on_event(kind: str, payload: Any) -> None:
        if kind == "progress" and payload[0] == 2:
            at_cancel.append(rt.bridge.resources.get("long").info()["step"])  # where the trainer is now
            rt.d.cancel(cid)

    started = time.monotonic()
    events, final = rt.stream("long", call_id=cid, on_event=on_event)
    assert isinstance(final, MLBridgeError) and final.code == "CANCELLED", final
    assert time.monotonic() - started < 10
    steps = progress(events)
    assert steps[-1][1] == 3200 and 2 <= at_cancel[0] <= len(steps) <= at_cancel[0] + 2  # stopped within a step
    assert rt.ok("common:ping")["pong"]
    assert wait_for(lambda: rt.ok("common:get_resource", {}, "long")["info"]["state"] == "cancelled")
    assert rt.bridge.resources.counts_by_type()["model"] == 1  # no model from a cancelled run
    rt.create("training_run", "short", {"model_resource": "clf", "dataset": "rows", "args": FAST})
    assert rt.stream("short")[1]["steps"] == 4  # the worker trains again


def test_a_run_stops_at_the_call_deadline(rt: Runtime) -> None:
    rt.create("dataset", "many", {"rows": ROWS * 20})
    rt.create("training_run", "long", {"model_resource": "clf", "dataset": "many",
                                       "args": {"num_train_epochs": 20, "per_device_train_batch_size": 2}})
    started = time.monotonic()
    _, final = rt.stream("long", deadline_unix_ms=int((time.time() + 1.5) * 1000))
    assert isinstance(final, MLBridgeError) and final.code == "DEADLINE_EXCEEDED", final
    assert time.monotonic() - started < 5 and rt.ok("common:ping")["pong"]


def test_export_writes_a_model_directory_whose_hash_is_the_one_returned(rt: Runtime, export_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    rt.create("training_run", "run", {"model_resource": "clf", "dataset": "rows", "args": FAST,
                                      "export": {"name": "clf-tuned"}})
    _, result = rt.stream("run")
    export = result["export"]
    listed = json.loads(rt.metadata[meta.EXPORTED_MODELS])
    assert [(e["name"], e["hash"]) for e in listed] == [("clf-tuned", export["hash"])]
    out = export_dir / listed[0]["dir"]
    assert out.parent == export_dir and manifest_hash(manifest(out)) == export["hash"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest(out))
    created = json.loads(rt.metadata[meta.CREATED_RESOURCES])[0]
    assert created["config"] == {"model": "clf-tuned", "hash": export["hash"], "device": "cpu"}
    reloaded = AutoModelForSequenceClassification.from_pretrained(out, local_files_only=True).eval()
    enc = rt.bridge.resources.get(result["model_resource"]).tokenizer("this movie was great",  # type: ignore[attr-defined]
                                                                       return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(reloaded(**enc).logits, rt.logits(result["model_resource"]), atol=1e-6)


def test_checkpoints_stay_under_their_byte_cap(rt: Runtime) -> None:
    one = 1.2 * sum(p.numel() * 4 for p in rt.bridge.resources.get("clf").model.parameters())  # type: ignore[attr-defined]
    cap = int(2.5 * one)
    rt.create("training_run", "run", {"model_resource": "clf", "dataset": "rows", "max_checkpoint_bytes": cap,
                                      "args": {**FAST, "save_steps": 1, "save_only_model": True}})
    _, result = rt.stream("run")
    ckpt = result["checkpoints"]
    assert ckpt["kept"] == ["checkpoint-3", "checkpoint-4"] and ckpt["deleted"] == ["checkpoint-1", "checkpoint-2"]
    assert ckpt["bytes"] <= cap and ckpt["max_bytes"] == cap
    run = rt.bridge.resources.get("run")
    assert sorted(p.name for p in run.output_dir.glob("checkpoint-*")) == ckpt["kept"]  # type: ignore[attr-defined]
    rt.ok("common:delete_resource", {}, "run")
    assert not run.output_dir.exists()  # type: ignore[attr-defined]


def test_a_checkpoint_alone_over_the_cap_is_deleted_and_refused(tmp_path: Path) -> None:
    for step, size in ((1, 300), (2, 900)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"\0" * size)
    cap = CheckpointCap(tmp_path, 1000)
    cap.enforce()  # 1200 bytes in all: the oldest goes
    assert [p.name for p in cap.checkpoints()] == ["checkpoint-2"] and tree_bytes(tmp_path) == 900
    cap.max_bytes = 500
    with pytest.raises(QuotaExceeded, match="checkpoint-2 takes .* over the run's max_checkpoint_bytes"):
        cap.enforce()
    assert cap.checkpoints() == [] and cap.deleted == ["checkpoint-1", "checkpoint-2"]


def test_a_cancelled_run_resumes_from_its_last_checkpoint(rt: Runtime) -> None:
    rt.create("training_run", "run", {"model_resource": "clf", "dataset": "rows",
                                      "args": {**FAST, "max_steps": 8, "save_steps": 1, "save_only_model": False}})
    cid = uuid.uuid4().hex

    def on_event(kind: str, payload: Any) -> None:
        if kind == "progress" and payload[0] == 3:
            rt.d.cancel(cid)

    _, final = rt.stream("run", call_id=cid, on_event=on_event)
    assert isinstance(final, MLBridgeError) and final.code == "CANCELLED"
    assert wait_for(lambda: rt.bridge.resources.get("run").info()["state"] == "cancelled")
    events, result = rt.stream("run", {"resume": True})
    first = progress(events)[0][0]
    assert 3 < first <= 5 and result["steps"] == 8 and progress(events)[-1][0] == 8
    err = Runtime(None)
    err.create("model", "clf", {"model": "clf"})
    err.create("dataset", "rows", {"rows": ROWS})
    err.create("training_run", "fresh", {"model_resource": "clf", "dataset": "rows", "args": FAST})
    assert "no checkpoint to resume from" in err.fail("common:execute_resource", {"resume": True}, "fresh").message


# -- the other tasks -------------------------------------------------------------------------------------------
def test_a_causal_lm_whose_tokenizer_has_no_pad_token_trains_with_eos_as_pad(rt: Runtime, tmp_path: Path) -> None:
    rt.bridge.models["gpt-nopad"] = grant_for(_no_pad_gpt2(tmp_path), "gpt-nopad")
    rt.create("model", "gpt", {"model": "gpt-nopad"})
    assert rt.bridge.resources.get("gpt").tokenizer.pad_token is None  # type: ignore[attr-defined]
    rt.create("dataset", "corpus", {"rows": [{"text": r["text"]} for r in ROWS]})
    info = rt.create("training_run", "lm", {"model_resource": "gpt", "dataset": "corpus", "args": FAST})["info"]
    assert info["task"] == "causal-lm"
    events, result = rt.stream("lm")
    assert result["steps"] == 4 and len(progress(events)) == 4 and all(0 < x < 20 for x in result["losses"])
    assert rt.bridge.resources.get("gpt").tokenizer.pad_token is None  # type: ignore[attr-defined]
    tuned = rt.bridge.resources.get(result["model_resource"])
    assert tuned.tokenizer.pad_token == tuned.tokenizer.eos_token  # type: ignore[attr-defined]
    out = rt.execute(result["model_resource"], {"inputs": "the quick", "parameters": {"max_new_tokens": 3}})
    assert isinstance(out["output"]["text"], str)


def test_token_classification_aligns_one_tag_per_word(rt: Runtime) -> None:
    rt.create("model", "tagger", {"model": "tagger"})
    rows = [{"words": ["paris", "is", "lovely"], "tags": ["LABEL_1", "LABEL_0", "LABEL_0"]},
            {"text": "berlin is big", "tags": [1, 0, 0]}]
    err = rt.fail("common:create_resource", {"rows": rows}, "mixed", "dataset")
    assert err.code == "INVALID_ARGUMENT"
    rt.create("dataset", "tags", {"rows": [{"text": "paris is the capital", "tags": ["LABEL_1", "LABEL_0", "LABEL_0",
                                                                                     "LABEL_0"]},
                                           {"text": "berlin is big", "tags": ["LABEL_1", "LABEL_0", "LABEL_0"]}] * 4,
                                  "label_column": "tags"})
    _, result = rt.stream(rt.create("training_run", "tag-run", {"model_resource": "tagger", "dataset": "tags",
                                                                "args": FAST})["resource_id"])
    assert result["task"] == "token-classification" and result["steps"] == 4
    rt.create("dataset", "bad-tags", {"rows": [{"text": "a b", "tags": [0, 7]}], "label_column": "tags"})
    err = rt.fail("common:create_resource", {"model_resource": "tagger", "dataset": "bad-tags"}, "r2", "training_run")
    assert "label 7 is out of range" in err.message


def test_masked_lm_trains_on_plain_text(rt: Runtime) -> None:
    rt.create("model", "mlm", {"model": "mlm"})
    rt.create("dataset", "corpus", {"rows": [{"text": r["text"]} for r in ROWS]})
    rt.create("training_run", "m", {"model_resource": "mlm", "dataset": "corpus", "mlm_probability": 0.5,
                                    "args": FAST})
    events, result = rt.stream("m")
    assert result["task"] == "masked-lm" and len(progress(events)) == 4 and result["final_loss"] > 0


def test_describe_lists_the_dataset_and_training_run_types(rt: Runtime) -> None:
    types = {t["name"]: t for t in rt.ok("common:describe")["resource_types"]}
    assert types["training_run"]["streaming"] and not types["dataset"]["streaming"]
    assert {"model_resource", "dataset", "args", "export", "max_checkpoint_bytes"} <= \
        set(types["training_run"]["schema"]["properties"])
    assert "learning_rate" in types["training_run"]["schema"]["properties"]["args"]["description"]
    assert {"rows", "attachment", "format", "split", "max_rows"} <= set(types["dataset"]["schema"]["properties"])
