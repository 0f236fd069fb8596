"""The spans a runtime sends back with a traced call's reply (reply metadata ``mlbridge-spans``).

The orchestrator named the trace (``CallRequest.traceparent``) and knows the
call's command, bridge and resource type, so of the handler span only what
the runtime alone knows travels, on the first line::

    <handler span id> <start ns> <end ns> <spans dropped> <error code, or ->

When the bridge marked spans of its own (``ctx.span``), a second line holds
them as a JSON list of ``{"name", "span_id", "parent_span_id", "start_ns",
"end_ns", "attributes", "error"}``; span ids are 16 hex digits, and a
parent is the handler span or another of the list. Both halves use these
two functions; the orchestrator still checks everything it decodes.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["decode", "encode"]


def encode(span_id: str, start_ns: int, end_ns: int, dropped: int, error: str, spans: list[dict[str, Any]]) -> str:
    """The metadata text for a handler span and the bridge's ``spans``."""
    head = f"{span_id} {start_ns} {end_ns} {dropped} {error or '-'}"
    return f"{head}\n{json.dumps(spans, separators=(',', ':'))}" if spans else head


def decode(text: str) -> tuple[dict[str, Any], list[Any]] | None:
    """``(handler, spans)`` from :func:`encode`'s text; None when the first line is malformed.

    ``handler`` has ``span_id`` (int), ``start_ns``, ``end_ns``, ``dropped`` and ``error``;
    ``spans`` is the decoded JSON list as sent (unchecked), [] when absent or not a list.
    """
    head, _, rest = text.partition("\n")
    fields = head.split(" ")
    if len(fields) != 5:
        return None
    try:
        span_id = int(fields[0], 16)
        start, end, dropped = int(fields[1]), int(fields[2]), int(fields[3])
    except ValueError:
        return None
    if len(fields[0]) != 16 or not 0 < span_id < 2**64 or not 0 < start <= end or dropped < 0:
        return None
    spans: list[Any] = []
    if rest:
        try:
            decoded = json.loads(rest)
        except ValueError:
            decoded = None
        spans = decoded if isinstance(decoded, list) else []
    error = fields[4] if fields[4] != "-" else ""
    return {"span_id": span_id, "start_ns": start, "end_ns": end, "dropped": dropped, "error": error[:64]}, spans
