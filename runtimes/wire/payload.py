"""JSON payloads on the wire: parsing, encoding under a size cap, measuring.

Payload fields (args, config, inputs, results, chunks, info) are proto
``string`` fields holding JSON text, so any gRPC client reads and writes plain
JSON. Both halves parse and encode them here and nowhere else.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import InvalidArgument, InvalidResult, PayloadTooLarge

__all__ = ["MAX_DEPTH", "check_payload", "dumps", "encode_capped", "loads_lenient", "loads_strict", "nbytes",
           "parse_object"]

_SEPARATORS = (",", ":")
#: The deepest nesting of arrays and objects a request payload may have.
MAX_DEPTH = 100


class _Constant(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _no_constant(name: str) -> Any:
    raise _Constant(name)


class _OutOfRange(ValueError):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text if len(text) <= 40 else f"{text[:20]}...{text[-10:]} ({len(text)} characters)"


def _finite(text: str) -> float:
    """A JSON number with a fraction or exponent as a float; one past the float range (``1e999``) is refused."""
    value = float(text)
    if value - value:  # inf - inf is NaN, which is true
        raise _OutOfRange(text)
    return value


def _out_of_range(what: str, exc: _OutOfRange) -> InvalidArgument:
    return InvalidArgument(f"{what} holds the number {exc.text}, which is beyond the range of a 64-bit float "
                           "(about 1.8e308) and would become Infinity, which is not JSON; send it as a string")


def check_payload(text: str, what: str, *, always: bool = False) -> None:
    """Refuse a request payload that JSON does not allow or that could not come back.

    Rules: no ``NaN`` / ``Infinity`` (not JSON, RFC 8259; accepted by
    Python's parser, they would fail later on the way back), no number
    beyond the float range (``1e999``: it would become Infinity), no lone
    UTF-16 surrogate (``"\\ud800"`` without its pair: such a string cannot be
    encoded as UTF-8), no nesting deeper than :data:`MAX_DEPTH`. A payload
    that shows none of the signs (the tokens, a ``\\ud`` escape, that many
    brackets) is not parsed here at all, so the common case costs a few
    substring searches; a number beyond the float range is then refused by
    the worker's parse (:func:`parse_object`). ``always`` parses whatever the
    signs, for payloads no worker parses strictly (answers).

    Raises:
        InvalidArgument: naming the rule ``what`` broke.
    """
    if not text:
        return
    deep = text.count("[") + text.count("{") > MAX_DEPTH
    constants = "NaN" in text or "Infinity" in text
    surrogates = "\\ud" in text or "\\uD" in text
    if not (deep or constants or surrogates or always):
        return
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except _Constant as exc:
        raise InvalidArgument(f"{what} holds {exc.name}, which is not JSON (RFC 8259); send a number, a string "
                              "or null") from None
    except _OutOfRange as exc:
        raise _out_of_range(what, exc) from None
    except RecursionError:
        raise InvalidArgument(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise InvalidArgument(f"{what} is nested deeper than {MAX_DEPTH} levels")
            children = list(item.items()) if isinstance(item, dict) else [(None, v) for v in item]
            for key, child in children:
                if isinstance(key, str) and not key.isascii():
                    _encodable(key, what)
                stack.append((child, depth + 1))
        elif isinstance(item, str) and not item.isascii():
            _encodable(item, what)


def _encodable(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} holds a lone UTF-16 surrogate (an escape between \\ud800 and \\udfff "
                              "without its pair), which is not text") from None


def nbytes(text: str) -> int:
    """Size of ``text`` on the wire (UTF-8), without encoding ASCII text."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def parse_object(data: str | bytes, what: str = "args") -> dict[str, Any]:
    """Parse JSON that must hold an object; empty means ``{}``.

    Raises:
        InvalidArgument: not JSON, not an object, or holding a number beyond the float range; the message
            says which.
    """
    if not data:
        return {}
    try:
        value = json.loads(data, parse_float=_finite)
    except _OutOfRange as exc:
        raise _out_of_range(what, exc) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgument(f"{what} is nested too deeply to parse (at most {MAX_DEPTH} levels)") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def loads_strict(data: str | bytes, what: str) -> Any:
    """Parse any JSON value.

    Raises:
        InvalidArgument: not valid JSON; ``what`` names it.
    """
    try:
        return json.loads(data, parse_float=_finite)
    except _OutOfRange as exc:
        raise _out_of_range(what, exc) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgument(f"{what} is nested too deeply to parse (at most {MAX_DEPTH} levels)") from None


def loads_lenient(data: str | bytes, default: Any = None) -> Any:
    """Parse JSON from a trusted-shape source (a stored spec, a describe reply); ``default`` when absent or bad."""
    if not data:
        return default
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
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
