"""The ``training_run`` resource: fine-tune a model resource on a dataset resource with ``Trainer``.

Creating a run checks everything a run could fail on before it trains: the
model and dataset resources exist, the model's head fits the task, every
label names one of its classes, the tokenizer can pad, the training args are
allowed and in range (:mod:`.train_args`), a checkpoint fits
``max_checkpoint_bytes``, the copy fits in memory, and an ``export`` has an
export directory to go to. Executing it (streaming) trains a copy of the
model (the base resource is never changed) with one progress event per
optimizer step carrying the loss, stops within a step on cancel or at the
deadline (:mod:`.train_loop`), and ends with a NEW ``model`` resource
holding the fine-tuned weights, registered with the orchestrator through
the created-resources reply metadata, and, with ``export``, the model and
tokenizer saved under the export directory for the orchestrator to import
into its model store.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any, ClassVar

from ..core import CallContext, InvalidArgument, export_model
from ..core.grants import MODEL_NAME
from ..wire import metadata as meta
from ..wire.errors import AlreadyExists, ConfigError, QuotaExceeded, exception_chain
from . import train_models as tm
from .base import TransformersResource
from .datasets import DatasetResource
from .resources import ModelResource
from .train_args import ALLOWED, build_training_args, check_args
from .train_data import TASKS, check_fit, check_tokenizer, prepare, task_of
from .train_loop import CheckpointCap, make_callback, make_trainer

__all__ = ["DEFAULT_CHECKPOINT_BYTES", "MAX_CHECKPOINT_BYTES", "TrainingRunResource"]

#: The checkpoint cap when the config names none, and the most it may name.
DEFAULT_CHECKPOINT_BYTES = 1 << 30
MAX_CHECKPOINT_BYTES = 64 << 30
#: The most per-step losses a result carries (the last ones; progress events carry every one).
MAX_LOSSES = 10_000
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")

_CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model_resource": {"type": "string", "description": "id of the model resource to fine-tune (a copy)"},
        "tokenizer_resource": {"type": "string", "description": "id of a tokenizer resource (default: the "
                                                                "model's own tokenizer files)"},
        "dataset": {"type": "string", "description": "id of a dataset resource"},
        "task": {"type": "string", "enum": list(TASKS), "description": "default: from the model's head"},
        "args": {"type": "object", "description": f"TrainingArguments fields: {', '.join(sorted(ALLOWED))}"},
        "max_length": {"type": "integer", "description": "tokens per row at most (default: the model's, "
                                                         "at most 512)"},
        "mlm_probability": {"type": "number", "description": "masked-lm: share of tokens masked (0.15)"},
        "max_checkpoint_bytes": {"type": "integer", "description": f"cap on the run's checkpoints on disk "
                                                                   f"(default {DEFAULT_CHECKPOINT_BYTES})"},
        "export": {"type": "object", "description": "{name}: save the fine-tuned model into the model store "
                                                    "under this new name"},
    },
    "required": ["model_resource", "dataset"],
    "additionalProperties": False,
}


def _number(cfg: dict[str, Any], key: str, default: float, low: float, high: float, integer: bool) -> Any:
    value = cfg.get(key, default)
    kinds = (int,) if integer else (int, float)
    if not isinstance(value, kinds) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidArgument(f"training_run {key} must be {'an integer' if integer else 'a number'} from {low:g} "
                              f"to {high:g}, got {value!r}")
    return value


def _no_space(exc: BaseException) -> bool:
    """Whether a write failed for want of space (safetensors reports it as its own error, with the OS text)."""
    return any((isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT))
               or "No space left on device" in str(cur) or "Disk quota exceeded" in str(cur)
               for cur in exception_chain(exc))


class TrainingRunResource(TransformersResource):
    """A fine-tuning run of a model resource on a dataset resource."""

    type_name: ClassVar[str] = "training_run"
    description: ClassVar[str] = ("Fine-tune a copy of a model resource on a dataset resource with Trainer; "
                                  "execute streams one progress event per step (loss), is cancellable, and "
                                  "creates a new model resource (optionally exported to the model store)")
    config_schema: ClassVar[dict[str, Any]] = _CONFIG_SCHEMA

    # -- create: check everything, train nothing --------------------------------------------------------------
    def create(self, ctx: CallContext) -> None:
        cfg = self.config
        base = self._base()
        model = base.model
        dataset = self._dataset()
        self.task = task_of(model, cfg.get("task"), f"model_resource {base.resource_id!r}")
        self.args = check_args(cfg.get("args"))
        check_fit(self.task, dataset, model)
        check_tokenizer(tm.tokenizer_of(self.bridge, cfg.get("tokenizer_resource"), base), self.task)
        positions = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 512
        self.max_length = _number(cfg, "max_length", min(positions, 512), 1, positions, True)
        self.mlm_probability = _number(cfg, "mlm_probability", 0.15, 0.01, 0.99, False)
        self.max_checkpoint_bytes = _number(cfg, "max_checkpoint_bytes", DEFAULT_CHECKPOINT_BYTES, 1,
                                            MAX_CHECKPOINT_BYTES, True)
        self.export_name = self._export_name(cfg.get("export"))
        device = base.device
        if device.startswith("cuda") and device not in ("cuda", "cuda:0"):
            raise ConfigError(f"model resource {base.resource_id!r} is on {device}, but Trainer trains on cuda:0; "
                              f"load the model on cuda:0 (or the CPU) to fine-tune it")
        optim = self.args.get("optim", "adamw_torch")
        if "save_steps" in self.args:
            one = tm.checkpoint_estimate(model, optim, bool(self.args.get("save_only_model")))
            if one > self.max_checkpoint_bytes:
                raise InvalidArgument(
                    f"one checkpoint of this model takes about {one} bytes (weights, plus optimizer state unless "
                    f"args.save_only_model), over max_checkpoint_bytes {self.max_checkpoint_bytes}; raise the "
                    f"cap, set args.save_only_model, or leave save_steps out")
        tm.check_memory(model, device, optim, base.resource_id)
        build_training_args(self.args, Path(tempfile.gettempdir()) / "mlb-train-check",
                            use_cpu=device == "cpu", evaluate=dataset.test is not None)
        self.output_dir: Path | None = None
        self.runs: list[dict[str, Any]] = []
        self.state = "ready"
        self.live: list[float] = []  # the losses of the run in progress, step by step
        self._lock = threading.Lock()

    def _base(self) -> ModelResource:
        base = self.bridge.resources.get_as(self.config["model_resource"], ModelResource, "model_resource")
        if base.model is None:
            raise ConfigError(f"model resource {base.resource_id!r} holds no model (it was deleted); create it "
                              f"again")
        return base

    def _dataset(self) -> DatasetResource:
        return self.bridge.resources.get_as(self.config["dataset"], DatasetResource, "dataset")

    def _export_name(self, spec: Any) -> str | None:
        if spec is None:
            return None
        if not isinstance(spec, dict) or set(spec) != {"name"} or not isinstance(spec["name"], str):
            raise InvalidArgument("training_run export must be {name: <new model store name>}")
        if not MODEL_NAME.match(spec["name"]):
            raise InvalidArgument(f"export name {spec['name'][:100]!r} must match {MODEL_NAME.pattern}")
        if self.bridge.export_dir is None:
            raise ConfigError("this worker cannot export models: no export directory was granted. Give the "
                              "transformers bridge `models: true` and a `model_store` in the orchestrator "
                              "config, or leave 'export' out")
        return str(spec["name"])

    # -- execute: train -----------------------------------------------------------------------------------------
    def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> Generator[dict[str, Any], None, dict[str, Any]]:
        """``{model_resource: new id (optional), resume: bool}``: train; chunks are Trainer's log records."""
        unknown = sorted(set(inputs) - {"model_resource", "resume"})
        if unknown:
            raise InvalidArgument(f"training_run inputs: unexpected field(s) {', '.join(unknown)}; fields: "
                                  f"model_resource (the new model's id), resume (from the last checkpoint)")
        new_id = inputs.get("model_resource") or f"{self.resource_id}.model-{len(self.runs) + 1}"
        if not isinstance(new_id, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$", new_id):
            raise InvalidArgument("training_run input model_resource must be a resource id")
        if new_id in self.bridge.resources:  # before the (long) training; add() checks again
            raise AlreadyExists(f"resource {new_id!r} already exists; name another model_resource")
        if not self._lock.acquire(blocking=False):
            raise ConfigError(f"training_run {self.resource_id!r} is already running; wait for it or cancel it")
        try:
            self.state = "running"
            result = self._train(ctx, new_id, bool(inputs.get("resume", False)))
            self.state = "done"
        except BaseException:
            self.state = "cancelled" if ctx.cancelled else "failed"
            raise
        finally:
            self._lock.release()
        yield from ()
        return result

    def _train(self, ctx: CallContext, new_id: str, resume: bool) -> dict[str, Any]:
        import torch

        started = time.monotonic()
        base, dataset = self._base(), self._dataset()
        device = base.device
        tokenizer = tm.private_tokenizer(tm.tokenizer_of(self.bridge, self.config.get("tokenizer_resource"), base),
                                         ctx)
        if check_tokenizer(tokenizer, self.task):
            tokenizer.pad_token = tokenizer.eos_token
        model = tm.training_copy(base.model, device)
        ctx.check()
        splits = dataset.splits()
        train, collator = prepare(self.task, dataset, splits["train"], tokenizer, model.config, self.max_length,
                                  self.mlm_probability)
        test = None
        if "test" in splits:
            test, _ = prepare(self.task, dataset, splits["test"], tokenizer, model.config, self.max_length,
                              self.mlm_probability)
        ctx.check()  # tokenizing a large dataset takes a while: stop here rather than train
        checkpoint = self._prepare_output(resume)
        assert self.output_dir is not None
        cap = CheckpointCap(self.output_dir, self.max_checkpoint_bytes) if "save_steps" in self.args else None
        args = build_training_args(self.args, self.output_dir, use_cpu=device == "cpu", evaluate=test is not None)
        losses: list[float] = []
        self.live = losses
        holder: list[Any] = []
        callback = make_callback(ctx, lambda: holder[0], cap, losses)
        trainer = make_trainer(ctx=ctx, model=model, args=args, data_collator=collator, train_dataset=train,
                               eval_dataset=test, processing_class=tokenizer, callbacks=[callback])
        holder.append(trainer)
        threads = torch.get_num_threads()
        try:
            try:
                output = trainer.train(resume_from_checkpoint=checkpoint)
            except Exception as exc:
                if not _no_space(exc):
                    raise
                raise QuotaExceeded(f"the worker's temporary space filled up writing checkpoints ({exc}); lower "
                                    f"max_checkpoint_bytes or save_steps' frequency, or raise the bridge's "
                                    f"limits.tmpfs_size", details={"quota": "tmpfs"}) from None
            ctx.check()  # stopped early by a cancel or the deadline: the call ends so, with no model
            metrics = {k: v for k, v in trainer.evaluate().items() if isinstance(v, (int, float))} if test else None
        finally:
            if torch.get_num_threads() != threads:  # the bridge sized the pool to the CPU limit; keep it
                torch.set_num_threads(threads)
        ctx.check()
        model.eval()
        export = self._export(ctx, model, tokenizer) if self.export_name else None
        config = tm.created_config(base, self.resource_id, device, export)
        new = tm.adopt(self.bridge, new_id, config, model, tokenizer, base)
        self.bridge.resources.add(new)
        info = new.info()
        ctx.metadata[meta.CREATED_RESOURCES] = json.dumps(
            [{"resource_id": new_id, "type": new.type_name, "config": config, "info": info}])
        steps = int(trainer.state.global_step)
        run = {"model_resource": new_id, "steps": steps, "final_loss": losses[-1] if losses else None,
               "train_loss": float(output.training_loss), "export": export}
        self.runs.append(run)
        return {**run, "task": self.task, "losses": losses[-MAX_LOSSES:], "losses_total": len(losses),
                "eval": metrics, "checkpoints": cap.summary() if cap else None, "config": config,
                "seconds": round(time.monotonic() - started, 3)}

    def _prepare_output(self, resume: bool) -> str | None:
        """The run's checkpoint directory (emptied unless resuming) and the checkpoint to resume from."""
        if self.output_dir is None:
            self.output_dir = Path(tempfile.mkdtemp(prefix=f"mlb-train-{_SAFE.sub('_', self.resource_id)[:60]}-"))
        if not resume:
            shutil.rmtree(self.output_dir, ignore_errors=True)
            self.output_dir.mkdir(parents=True)
            return None
        found = CheckpointCap(self.output_dir, 0).checkpoints()
        if not found:
            raise InvalidArgument(f"training_run {self.resource_id!r} has no checkpoint to resume from; run with "
                                  f"args.save_steps to write checkpoints")
        return str(found[-1])

    def _export(self, ctx: CallContext, model: Any, tokenizer: Any) -> dict[str, str]:
        export_dir = self.bridge.export_dir
        if export_dir is None or self.export_name is None:
            raise ConfigError("this worker has no export directory")
        out = export_dir / f"{self.export_name}-{uuid.uuid4().hex[:12]}"
        try:
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
        except Exception as exc:
            shutil.rmtree(out, ignore_errors=True)
            if _no_space(exc):
                raise QuotaExceeded(f"the fine-tuned model does not fit the export directory ({exc}); raise the "
                                    f"bridge's export_size, or leave 'export' out",
                                    details={"quota": "export_size"}) from None
            if isinstance(exc, OSError):
                raise ConfigError(f"the fine-tuned model could not be written to the export directory: {exc}") \
                    from None
            raise
        return export_model(ctx, export_dir, out, self.export_name)

    def info(self) -> dict[str, Any]:
        if not hasattr(self, "task"):
            return {}
        return {"model_resource": self.config["model_resource"], "dataset": self.config["dataset"],
                "task": self.task, "args": dict(self.args), "state": self.state, "step": len(self.live),
                "export": self.export_name, "runs": [dict(r) for r in self.runs]}

    def delete(self, ctx: CallContext) -> None:
        if getattr(self, "output_dir", None) is not None:
            shutil.rmtree(self.output_dir, ignore_errors=True)  # type: ignore[arg-type]
