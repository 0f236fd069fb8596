"""The ``model`` and ``tokenizer`` resources: a granted model or tokenizer, loaded once, used by many calls.

A ``model`` holds the loaded ``PreTrainedModel`` (``.model``), the device it
sits on (``.device``), its kind (``.kind``), the tokenizer saved beside it
when there is one (``.tokenizer``) and the grant it came from (``.grant``).
Pipelines and training runs refer to it by id and share the one copy in
memory. A fine-tuned model made in the worker becomes a resource through
:meth:`ModelResource.adopt`, with no file to load.

Executing either resource is documented in :mod:`.inference` (model) and
:meth:`TokenizerResource.execute` (tokenizer).
"""

from __future__ import annotations

import gc
from collections.abc import Generator
from typing import Any, ClassVar

from runtimes.core import CallContext, ModelGrant, find_model
from runtimes.wire.errors import ConfigError, InvalidArgument

from . import inference
from .base import (
    TransformersBase,
    TransformersResource,
    check_keys,
    holding,
    parameters,
    serial,
    texts,
)
from .loading import KINDS, load_model, load_tokenizer
from .outputs import to_json
from .placement import DTYPES

__all__ = ["MODEL_CONFIG", "ModelResource", "TokenizerResource"]

_NAME = {"type": "string", "description": "the model's name in the model store (`mlbridge models list`)"}
_HASH = {"type": "string", "description": "optional: the store hash (or a prefix) the model must have"}
_DEVICE = {"type": "string", "description": "cpu, cuda, cuda:N, or auto (a GPU when the worker has one; default)"}
_DTYPE = {"type": "string", "enum": list(DTYPES), "description": "weights' dtype; auto (default): the checkpoint's"}
_EXECUTE = ("{\"inputs\": text | [texts], \"parameters\": {...}}")

#: Config properties of a model (a pipeline naming a store model takes the same).
MODEL_CONFIG: dict[str, Any] = {"model": _NAME, "hash": _HASH, "dtype": _DTYPE, "device": _DEVICE}


class ModelResource(TransformersResource):
    """A model from the store, loaded once (verified against its recorded sha256 first)."""

    type_name: ClassVar[str] = "model"
    retry_safe: ClassVar[bool] = True  # inference: nothing outside the worker changes
    description: ClassVar[str] = ("A model from the model store (by name, optionally pinned by hash), loaded once; "
                                  "execute: " + _EXECUTE + " -> logits, labels, embeddings, or generated text "
                                  "(streamed)")
    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {**MODEL_CONFIG, "kind": {"type": "string", "enum": list(KINDS),
                                                "description": "which head to load; default: config.architectures"}},
        "required": ["model"],
        "additionalProperties": False,
    }

    model: Any = None
    tokenizer: Any = None
    grant: ModelGrant | None = None
    kind: str = ""
    device: str = "cpu"
    preloaded: bool = False

    def create(self, ctx: CallContext) -> Any:
        if isinstance(self.config, dict) and "trained_by" in self.config:
            # The spec of a fine-tuned model that was never exported: its weights lived only in its worker.
            raise ConfigError(f"model {self.resource_id!r} was fine-tuned by training run "
                              f"{str(self.config['trained_by'])[:64]!r} and lived only in its worker, which is gone; "
                              "train it again, with export: {name: ...} to keep it in the model store")
        check_keys(self.config, self.config_schema, "a model config")
        loaded = load_model(self.bridge.models, self.config, preloaded=self.bridge.preloaded,
                            observe_seconds=self.bridge.model_load_seconds.observe)
        self.preloaded = loaded.preloaded
        self.model, self.grant, self.kind, self.device = loaded.model, loaded.grant, loaded.kind, loaded.device
        try:  # the files were verified by load_model a moment ago
            self.tokenizer = load_tokenizer(loaded.grant, verify=False)
        except ConfigError:
            self.tokenizer = None
        return None

    @classmethod
    def adopt(cls, bridge: TransformersBase, resource_id: str, config: dict[str, Any], model: Any,
              tokenizer: Any = None, kind: str = "", grant: ModelGrant | None = None) -> ModelResource:
        """A model resource around a model already in memory (a fine-tuned one); ``create`` is not called.

        ``config`` is what the orchestrator records to re-create it on another
        worker, so it should name a loadable store model (an exported one).
        The caller adds the resource to ``bridge.resources``.
        """
        from .loading import config_kind

        res = cls(bridge, resource_id, config)
        res.model, res.tokenizer, res.grant = model, tokenizer, grant
        res.kind = kind or config_kind({"architectures": list(getattr(model.config, "architectures", None) or [])})
        res.device = str(next(model.parameters()).device)
        model.eval()
        return res

    def info(self) -> dict[str, Any]:
        if self.model is None:
            return {}
        out: dict[str, Any] = {"kind": self.kind, "device": self.device, "dtype": str(self.model.dtype).split(".")[-1],
                               "parameters": int(sum(p.numel() for p in self.model.parameters())),
                               "architectures": list(getattr(self.model.config, "architectures", None) or []),
                               "tokenizer": self.tokenizer is not None}
        if self.grant is not None:
            out.update(model=self.grant.name, hash=self.grant.hash)
        if self.preloaded:
            out["preloaded"] = True  # loaded by the spare before the claim
        return out

    def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> Generator[Any, None, Any]:
        check_keys(inputs, {"properties": {"inputs": 0, "parameters": 0}}, "executing a model")
        values, single = texts(inputs, f"model {self.resource_id!r}")
        params = parameters(inputs.get("parameters"))
        if self.tokenizer is None:
            raise ConfigError(f"model {self.resource_id!r} has no tokenizer in its directory; run it through a "
                              f"pipeline with a tokenizer_resource, or save the tokenizer beside the model")
        if self.kind == "causal-lm" and ctx.streaming and not single:
            raise InvalidArgument("a streaming generation takes one prompt (a string), not a list")
        with holding(serial(self.tokenizer), ctx):
            if self.kind == "causal-lm":
                outs = [inference.generate(self.model, self.tokenizer, self.device, ctx, v, params) for v in values]
                self.bridge.generated(ctx, self.model_name, sum(o.pop("prompt_tokens") for o in outs),
                                      sum(len(o["token_ids"]) for o in outs))
            else:
                outs = [inference.forward(self.model, self.tokenizer, self.kind, self.device, v, params)
                        for v in values]
        self.bridge.count("model_calls")
        return {"output": outs[0] if single else outs}
        yield  # a generator: ExecuteResourceStream streams generated text

    @property
    def model_name(self) -> str:
        """The store model's name (the resource id for a model that is not the store's)."""
        return self.grant.name if self.grant is not None else self.resource_id

    def delete(self, ctx: CallContext) -> None:
        on_gpu = self.device.startswith("cuda")
        self.model = self.tokenizer = None
        gc.collect()
        if on_gpu:
            import torch

            torch.cuda.empty_cache()


