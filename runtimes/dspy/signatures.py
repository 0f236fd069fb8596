"""DSPy signatures from JSON: a ``"question -> answer"`` string or field lists.

Accepted specs (the ``signature`` resource's config, or inline in a program):

- ``"question -> answer"`` (a string containing ``->``), or
  ``{"signature": "question -> answer", "instructions": "..."}``;
- ``{"inputs": [...], "outputs": [...], "instructions": "..."}`` where each
  field is a name or ``{"name": ..., "description": ..., "type": ...}`` and
  ``type`` is one of :data:`FIELD_TYPES` (default ``str``).

DSPy parses string signatures with ``ast`` and resolves type names without
evaluating them, so no user code runs here; failures become InvalidArgument.
"""

from __future__ import annotations

import keyword
from typing import Any

from runtimes.wire.errors import InvalidArgument

FIELD_TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "list[str]": list[str],
    "list[int]": list[int],
    "list[float]": list[float],
    "dict": dict[str, Any],
}

SIGNATURE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "signature": {"type": "string", "description": "'inputs -> outputs', e.g. 'question -> answer'"},
        "inputs": {"type": "array", "description": "names or {name, description, type}"},
        "outputs": {"type": "array", "description": "names or {name, description, type}"},
        "instructions": {"type": "string"},
    },
    "additionalProperties": False,
}


def is_inline(spec: Any) -> bool:
    """Whether a program's ``signature`` value is inline (else a resource id)."""
    return isinstance(spec, dict) or (isinstance(spec, str) and "->" in spec)


def build_signature(spec: Any) -> Any:
    """Build a ``dspy.Signature`` class from a spec; InvalidArgument when malformed."""
    import dspy  # type: ignore[import-untyped]

    if isinstance(spec, str):
        spec = {"signature": spec}
    if not isinstance(spec, dict):
        raise InvalidArgument("a signature is a 'inputs -> outputs' string or an object")
    unknown = sorted(set(spec) - set(SIGNATURE_SCHEMA["properties"]))
    if unknown:
        raise InvalidArgument(f"signature: unexpected field(s): {', '.join(unknown)}")
    instructions = spec.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidArgument("signature: 'instructions' must be a string")
    text = spec.get("signature")
    if text is not None:
        if "inputs" in spec or "outputs" in spec:
            raise InvalidArgument("signature: give either 'signature' or 'inputs'/'outputs', not both")
        if not isinstance(text, str):
            raise InvalidArgument("signature: 'signature' must be a string")
        try:
            sig = dspy.Signature(text, instructions)
        except (ValueError, TypeError, SyntaxError) as exc:
            raise InvalidArgument(f"invalid signature {text!r}: {type(exc).__name__}: {exc}") from None
    else:
        fields: dict[str, tuple[Any, Any]] = {}
        for role, make in (("inputs", dspy.InputField), ("outputs", dspy.OutputField)):
            items = spec.get(role)
            if not isinstance(items, list):
                raise InvalidArgument(f"signature: {role!r} must be a list of field names or objects")
            for item in items:
                name, annotation, desc = _field(item, role)
                if name in fields:
                    raise InvalidArgument(f"signature: field {name!r} appears twice")
                fields[name] = (annotation, make(desc=desc) if desc else make())
        try:
            sig = dspy.make_signature(fields, instructions)
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(f"invalid signature fields: {type(exc).__name__}: {exc}") from None
    if not sig.input_fields or not sig.output_fields:
        raise InvalidArgument(
            f"invalid signature {sig.signature!r}: it needs at least one input and one output field"
        )
    return sig


def _field(item: Any, role: str) -> tuple[str, Any, str]:
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict):
        raise InvalidArgument(f"signature: each of {role} is a name or an object with 'name'")
    unknown = sorted(set(item) - {"name", "description", "type"})
    if unknown:
        raise InvalidArgument(f"signature: field object has unexpected key(s): {', '.join(unknown)}")
    name = item.get("name")
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
        raise InvalidArgument(f"signature: field name {name!r} must be a Python identifier not starting with '_'")
    type_name = item.get("type", "str")
    if type_name not in FIELD_TYPES:
        raise InvalidArgument(
            f"signature: field {name!r} has type {type_name!r}; types: {', '.join(FIELD_TYPES)}"
        )
    desc = item.get("description", "")
    if not isinstance(desc, str):
        raise InvalidArgument(f"signature: description of {name!r} must be a string")
    return name, FIELD_TYPES[type_name], desc


def signature_info(sig: Any) -> dict[str, Any]:
    """Names and instructions of a signature, JSON-safe."""
    return {
        "signature": sig.signature,
        "inputs": list(sig.input_fields),
        "outputs": list(sig.output_fields),
        "instructions": sig.instructions,
    }
