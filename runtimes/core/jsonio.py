"""Light JSON-schema checks of handler args and resource configs (parsing and encoding: :mod:`runtimes.wire.payload`)."""

from __future__ import annotations

from typing import Any

from ..wire.errors import InvalidArgument

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


def check_schema(args: dict[str, Any], schema: dict[str, Any], what: str) -> None:
    """Check ``required`` keys and top-level property types of a JSON schema."""
    if not schema:
        return
    missing = [k for k in schema.get("required", ()) if k not in args]
    if missing:
        raise InvalidArgument(f"{what}: missing required field(s): {', '.join(missing)}")
    props: dict[str, Any] = schema.get("properties", {})
    for key, value in args.items():
        spec = props.get(key)
        if spec is None:
            if schema.get("additionalProperties") is False:
                raise InvalidArgument(f"{what}: unexpected field {key!r}")
            continue
        want = spec.get("type")
        if want is None:
            continue
        names = [want] if isinstance(want, str) else list(want)
        ok = any(
            isinstance(value, _TYPES.get(n, (object,)))
            and not (n in ("integer", "number") and isinstance(value, bool))
            for n in names
        )
        if not ok:
            raise InvalidArgument(
                f"{what}: field {key!r} must be {' or '.join(names)}, got {type(value).__name__}"
            )
