"""One request at the API edge: who asks for what, how big, how long it may take."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from runtimes.wire.errors import MLBridgeError
from runtimes.wire.payload import nbytes

from ..audit import code_digest
from ..service import Caller

__all__ = ["Outcome", "Request", "code_hash", "payload_size"]


@dataclass
class Request:
    """What the edge's steps look at, built by the gateway from one public call.

    Attributes:
        caller: the authenticated caller.
        method: the public RPC (``"Call"``, ``"CreateResource"``), for the audit log.
        action: what the policy is asked to allow (``"call"``, ``"create_resource"``).
        bridge: the bridge the call goes to, resolved (for resource calls: the resource's).
        command: the namespaced command, for Call and CallStream.
        resource_type: the resource's type, for resource calls.
        resource_id: the resource's id, for resource calls.
        payload_bytes: arguments plus attachments, in bytes.
        code_sha256: SHA-256 of submitted source code (``code`` in the args), never the code.
        call_id: the client's call id.
        timeout_s: the client's deadline in seconds; the deadline step lowers it to the policy's.
        rule: the policy rule that allowed the request (set by the authorisation step).
        started: monotonic time the call was let through (set by the audit step).
        observed: what observability keeps of the request while it runs (its start time).
    """

    caller: Caller
    method: str
    action: str
    bridge: str | None = None
    command: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    payload_bytes: int = 0
    code_sha256: str | None = None
    call_id: str | None = None
    timeout_s: float | None = None
    rule: str | None = None
    started: float = 0.0
    observed: Any = None


@dataclass
class Outcome:
    """How the operation behind a request ended: a result, an mlbridge error, or neither (cancelled)."""

    ok: bool = False
    result: Any = None
    error: MLBridgeError | None = None


def payload_size(text: str, attachments: dict[str, bytes] | None = None) -> int:
    """Bytes of a JSON payload plus its attachments."""
    return nbytes(text) + sum(len(v) for v in (attachments or {}).values())


def code_hash(args_json: str) -> str | None:
    """SHA-256 of submitted source code (``code`` in the args), never the code itself."""
    if '"code"' not in args_json:
        return None
    try:
        code = json.loads(args_json).get("code")
    except (ValueError, AttributeError):
        return None
    return code_digest(code) if isinstance(code, str) else None
