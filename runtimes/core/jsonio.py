"""JSON in and out of handlers: parsing, light schema checks, capped encoding."""

from __future__ import annotations

import json
from typing import Any

from .errors import InvalidArgument, InvalidResult, PayloadTooLarge

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


def parse_object(data: bytes, what: str = "args") -> dict[str, Any]:
    """Parse JSON bytes that must hold an object; empty means ``{}``."""
    if not data:
        return {}
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


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


def encode(value: Any, limit: int, what: str) -> bytes:
    """Encode a handler's value as JSON bytes no larger than ``limit``."""
    try:
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidResult(f"{what} is not JSON-serialisable: {type(exc).__name__}: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLarge(
            f"{what} is {len(data)} bytes, over the {limit}-byte cap",
            details={"size": len(data), "limit": limit},
        )
    return data
