"""Loading a model or tokenizer from the tenant's granted models: found, sized, verified, then read.

The order is the point. :func:`find_model` refuses a model the tenant may
not load (or a pinned hash that differs) before the disk is touched; the
size check reads only the safetensors headers; only then are the files
hashed against the manifest the orchestrator sent (:meth:`ModelGrant.verify`),
and only a model whose bytes match is handed to ``from_pretrained``, with
``local_files_only`` (there is no hub) and no remote code.

The model's *kind* (which ``AutoModelFor...`` class) comes from the config's
``architectures`` unless the caller names one, and a pipeline task implies
one (:data:`TASK_KINDS`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtimes.core import ModelGrant, find_model
from runtimes.wire.errors import ConfigError, InvalidArgument

from .placement import check_fits, estimate_bytes, free_bytes, resolve_device, torch_dtype

__all__ = ["KINDS", "TASK_KINDS", "Loaded", "config_kind", "load_model", "load_tokenizer"]

#: Model kinds and the transformers class each loads with.
KINDS: dict[str, str] = {
    "causal-lm": "AutoModelForCausalLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "masked-lm": "AutoModelForMaskedLM",
    "base": "AutoModel",
}
#: The model kind each pipeline task needs.
TASK_KINDS: dict[str, str] = {
    "text-generation": "causal-lm",
    "text-classification": "sequence-classification",
    "token-classification": "token-classification",
    "fill-mask": "masked-lm",
    "feature-extraction": "base",
}
# Architecture name endings -> kind, most specific first.
_SUFFIXES = (("ForCausalLM", "causal-lm"), ("LMHeadModel", "causal-lm"),
             ("ForSequenceClassification", "sequence-classification"),
             ("ForTokenClassification", "token-classification"), ("ForMaskedLM", "masked-lm"))


@dataclass
class Loaded:
    """A loaded model and what it was loaded from."""

    model: Any
    grant: ModelGrant
    kind: str
    device: str
    dtype: str
    preloaded: bool = False


def _config(grant: ModelGrant) -> dict[str, Any]:
    if "config.json" not in grant.files:
        raise ConfigError(f"model {grant.name!r} has no config.json; add a directory written by save_pretrained")
    try:
        value = json.loads((grant.path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"model {grant.name!r}: config.json cannot be read: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"model {grant.name!r}: config.json is not an object")
    return value


def config_kind(config: dict[str, Any]) -> str:
    """The kind the config's first architecture implies ("base" when none says otherwise)."""
    for arch in config.get("architectures") or []:
        for suffix, kind in _SUFFIXES:
            if isinstance(arch, str) and arch.endswith(suffix):
                return kind
    return "base"


def _kind(spec: Any, grant: ModelGrant) -> str:
    if spec is None:
        return config_kind(_config(grant))
    if spec not in KINDS:
        raise InvalidArgument(f"kind {str(spec)[:40]!r} is not one of {', '.join(KINDS)}")
    return str(spec)


def load_model(models: dict[str, ModelGrant], config: dict[str, Any], kind: str | None = None,
               preloaded: dict[str, Any] | None = None,
               observe_seconds: Callable[[float], None] | None = None) -> Loaded:
    """Load the model ``config`` names (``model``, ``hash``, ``dtype``, ``device``, ``kind``).

    ``observe_seconds`` gets the seconds a load from the store took (sizing,
    verifying, reading, placing; not a preloaded model taken over).

    ``kind`` (from a pipeline's task) overrides the config's. A model of
    ``preloaded`` (by hash; the worker loaded it as a spare) with the same
    kind, dtype and device is taken from there instead of read again, once.

    Raises:
        NotFound / PermissionDenied: not granted, or another hash (from :func:`find_model`).
        QuotaExceeded: it would not fit the worker's free memory.
        ArtifactMismatch: its files differ from the store's record.
        ConfigError / InvalidArgument: a bad device, dtype or kind, or an unreadable config.
    """
    import transformers

    grant = find_model(models, config.get("model", ""), config.get("hash") or "")
    kind = kind or _kind(config.get("kind"), grant)
    dtype_name = config.get("dtype") or "auto"
    dtype = torch_dtype(dtype_name)
    device = resolve_device(config.get("device"))
    hit = (preloaded or {}).get(grant.hash)
    if isinstance(hit, Loaded) and (hit.kind, hit.dtype, hit.device) == (kind, dtype_name, device):
        del preloaded[grant.hash]  # type: ignore[union-attr]  # one resource owns a loaded model
        return Loaded(hit.model, grant, kind, device, dtype_name, preloaded=True)
    started = time.perf_counter()
    free, limit_text = free_bytes(device)
    check_fits(grant.name, estimate_bytes(grant.path, grant.files, dtype_name), free, limit_text, dtype_name)
    grant.verify()
    cls = getattr(transformers, KINDS[kind])
    model = cls.from_pretrained(grant.path, local_files_only=True, trust_remote_code=False, dtype=dtype)
    model.eval()
    if device != "cpu":
        model.to(device)
    if observe_seconds is not None:
        observe_seconds(time.perf_counter() - started)
    return Loaded(model, grant, kind, device, dtype_name)


def load_tokenizer(grant: ModelGrant, verify: bool = True) -> Any:
    """The tokenizer saved in a granted model's directory (its files verified first unless told otherwise).

    Raises:
        ArtifactMismatch: its files differ from the store's record.
        ConfigError: the directory holds no tokenizer.
    """
    import transformers

    if verify:
        grant.verify()
    try:
        return transformers.AutoTokenizer.from_pretrained(grant.path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"model {grant.name!r} has no usable tokenizer ({type(exc).__name__}: {str(exc)[:300]}); "
                          f"save one with tokenizer.save_pretrained into the model's directory") from None
