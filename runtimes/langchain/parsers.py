"""Output parsers of declarative chains: ``str``, ``json``, and pydantic models from a JSON schema.

A client cannot send a pydantic class, so ``{"type": "pydantic", "schema":
{...}}`` builds one from a JSON schema (objects, nested objects, arrays,
strings, numbers, integers, booleans, enums; ``required`` and
``description`` kept). The parser's format instructions are offered to the
chain's prompt as the ``format_instructions`` variable, and a reply that does
not parse is a typed ``OUTPUT_PARSER`` error (:mod:`.errors`).
"""

from __future__ import annotations

import keyword
from typing import Any, Literal

from runtimes.wire.errors import InvalidArgument

__all__ = ["PARSER_SCHEMA", "build_parser", "model_from_schema"]

PARSER_SCHEMA: dict[str, Any] = {
    "type": ["string", "object"],
    "description": "'str', 'json', or {type: pydantic, schema: <JSON schema>, name?}",
}
MAX_FIELDS = 200
_SCALARS: dict[str, type] = {"string": str, "integer": int, "number": float, "boolean": bool}


def build_parser(spec: Any) -> Any:
    """The LangChain output parser for ``spec`` (None: no parser, the chain returns the message)."""
    from langchain_core.output_parsers import (
        JsonOutputParser,
        PydanticOutputParser,
        StrOutputParser,
    )

    if spec is None:
        return None
    if spec == "str":
        return StrOutputParser()
    if spec == "json":
        return JsonOutputParser()
    if isinstance(spec, dict) and spec.get("type") == "pydantic" and set(spec) <= {"type", "schema", "name"}:
        name = spec.get("name", "Output")
        if not isinstance(name, str) or not name.isidentifier():
            raise InvalidArgument("pydantic parser 'name' must be an identifier")
        return PydanticOutputParser(pydantic_object=model_from_schema(spec.get("schema"), name))
    raise InvalidArgument("parser must be 'str', 'json' or {type: pydantic, schema: <JSON schema>, name?}")


def model_from_schema(schema: Any, name: str, *, depth: int = 0) -> type:
    """A pydantic model class for a JSON schema of type object.

    Raises:
        InvalidArgument: the schema uses something this converter does not take, named.
    """
    from pydantic import Field, create_model

    if depth > 8:
        raise InvalidArgument("pydantic parser schema nests objects more than 8 deep")
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise InvalidArgument(f"pydantic parser schema {name!r} must be a JSON schema of type object")
    props = schema.get("properties", {})
    required = schema.get("required", [])
    if not isinstance(props, dict) or not props or len(props) > MAX_FIELDS:
        raise InvalidArgument(f"pydantic parser schema {name!r} needs 1 to {MAX_FIELDS} properties")
    if not isinstance(required, list) or set(required) - set(props):
        raise InvalidArgument(f"pydantic parser schema {name!r}: 'required' must list some of its properties")
    fields: dict[str, Any] = {}
    for field_name, prop in props.items():
        if not isinstance(field_name, str) or not field_name.isidentifier() or keyword.iskeyword(field_name) \
                or field_name.startswith("_"):
            raise InvalidArgument(f"pydantic parser schema {name!r}: property {field_name!r} must be a "
                                  f"public Python identifier")
        annotation = _annotation(prop, f"{name}_{field_name}", depth)
        desc = prop.get("description") if isinstance(prop, dict) else None
        if field_name in required:
            fields[field_name] = (annotation, Field(..., description=desc))
        else:
            fields[field_name] = (annotation | None, Field(None, description=desc))
    model: type = create_model(name, **fields)
    if isinstance(schema.get("description"), str):
        model.__doc__ = schema["description"]
    return model


def _annotation(prop: Any, name: str, depth: int) -> Any:
    if not isinstance(prop, dict):
        raise InvalidArgument(f"pydantic parser schema: {name} must be a JSON schema object")
    if "enum" in prop:
        values = prop["enum"]
        if not isinstance(values, list) or not values or not all(isinstance(v, (str, int, bool)) for v in values):
            raise InvalidArgument(f"pydantic parser schema: {name} 'enum' must list strings or numbers")
        return Literal[tuple(values)]
    kind = prop.get("type")
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        items = prop.get("items")
        return list[_annotation(items, name + "_item", depth + 1)] if items is not None else list[Any]
    if kind == "object":
        if "properties" in prop:
            return model_from_schema(prop, name.title().replace("_", ""), depth=depth + 1)
        return dict[str, Any]
    raise InvalidArgument(f"pydantic parser schema: {name} has type {kind!r}; use string, integer, number, "
                          f"boolean, array, object or enum")
