"""The runnable building blocks: ``model``, ``prompt`` and ``chain`` resources.

References between resources are resource ids in the same worker, resolved
when the referring resource is created (a string is always an id; an object
is an inline config). The orchestrator re-creates a tenant's resources
oldest first, so a chain finds its prompt and model again on a new worker.
"""

from __future__ import annotations

from typing import Any

from runtimes.core import CallContext, InvalidArgument
from runtimes.core.jsonio import check_schema

from .base import LCResource, RunnableResource
from .code import Refs, build_runnable
from .models import MODEL_SCHEMA, ModelSpec
from .parsers import PARSER_SCHEMA, build_parser
from .prompts import PROMPT_SCHEMA, build_prompt, prompt_info

__all__ = ["ChainResource", "ModelResource", "PromptResource", "lookup", "part"]


class ModelResource(RunnableResource):
    type_name = "model"
    description = ("A chat model: provider openai (any OpenAI-compatible base_url), anthropic, google_genai, "
                   "or fake (offline, scripted); keys only from the tenant secret api_key_secret names")
    config_schema = MODEL_SCHEMA

    def create(self, ctx: CallContext) -> None:
        self.spec = ModelSpec(self.config)
        self.runnable = self.spec.build(self.bridge.secrets)

    def info(self) -> dict[str, Any]:
        return self.spec.info() if hasattr(self, "spec") else {}


class PromptResource(RunnableResource):
    type_name = "prompt"
    retry_safe = True  # formatting only
    description = "A chat prompt template ({template} or {messages}); variables checked at create"
    config_schema = PROMPT_SCHEMA

    def create(self, ctx: CallContext) -> None:
        self.runnable = build_prompt(self.config)

    def info(self) -> dict[str, Any]:
        return prompt_info(self.runnable) if self.runnable is not None else {}


_KINDS: dict[str, type[LCResource]] = {"model": ModelResource, "prompt": PromptResource}


def part(owner: LCResource, kind: str, spec: Any) -> Any:
    """A chain's or agent's ``prompt`` or ``model``: a resource id, or an inline config built here."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return lookup(owner, spec, kind)
    schema = MODEL_SCHEMA if kind == "model" else PROMPT_SCHEMA
    check_schema(spec, schema, f"inline {kind} of {owner.type_name} {owner.resource_id!r}")
    return ModelSpec(spec).build(owner.bridge.secrets) if kind == "model" else build_prompt(spec)


def lookup(owner: LCResource, rid: Any, kind: str) -> Any:
    """The LangChain object behind resource ``rid`` of type ``kind`` (an id in the same worker)."""
    if kind not in _KINDS:
        from .tools import ToolResource

        _KINDS.update({"chain": ChainResource, "tool": ToolResource})
    res = owner.bridge.resources.get_as(rid, _KINDS[kind], kind)
    return res.runnable  # type: ignore[attr-defined]


class ChainResource(RunnableResource):
    type_name = "chain"
    description = ("prompt | model | parser (each an id or an inline config; parser str, json or "
                   "{type: pydantic, schema}), or {code} whose build() returns any Runnable")
    config_schema = {
        "type": "object",
        "properties": {
            "prompt": {"type": ["string", "object"], "description": "prompt resource id, or a prompt config"},
            "model": {"type": ["string", "object"], "description": "model resource id, or a model config"},
            "parser": PARSER_SCHEMA,
            "code": {"type": "string", "description": "Python defining build() or build(resources)"},
        },
        "additionalProperties": False,
    }

    def create(self, ctx: CallContext) -> None:
        cfg = self.config
        self.module: Any = None
        self.single_var = ""
        if "code" in cfg:
            extra = sorted(set(cfg) - {"code"})
            if extra:
                raise InvalidArgument(f"a code chain takes only 'code', not {', '.join(extra)}")
            refs = Refs(lambda rid, kind: lookup(self, rid, kind))
            self.runnable, self.module = build_runnable(cfg["code"], f"chain:{self.resource_id}", refs)
            return
        if "model" not in cfg:
            raise InvalidArgument("a chain needs 'model' (an id or a model config), or 'code'")
        prompt, model = part(self, "prompt", cfg.get("prompt")), part(self, "model", cfg["model"])
        parser = build_parser(cfg.get("parser"))
        if prompt is not None and parser is not None and "format_instructions" in prompt.input_variables:
            prompt = prompt.partial(format_instructions=parser.get_format_instructions())
        if prompt is not None and len(prompt.input_variables) == 1:
            self.single_var = prompt.input_variables[0]
        parts = [p for p in (prompt, model, parser) if p is not None]
        runnable = parts[0]
        for p in parts[1:]:
            runnable = runnable | p
        self.runnable, self.prompt = runnable, prompt

    def prepare_input(self, value: Any) -> Any:
        """A chain whose prompt has one variable also takes that variable's value alone."""
        if self.single_var and not isinstance(value, dict):
            return {self.single_var: value}
        return value

    def delete(self, ctx: CallContext) -> None:
        if getattr(self, "module", None) is not None:
            self.module.release()

    def info(self) -> dict[str, Any]:
        cfg = self.config
        if "code" in cfg:
            return {"kind": "code", "runnable": type(self.runnable).__name__ if self.runnable else ""}
        out: dict[str, Any] = {"kind": "declarative", "parser": cfg.get("parser") if isinstance(
            cfg.get("parser"), str) else ("pydantic" if cfg.get("parser") else None)}
        for k in ("prompt", "model"):
            if k in cfg:
                out[k] = cfg[k] if isinstance(cfg[k], str) else "inline"
        if getattr(self, "prompt", None) is not None:
            out["variables"] = sorted(self.prompt.input_variables)
        return out
