"""JSON payloads on the wire: parsing, encoding under a size cap, measuring.

Payload fields (args, config, inputs, results, chunks, info) are proto
``string`` fields holding JSON text, so any gRPC client reads and writes plain
JSON. Both halves parse and encode them here and nowhere else.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import InvalidArgument, InvalidResult, PayloadTooLarge

__all__ = ["dumps", "encode_capped", "loads_lenient", "loads_strict", "nbytes", "parse_object"]

_SEPARATORS = (",", ":")


def nbytes(text: str) -> int:
    """Size of ``text`` on the wire (UTF-8), without encoding ASCII text."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def parse_object(data: str | bytes, what: str = "args") -> dict[str, Any]:
    """Parse JSON that must hold an object; empty means ``{}``.

    Raises:
        InvalidArgument: not JSON, or not an object; the message says which.
    """
    if not data:
        return {}
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def loads_strict(data: str | bytes, what: str) -> Any:
    """Parse any JSON value.

    Raises:
        InvalidArgument: not valid JSON; ``what`` names it.
    """
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None


def loads_lenient(data: str | bytes, default: Any = None) -> Any:
    """Parse JSON from a trusted-shape source (a stored spec, a describe reply); ``default`` when absent or bad."""
    if not data:
        return default
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return default


def dumps(value: Any) -> str:
    """Compact JSON text (UTF-8 kept, no NaN or Infinity).

    Raises:
        InvalidArgument: ``value`` is not JSON-serialisable.
    """
    try:
        return json.dumps(value, separators=_SEPARATORS, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"not JSON-serialisable: {type(exc).__name__}: {exc}") from None


def encode_capped(value: Any, limit: int, what: str) -> str:
    """A handler's value as JSON text of at most ``limit`` UTF-8 bytes.

    Raises:
        InvalidResult: the value is not JSON-serialisable.
        PayloadTooLarge: the text is over ``limit``; details carry size and limit.
    """
    try:
        text = json.dumps(value, separators=_SEPARATORS, ensure_ascii=False, allow_nan=False)
        # UTF-8 size; encoding also refuses lone surrogates, which no message may carry.
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise InvalidResult(f"{what} is not JSON-serialisable: {type(exc).__name__}: {exc}") from None
    if size > limit:
        raise PayloadTooLarge(f"{what} is {size} bytes, over the {limit}-byte cap",
                              details={"size": size, "limit": limit})
    return text
