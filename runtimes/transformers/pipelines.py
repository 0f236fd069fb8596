"""The ``pipeline`` resource: a transformers pipeline built once, called by many clients.

Config: ``task`` and either ``model`` (a store name; the pipeline loads its
own copy with the head the task needs) or ``model_resource`` (a ``model``
resource's id, shared, whose kind must suit the task), optionally a
``tokenizer_resource``, ``device`` and ``dtype`` (with ``model``),
``parameters`` (defaults every call gets) and ``batching``
(``{"max_batch_size", "max_batch_time_ms"}``; opt-in, not for
text-generation, whose calls stream and stop one at a time).

Execute: ``{"inputs": text | [texts], "parameters": {...}}`` -> ``{"output":
<what the pipeline returns for those inputs, as JSON>}``. A streamed
text-generation call emits ``{"text": piece}`` chunks as tokens come and
ends with ``{"output", "text"}`` (``text``: the chunks joined). With
batching, reply metadata ``mlbridge-batch-size`` is the number of calls the
invocation that answered this one served, and the output is exactly what
the same call gets unbatched (:func:`.outputs.unbatch`).

The per-call path is short on purpose (the pipeline, its tokenizer and its
defaults are made at create; a call merges parameters and calls the
pipeline once): a tiny model's forward pass takes about a millisecond, so
anything per call shows.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Generator
from typing import Any, ClassVar

from runtimes.core import CallContext
from runtimes.wire import metadata as meta
from runtimes.wire.errors import ConfigError, InvalidArgument

from .base import TransformersResource, check_keys, holding, parameters, serial, texts
from .batching import Batcher, BatchSettings
from .classify import Classify, fast_classifier
from .generation import generation_hooks
from .loading import TASK_KINDS, load_model, load_tokenizer
from .outputs import to_json, unbatch
from .resources import MODEL_CONFIG, ModelResource, TokenizerResource

__all__ = ["PipelineResource"]

_BATCHING = {
    "type": "object",
    "description": "opt-in adaptive batching of concurrent calls (not for text-generation)",
    "properties": {"max_batch_size": {"type": "integer", "minimum": 1, "maximum": 1024,
                                      "description": "most texts per invocation (default 16)"},
                   "max_batch_time_ms": {"type": "number", "minimum": 0, "maximum": 1000,
                                         "description": "longest wait for calls still arriving (default 5)"}},
    "additionalProperties": False,
}


class PipelineResource(TransformersResource):
    """A transformers pipeline over a store model or a model resource, optionally batching concurrent calls."""

    type_name: ClassVar[str] = "pipeline"
    retry_safe: ClassVar[bool] = True  # inference: nothing outside the worker changes
    description: ClassVar[str] = ("A transformers pipeline (" + ", ".join(TASK_KINDS) + "); execute: {\"inputs\": "
                                  "text | [texts], \"parameters\": {...}} -> {\"output\"}; text-generation streams")
    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "task": {"type": "string", "enum": list(TASK_KINDS)},
            **MODEL_CONFIG,
            "model_resource": {"type": "string", "description": "a model resource's id, instead of model"},
            "tokenizer_resource": {"type": "string", "description": "a tokenizer resource's id (default: the "
                                                                    "tokenizer saved with the model)"},
            "batching": _BATCHING,
            "parameters": {"type": "object", "description": "default keyword arguments of every call"},
        },
        "required": ["task"],
        "additionalProperties": False,
    }

    pipe: Any = None
    fast: Classify | None = None
    tokenizer: Any = None
    batcher: Batcher | None = None
    device: str = "cpu"
    source: dict[str, Any] = {}

    def create(self, ctx: CallContext) -> Any:
        import transformers

        cfg = self.config
        check_keys(cfg, self.config_schema, "a pipeline config")
        task = cfg["task"]
        if task not in TASK_KINDS:
            raise InvalidArgument(f"task {str(task)[:60]!r} is not one of {', '.join(TASK_KINDS)}")
        model, tokenizer = self._model(cfg, task)
        if cfg.get("tokenizer_resource") is not None:
            tokenizer = self.bridge.resources.get_as(cfg["tokenizer_resource"], TokenizerResource,
                                                     "tokenizer_resource").tokenizer
        if tokenizer is None:
            raise ConfigError("the model's directory holds no tokenizer: pass tokenizer_resource (a tokenizer "
                              "resource of a store model that has one)")
        self.defaults = parameters(cfg.get("parameters"))
        self.tokenizer = tokenizer
        self.pipe = transformers.pipeline(task, model=model, tokenizer=tokenizer)
        self.fast = fast_classifier(self.pipe)
        self.task = task
        self.batcher = self._batcher(cfg.get("batching"), task)
        return None

    def _model(self, cfg: dict[str, Any], task: str) -> tuple[Any, Any]:
        kind = TASK_KINDS[task]
        has_model, has_ref = cfg.get("model") is not None, cfg.get("model_resource") is not None
        if has_model == has_ref:
            raise InvalidArgument("a pipeline takes either model (a store name) or model_resource (a model "
                                  "resource's id), not both or neither")
        if has_ref:
            extra = sorted(k for k in ("hash", "dtype", "device") if cfg.get(k) is not None)
            if extra:
                raise InvalidArgument(f"{', '.join(extra)} belong to the model resource; leave them out of a "
                                      f"pipeline that has model_resource")
            ref = self.bridge.resources.get_as(cfg["model_resource"], ModelResource, "model_resource")
            if ref.kind != kind:
                raise InvalidArgument(f"task {task!r} needs a {kind!r} model; model resource "
                                      f"{cfg['model_resource']!r} is {ref.kind!r}: create one with \"kind\": "
                                      f"{kind!r}, or name the store model here as \"model\"")
            self.device = ref.device
            self.source = {"model_resource": cfg["model_resource"], **({"model": ref.grant.name, "hash": ref.grant.hash}
                                                                      if ref.grant is not None else {})}
            return ref.model, ref.tokenizer
        loaded = load_model(self.bridge.models, {k: cfg.get(k) for k in MODEL_CONFIG}, kind=kind,
                            preloaded=self.bridge.preloaded, observe_seconds=self.bridge.model_load_seconds.observe)
        self.device = loaded.device
        self.source = {"model": loaded.grant.name, "hash": loaded.grant.hash}
        tokenizer = None
        if cfg.get("tokenizer_resource") is None:
            try:  # verified with the model a moment ago
                tokenizer = load_tokenizer(loaded.grant, verify=False)
            except ConfigError:
                tokenizer = None
        return loaded.model, tokenizer

    def _batcher(self, spec: Any, task: str) -> Batcher | None:
        if spec is None:
            return None
        if task == "text-generation":
            raise InvalidArgument("batching is for the encoder tasks; a text-generation pipeline serves each call "
                                  "on its own (it streams and stops per call): leave batching out")
        settings = BatchSettings(**{k: v for k, v in spec.items() if k in ("max_batch_size", "max_batch_time_ms")})
        if not isinstance(settings.max_batch_size, int) or settings.max_batch_size < 1:
            raise InvalidArgument("batching.max_batch_size must be a positive integer")
        return Batcher(self._run_batch, settings, name=self.resource_id, observe=self.bridge.batch_size.observe)

    def info(self) -> dict[str, Any]:
        if self.pipe is None:
            return {}
        return {"task": self.task, **self.source, "device": self.device, "parameters": self.defaults,
                "batching": None if self.batcher is None else dict(self.batcher.settings.__dict__)}

    # -- calls -----------------------------------------------------------------------------
    def loop_execute(self, ctx: CallContext) -> Callable[[CallContext, dict[str, Any]], Awaitable[Any]] | None:
        """Batching unary calls wait on the event loop, not in a handler thread each."""
        return self._execute_batched if self.batcher is not None and not ctx.streaming else None

    async def _execute_batched(self, ctx: CallContext, inputs: dict[str, Any]) -> dict[str, Any]:
        assert self.batcher is not None
        values, single, params = self._inputs(inputs)
        params.pop("batch_size", None)
        output, size = await self.batcher.submit_async(ctx, (values, single), len(values), params,
                                                       json.dumps(params, sort_keys=True))
        ctx.metadata[meta.BATCH_SIZE] = str(size)
        return {"output": output}

    def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> Generator[Any, None, Any]:
        if self.batcher is not None and not ctx.streaming:
            with self.batcher.arriving() as ticket:
                values, single, params = self._inputs(inputs)
                params.pop("batch_size", None)
                output, size = self.batcher.submit(ticket, ctx, (values, single), len(values), params,
                                                   json.dumps(params, sort_keys=True))
            ctx.metadata[meta.BATCH_SIZE] = str(size)
            return {"output": output}
        values, single, params = self._inputs(inputs)
        return self._call(ctx, values[0] if single else values, params)
        yield  # a generator: ExecuteResourceStream streams generated text

    def _inputs(self, inputs: dict[str, Any]) -> tuple[list[str], bool, dict[str, Any]]:
        check_keys(inputs, {"properties": {"inputs": 0, "parameters": 0}}, "executing a pipeline")
        values, single = texts(inputs, f"pipeline {self.resource_id!r}")
        return values, single, parameters(self.defaults, inputs.get("parameters"))

    def _call(self, ctx: CallContext, value: Any, params: dict[str, Any]) -> dict[str, Any]:
        import torch

        streamer = None
        hooks: dict[str, Any] = {}
        prompt_tokens = 0
        if self.task == "text-generation":
            if ctx.streaming and not isinstance(value, str):
                raise InvalidArgument("a streaming generation takes one prompt (a string), not a list")
            hooks, streamer = generation_hooks(ctx, self.tokenizer, params.get("num_beams", 1))
            params = {**params, **hooks}
        with holding(serial(self.tokenizer), ctx), torch.inference_mode():
            if hooks:  # usage accounting: the prompts' tokens
                prompt_tokens = sum(len(self.tokenizer(p)["input_ids"])
                                    for p in ([value] if isinstance(value, str) else value))
            if self.fast is not None and not params:
                found = self.fast([value] if isinstance(value, str) else value)
                out = found if isinstance(value, list) else found[:1]
            else:
                out = self.pipe(value, **params)
        ctx.check()
        self.bridge.count("pipeline_calls")
        if hooks:
            generated = streamer.tokens if streamer is not None else hooks["stopping_criteria"][0].tokens
            self.bridge.generated(ctx, str(self.source.get("model") or self.resource_id), prompt_tokens, generated)
        if streamer is not None:
            return {"output": to_json(out), "text": streamer.text}
        return {"output": to_json(out)}

    def _run_batch(self, payloads: list[tuple[list[str], bool]], params: dict[str, Any]) -> list[Any]:
        """One invocation for the requests of a batch: each request's output, as it would be unbatched.

        A lone request is the plain call (the pipeline's fast path for one
        text); several are one list call with ``batch_size`` = all their
        texts, each element turned back into its caller's shape.
        """
        import torch

        if self.fast is not None and not params:  # the vectorised classifier answers as the pipeline would
            with serial(self.tokenizer):
                found = self.fast([v for values, _ in payloads for v in values])
            self.bridge.count("pipeline_calls", len(payloads))
            answers: list[Any] = []
            start = 0
            for values, single in payloads:
                mine = found[start:start + len(values)]
                answers.append(mine[:1] if single else mine)
                start += len(values)
            return answers
        if len(payloads) == 1:
            values, single = payloads[0]
            with serial(self.tokenizer), torch.inference_mode():
                out = self.pipe(values[0] if single else values, **params)
            self.bridge.count("pipeline_calls")
            return [to_json(out)]
        flat = [v for values, _ in payloads for v in values]
        with serial(self.tokenizer), torch.inference_mode():
            outs = self.pipe(flat, batch_size=len(flat), **params)
        self.bridge.count("pipeline_calls", len(payloads))
        answers, start = [], 0
        for values, single in payloads:
            each = [unbatch(self.task, to_json(o), v, single, self.tokenizer, params)
                    for o, v in zip(outs[start:start + len(values)], values, strict=True)]
            answers.append(each[0] if single else each)
            start += len(values)
        return answers

    def delete(self, ctx: CallContext) -> None:
        # Calls already queued are still served (the batcher drains, then its thread ends and lets go of
        # the pipeline); later ones are refused. The model's memory goes with the last reference to it.
        if self.batcher is not None:
            self.batcher.close()

    def stats(self) -> dict[str, Any]:
        return {} if self.batcher is None else self.batcher.stats()
