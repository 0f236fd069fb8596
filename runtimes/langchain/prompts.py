"""Chat prompt templates from JSON, with their variables checked when they are created.

A prompt config is either ``{"template": "..."}`` (one human message) or
``{"messages": [...]}``, each message ``{"role", "content"}`` (roles
system, human/user, ai/assistant) or ``{"role": "placeholder", "variable":
"history", "optional": true}`` (a list of messages passed in at run time).
``variables`` may declare the input variables; a prompt whose templates use
others (or fewer) is refused at create, naming them, instead of failing at
the first call. ``partial`` fills some variables now. Templates are
f-strings or mustache; jinja2 is not offered (its templates can run code).
"""

from __future__ import annotations

from typing import Any

from runtimes.wire.errors import InvalidArgument

__all__ = ["PROMPT_SCHEMA", "build_prompt", "prompt_info"]

_ROLES = {"system": "system", "human": "human", "user": "human", "ai": "ai", "assistant": "ai"}

PROMPT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "template": {"type": "string", "description": "one human message"},
        "messages": {"type": "array", "description": "[{role, content}] or {role: placeholder, variable}"},
        "variables": {"type": "array", "description": "the input variables, checked at create"},
        "partial": {"type": "object", "description": "variables filled now"},
        "template_format": {"type": "string", "enum": ["f-string", "mustache"]},
    },
    "additionalProperties": False,
}


def build_prompt(config: dict[str, Any]) -> Any:
    """A ``ChatPromptTemplate`` from a prompt config.

    Raises:
        InvalidArgument: a malformed message, template or variable list, named.
    """
    from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

    unknown = sorted(set(config) - set(PROMPT_SCHEMA["properties"]))
    if unknown:
        raise InvalidArgument(f"prompt config: unexpected field(s): {', '.join(unknown)}")
    if ("template" in config) == ("messages" in config):
        raise InvalidArgument("a prompt needs exactly one of 'template' (one human message) or 'messages'")
    raw = [{"role": "human", "content": config["template"]}] if "template" in config else config["messages"]
    if not isinstance(raw, list) or not raw:
        raise InvalidArgument("prompt 'messages' must be a non-empty list")
    fmt = config.get("template_format", "f-string")
    if fmt not in ("f-string", "mustache"):
        raise InvalidArgument("prompt template_format must be 'f-string' or 'mustache'")
    parts: list[Any] = []
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict):
            raise InvalidArgument(f"prompt message {i} must be an object {{role, content}}")
        role = msg.get("role")
        if role == "placeholder":
            var = msg.get("variable")
            if not isinstance(var, str) or not var.isidentifier():
                raise InvalidArgument(f"prompt message {i}: a placeholder needs 'variable' (an identifier)")
            parts.append(MessagesPlaceholder(var, optional=bool(msg.get("optional", False))))
        elif role in _ROLES and isinstance(msg.get("content"), str) and set(msg) <= {"role", "content"}:
            parts.append((_ROLES[role], msg["content"]))
        else:
            raise InvalidArgument(f"prompt message {i} must be {{role, content}} with role one of "
                                  f"{', '.join(sorted(_ROLES))}, or {{role: placeholder, variable}}")
    try:
        prompt = ChatPromptTemplate.from_messages(parts, template_format=fmt)
    except (ValueError, KeyError, IndexError) as exc:
        raise InvalidArgument(f"prompt template does not parse: {type(exc).__name__}: {exc}") from None
    declared = config.get("variables")
    if declared is not None:
        if not isinstance(declared, list) or not all(isinstance(v, str) for v in declared):
            raise InvalidArgument("prompt 'variables' must be a list of names")
        used = set(prompt.input_variables)
        missing, extra = sorted(used - set(declared)), sorted(set(declared) - used - _optional(prompt))
        if missing or extra:
            say = [f"used but not declared: {', '.join(missing)}"] if missing else []
            say += [f"declared but not used: {', '.join(extra)}"] if extra else []
            raise InvalidArgument(f"prompt variables do not match its templates ({'; '.join(say)})")
    partial = config.get("partial", {})
    if not isinstance(partial, dict) or not all(isinstance(v, str) for v in partial.values()):
        raise InvalidArgument("prompt 'partial' must map variable names to strings")
    stray = sorted(set(partial) - set(prompt.input_variables) - _optional(prompt))
    if stray:
        raise InvalidArgument(f"prompt 'partial' names variable(s) the templates do not use: {', '.join(stray)}")
    if partial:
        prompt = prompt.partial(**partial)
    return prompt


def _optional(prompt: Any) -> set[str]:
    return set(getattr(prompt, "optional_variables", []) or [])


def prompt_info(prompt: Any) -> dict[str, Any]:
    return {"variables": sorted(prompt.input_variables), "optional": sorted(_optional(prompt)),
            "messages": len(prompt.messages)}
