"""The ``transformers`` bridge: Hugging Face models, tokenizers, pipelines, datasets and fine-tuning.

Resource types: ``model`` and ``tokenizer`` (:mod:`.resources`), ``pipeline``
(:mod:`.pipelines`: streaming generation, opt-in adaptive batching),
``dataset`` and ``training_run`` (:mod:`.datasets`, :mod:`.training`).
Models come only from the host's model store, granted per tenant, mounted
read-only and checked against their recorded sha256 before loading; there
is no hub (the image sets every ``HF_*_OFFLINE``, and loading passes
``local_files_only``).

``setup`` imports torch and transformers while the worker is still a spare,
so a tenant's first call does not pay for them, and sizes torch's thread
pool from the cgroup's CPU quota (torch would otherwise start one thread
per host core and a one-CPU worker would thrash); ``configure`` does it
again, since a tenant's policy may have lowered the limit at the claim.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from runtimes.core import CallContext, ModelGrant, command
from runtimes.wire.errors import MLBridgeError, flatten_exception

from . import errors
from .base import TransformersBase
from .datasets import DatasetResource
from .limits import MiB, cpu_limit, memory_figures, torch_threads
from .loading import load_model
from .pipelines import PipelineResource
from .placement import resolve_device
from .resources import ModelResource, TokenizerResource
from .training import TrainingRunResource

__all__ = ["HEALTH_MODELS", "OFFLINE_ENV", "TransformersBridge"]

#: Most models ``common:health`` runs a forward pass of (the smallest first).
HEALTH_MODELS = 3

#: Set before huggingface_hub is first imported (the image sets them too): no hub, no telemetry, no bars.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class TransformersBridge(TransformersBase):
    """Serves transformers on torch in one worker."""

    name = "transformers"
    framework = "transformers"
    resource_types = (ModelResource, TokenizerResource, PipelineResource, DatasetResource, TrainingRunResource)
    packages = ("torch", "tokenizers", "safetensors", "datasets", "accelerate", "huggingface-hub", "numpy")

    threads = 0

    # -- hooks --------------------------------------------------------------------------------
    def setup(self) -> None:
        for key, value in OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
        import transformers
        import transformers.pipelines  # noqa: F401 - warm the imports a first create would pay for

        transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        logging.getLogger("torch").setLevel(logging.ERROR)
        self._apply_threads()
        import torch

        # First use of the device query and of the CPU kernels, paid here rather than by a tenant's first call.
        torch.cuda.is_available()
        (torch.ones(8, 8) @ torch.ones(8, 8)).sum().item()

    def configure(self, tenant: str, secrets: dict[str, str]) -> None:
        super().configure(tenant, secrets)
        self._apply_threads()

    def _apply_threads(self) -> None:
        import torch

        self.threads = torch_threads()
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def translate_error(self, exc: BaseException) -> MLBridgeError | None:
        return errors.translate(exc)

    def stats(self) -> dict[str, Any]:
        mem = memory_figures()
        pipelines = {rid: s for rid, res in self.resources.items("pipeline")
                     if isinstance(res, PipelineResource) and (s := res.stats())}
        return {"resources": self.resources.counts_by_type(), **self.counts(), "torch_threads": self.threads,
                "memory": {"limit_mib": None if mem.limit is None else mem.limit // MiB,
                           "used_mib": mem.usage // MiB, "free_mib": mem.free // MiB},
                "batching": pipelines,
                "preloaded": sorted(v.grant.name for v in self.preloaded.values())}

    def health(self) -> dict[str, tuple[bool, str]]:
        """torch works on this worker's device (a 4x4 matmul), and each model loaded or preloaded here (at
        most :data:`HEALTH_MODELS`, the smallest first) runs a forward pass on one token."""
        import torch

        checks: dict[str, tuple[bool, str]] = {}
        device = "cpu"
        try:
            device = resolve_device(None)
            started = time.perf_counter()
            x = torch.ones(4, 4, device=device)
            value = float((x @ x).sum().item())
            checks["torch"] = (value == 64.0, f"torch {torch.__version__} on {device}: a 4x4 matmul gave {value:g} "
                                              f"in {(time.perf_counter() - started) * 1000:.2f} ms")
        except Exception as exc:  # noqa: BLE001 - a failing check, not a failed call
            checks["torch"] = (False, f"torch on {device}: {flatten_exception(exc)}")
        for name, model in self._health_models():
            started = time.perf_counter()
            try:
                on = next(model.parameters()).device
                ids = torch.zeros((1, 1), dtype=torch.long, device=on)
                extra = {"decoder_input_ids": ids} if getattr(model.config, "is_encoder_decoder", False) else {}
                with torch.no_grad():
                    model(input_ids=ids, **extra)
                checks[f"model:{name}"] = (True, f"a forward pass on one token on {on} took "
                                                 f"{(time.perf_counter() - started) * 1000:.2f} ms")
            except Exception as exc:  # noqa: BLE001
                checks[f"model:{name}"] = (False, f"model {name!r}: {flatten_exception(exc)}")
        return checks

    def _health_models(self) -> list[tuple[str, Any]]:
        """(name, model) of the models in memory here, each once, the smallest :data:`HEALTH_MODELS`;
        a name two of them share is told apart by the resource id."""
        found: dict[int, tuple[str, str, Any]] = {}
        for rid, res in self.resources.items("model"):
            if isinstance(res, ModelResource) and res.model is not None:
                found.setdefault(id(res.model), (res.model_name, rid, res.model))
        for rid, res in self.resources.items("pipeline"):
            model = getattr(getattr(res, "pipe", None), "model", None)
            if isinstance(res, PipelineResource) and model is not None:
                found.setdefault(id(model), (str(res.source.get("model") or rid), rid, model))
        for loaded in list(self.preloaded.values()):
            model = getattr(loaded, "model", None)
            if model is not None:
                found.setdefault(id(model), (loaded.grant.name, "preloaded", model))
        sized = sorted(found.values(), key=lambda item: sum(p.numel() for p in item[2].parameters()))
        out: list[tuple[str, Any]] = []
        for name, where, model in sized[:HEALTH_MODELS]:
            out.append((f"{name} ({where})" if any(n == name for n, _ in out) else name, model))
        return out

    def preload(self, models: list[ModelGrant]) -> list[dict[str, Any]]:
        """Load each model (verified, sized, as a ``model`` resource with defaults would) for the
        tenant that claims this spare; its first ``model`` or ``pipeline`` of one takes it."""
        out = []
        for grant in models:
            loaded = load_model({grant.name: grant}, {"model": grant.name, "hash": grant.hash},
                                observe_seconds=self.model_load_seconds.observe)
            self.preloaded[grant.hash] = loaded
            out.append({"name": grant.name, "hash": grant.hash, "kind": loaded.kind, "device": loaded.device})
        return out

    # -- commands -------------------------------------------------------------------------------
    @command("stats", description="Resources by type, calls, generated tokens, memory, batching per pipeline",
             inline=True)
    def transformers_stats(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return self.stats()

    @command("devices", description="What this worker can place models on: CPU threads and limit, GPUs",
             inline=True)
    def devices(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        import torch

        gpus = []
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                gpus.append({"device": f"cuda:{i}", "name": props.name, "memory_mib": props.total_memory // MiB})
        return {"cpu": {"torch_threads": torch.get_num_threads(), "cpu_limit": cpu_limit()},
                "cuda_available": torch.cuda.is_available(), "gpus": gpus,
                "models": sorted(self.models), "auto": "cuda:0" if gpus else "cpu"}