class TokenizerResource(TransformersResource):
    """The tokenizer saved in a store model's directory (verified against its recorded sha256 first)."""

    type_name: ClassVar[str] = "tokenizer"
    retry_safe: ClassVar[bool] = True
    description: ClassVar[str] = ("The tokenizer of a model in the model store; execute: {\"inputs\": text | [texts]} "
                                  "-> input_ids, attention_mask, tokens; or {\"decode\": ids | [ids...]} -> text")
    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object", "properties": {"model": _NAME, "hash": _HASH}, "required": ["model"],
        "additionalProperties": False,
    }

    tokenizer: Any = None
    grant: ModelGrant | None = None

    def create(self, ctx: CallContext) -> Any:
        check_keys(self.config, self.config_schema, "a tokenizer config")
        self.grant = find_model(self.bridge.models, self.config.get("model", ""), self.config.get("hash") or "")
        self.tokenizer = load_tokenizer(self.grant)
        return None

    def info(self) -> dict[str, Any]:
        tok = self.tokenizer
        if tok is None or self.grant is None:
            return {}
        return {"model": self.grant.name, "hash": self.grant.hash, "class": type(tok).__name__,
                "vocab_size": len(tok), "model_max_length": min(int(tok.model_max_length), 2**31 - 1),
                "special_tokens": {k: str(v) for k, v in tok.special_tokens_map.items()}}

    def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> Any:
        """``{"inputs", "parameters"}`` -> ids, mask and tokens; ``{"decode", "parameters"}`` -> text."""
        check_keys(inputs, {"properties": {"inputs": 0, "decode": 0, "parameters": 0}}, "executing a tokenizer")
        params = parameters(inputs.get("parameters"))
        if "decode" in inputs:
            ids = inputs["decode"]
            nested = isinstance(ids, list) and bool(ids) and all(isinstance(i, list) for i in ids)
            rows = ids if nested else [ids]
            if not all(isinstance(r, list) and all(isinstance(i, int) for i in r) for r in rows):
                raise InvalidArgument("decode takes a list of token ids, or a list of such lists")
            skip = bool(params.get("skip_special_tokens", False))
            with holding(serial(self.tokenizer), ctx):
                decoded = [self.tokenizer.decode(r, skip_special_tokens=skip) for r in rows]
            return {"output": decoded if nested else decoded[0]}
        values, single = texts(inputs, f"tokenizer {self.resource_id!r}")
        kwargs = {k: params[k] for k in inference.TOKENIZER_KEYS if k in params}
        outs = []
        with holding(serial(self.tokenizer), ctx):
            for v in values:
                enc = self.tokenizer(v, **kwargs)
                outs.append({"input_ids": to_json(enc["input_ids"]), "tokens": self.tokenizer.convert_ids_to_tokens(
                    enc["input_ids"]), "attention_mask": to_json(enc["attention_mask"])})
        return {"output": outs[0] if single else outs}

    def delete(self, ctx: CallContext) -> None:
        self.tokenizer = None
