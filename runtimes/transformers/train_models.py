"""The training run's side of the ``model`` and ``tokenizer`` resources: read one, make a new one.

What a run takes from a model resource (:class:`.resources.ModelResource`):
the loaded ``model``, its ``device`` and the ``tokenizer`` saved beside it;
from a tokenizer resource, its ``tokenizer``. It trains *copies* of both
(:func:`training_copy`, :func:`private_tokenizer`), so the resources others
are serving from stay as they were and nothing waits on a tokenizer lock for
a whole run.

A fine-tuned model becomes a new ``model`` resource through
:meth:`ModelResource.adopt`, holding the trained weights in memory and the
tokenizer it was trained with. The spec the orchestrator records for it
(:func:`created_config`) re-creates it from the store when it was exported,
and otherwise cannot be re-created: its weights lived only in that worker.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from ..core import CallContext
from ..wire.errors import ConfigError, QuotaExceeded
from .base import holding, serial
from .resources import ModelResource, TokenizerResource

__all__ = ["adopt", "check_memory", "checkpoint_estimate", "created_config", "private_tokenizer", "tokenizer_of",
           "training_copy"]

MiB = 1 << 20
# Bytes of optimizer state per parameter byte, for the memory check (Adam keeps two fp32 moments).
_OPTIMIZER_STATE = {"sgd": 0, "adagrad": 1, "rmsprop": 1, "adafactor": 1}


def tokenizer_of(bridge: Any, tokenizer_rid: str | None, model_res: ModelResource) -> Any:
    """The tokenizer of resource ``tokenizer_rid``, else the one saved beside the model (shared: copy it to train)."""
    if tokenizer_rid is not None:
        return bridge.resources.get_as(tokenizer_rid, TokenizerResource, "tokenizer_resource").tokenizer
    if model_res.tokenizer is None:
        raise ConfigError(f"model resource {model_res.resource_id!r} has no tokenizer beside it; create a "
                          f"tokenizer resource and name it in tokenizer_resource")
    return model_res.tokenizer


def private_tokenizer(tokenizer: Any, ctx: CallContext) -> Any:
    """A copy of a shared tokenizer, taken under its lock (the copy gets a lock of its own)."""
    lock = serial(tokenizer)
    with holding(lock, ctx):
        return copy.deepcopy(tokenizer, {id(lock): threading.Lock()})


def _param_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def check_memory(model: Any, device: str, optim: str, name: str) -> int:
    """Refuse a run whose copy, gradients and optimizer state cannot fit; the estimate in bytes.

    Raises:
        QuotaExceeded: with the figures and the fixes.
    """
    from .placement import free_bytes

    weights = _param_bytes(model)
    fp32 = sum(p.numel() * 4 for p in model.parameters())
    needed = int((2 * weights + _OPTIMIZER_STATE.get(optim, 2) * fp32) * 1.1)
    free, limit_text = free_bytes(device)
    if needed > free:
        raise QuotaExceeded(
            f"fine-tuning {name!r} needs about {needed / MiB:.0f} MiB (a copy of the weights, their gradients "
            f"and the optimizer's state), but only {free / MiB:.0f} MiB is free in this worker ({limit_text}); "
            f"raise the bridge's memory limit, use optim 'sgd' or 'adafactor', or a smaller model",
            details={"quota": "memory", "needed_mib": round(needed / MiB, 1), "free_mib": round(free / MiB, 1)})
    return needed


def checkpoint_estimate(model: Any, optim: str, save_only_model: bool) -> int:
    """The bytes one checkpoint takes: the weights, plus the optimizer's state unless only the model is saved."""
    fp32 = sum(p.numel() * 4 for p in model.parameters())
    extra = 0 if save_only_model else _OPTIMIZER_STATE.get(optim, 2) * fp32
    return _param_bytes(model) + extra + 64 * 1024


def training_copy(model: Any, device: str) -> Any:
    """A copy of ``model`` to train (the base resource stays as it was), float32 when half floats on a CPU."""
    import torch

    trained = copy.deepcopy(model)
    if device == "cpu" and next(trained.parameters()).dtype in (torch.float16, torch.bfloat16):
        trained = trained.float()  # half-precision training on a CPU is slow and unstable
    return trained


def created_config(base: ModelResource, run_id: str, device: str, export: dict[str, str] | None) -> dict[str, Any]:
    """The spec the orchestrator records for the new model resource.

    Exported: the store's model by name and hash, so the orchestrator can
    re-create it on another worker. Not exported: a config the model type
    refuses (no ``model``), so a lost worker never silently brings back the
    base weights under the fine-tuned model's id.
    """
    if export is not None:
        return {"model": export["name"], "hash": export["hash"], "device": device}
    return {"trained_by": run_id, "base": base.resource_id, "device": device}


def adopt(bridge: Any, rid: str, config: dict[str, Any], model: Any, tokenizer: Any,
          base: ModelResource) -> ModelResource:
    """A new ``model`` resource holding ``model`` (trained) and ``tokenizer``, of the base's kind."""
    res = ModelResource.adopt(bridge, rid, config, model, tokenizer=tokenizer, kind=base.kind)
    res.trained_from = base.resource_id  # type: ignore[attr-defined]
    return res
