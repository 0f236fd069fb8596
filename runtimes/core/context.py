"""Per-call context handed to every handler: cancellation, deadline, progress, client requests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..wire.errors import Cancelled, DeadlineExceeded, InvalidArgument
from .asks import Requests
from .tracing import NO_SPAN, CallTrace, SpanScope

if TYPE_CHECKING:
    from .store import Stored

Emit = Callable[[str, Any], None]


class CallContext:
    """What a handler knows about the call it serves.

    Handlers run in a worker thread (or on the event loop for ``async`` and
    ``inline`` handlers). Long handlers should call :meth:`check` or
    :meth:`sleep` now and then so that cancellation and deadlines take effect
    promptly; the orchestrator kills a worker whose handler ignores them.
    """

    __slots__ = (
        "call_id",
        "command",
        "tenant",
        "resource_id",
        "resource_type",
        "attachments",
        "reply_attachments",
        "metadata",
        "deadline",
        "secrets",
        "max_reply_bytes",
        "resource_state_json",
        "requests",
        "changed",
        "trace",
        "tokens_in",
        "tokens_out",
        "_cancelled",
        "_emit",
    )

    def __init__(
        self,
        *,
        call_id: str,
        command: str,
        tenant: str = "",
        resource_id: str = "",
        resource_type: str = "",
        attachments: Mapping[str, bytes] | None = None,
        deadline_unix_ms: int = 0,
        secrets: Mapping[str, str] | None = None,
        emit: Emit | None = None,
        max_reply_bytes: int | None = None,
        resource_state_json: str = "",
        trace: CallTrace | None = None,
    ) -> None:
        self.call_id = call_id
        self.command = command
        self.tenant = tenant
        self.resource_id = resource_id
        self.resource_type = resource_type
        self.attachments: Mapping[str, bytes] = attachments or {}
        self.reply_attachments: dict[str, bytes] = {}
        self.metadata: dict[str, str] = {}
        # Convert the absolute wall-clock deadline to the monotonic clock once.
        self.deadline: float | None = (
            time.monotonic() + (deadline_unix_ms / 1000.0 - time.time()) if deadline_unix_ms else None
        )
        self.secrets: Mapping[str, str] = secrets or {}
        #: The largest JSON result (or chunk) the reply can carry, in UTF-8 bytes; None: no cap known.
        self.max_reply_bytes = max_reply_bytes
        #: create_resource only: the state the orchestrator kept of the resource being re-created.
        self.resource_state_json = resource_state_json
        #: Requests of this call waiting for the client's answer (:meth:`ask`).
        self.requests = Requests()
        #: Resources whose state changed in this call (:meth:`save_state`), by id.
        self.changed: dict[str, Stored] = {}
        #: The trace this call's spans join (None: not traced; :meth:`span` then does nothing).
        self.trace = trace
        #: Tokens this call used, as the bridge reported them (:meth:`record_tokens`).
        self.tokens_in = 0
        self.tokens_out = 0
        self._cancelled = threading.Event()
        self._emit = emit

    # -- cancellation and deadlines -------------------------------------
    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    def remaining(self) -> float | None:
        """Seconds until the deadline, or None when the call has none."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        """Raise Cancelled or DeadlineExceeded if the call should stop now."""
        if self._cancelled.is_set():
            raise Cancelled(f"call {self.call_id} was cancelled")
        left = self.remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded(f"call {self.call_id} ran past its deadline")

    def sleep(self, seconds: float) -> None:
        """Sleep that wakes early (and raises) on cancellation or deadline."""
        end = time.monotonic() + seconds
        while True:
            self.check()
            left = end - time.monotonic()
            if left <= 0:
                return
            dl = self.remaining()
            wait = min(left, 0.05 if dl is None else max(min(dl, 0.05), 0.001))
            self._cancelled.wait(wait)

    # -- streaming --------------------------------------------------------
    def progress(self, step: int, total: int = 0, message: str = "") -> None:
        """Report progress; streamed to the client on streaming calls, dropped otherwise."""
        if self._emit is not None:
            self._emit("progress", (int(step), int(total), str(message)))

    def emit(self, chunk: Any) -> None:
        """Send one chunk (any JSON value) to a streaming client."""
        if self._emit is not None:
            self._emit("chunk", chunk)

    @property
    def streaming(self) -> bool:
        return self._emit is not None

    # -- the client ---------------------------------------------------------
    def _send_request(self, kind: str, data: Any, loop: asyncio.AbstractEventLoop | None) -> tuple[str, Any]:
        if self._emit is None:
            raise InvalidArgument(f"a {kind} request needs a streaming call (CallStream or ExecuteResourceStream): "
                                  f"only a stream can carry it to the client")
        request_id, pending = self.requests.open(kind, loop)
        self._emit("request", {"request_id": request_id, "kind": kind, "data": data})
        return request_id, pending

    def ask(self, kind: str, data: Any, timeout: float | None = None) -> Any:
        """Ask the client (a thread handler): send a ``request`` event, wait for its answer.

        Args:
            kind: what is asked, e.g. ``"tool_call"``.
            data: what the client needs to answer (JSON).
            timeout: seconds to wait at most; the call's deadline applies anyway.

        Raises:
            InvalidArgument: not a streaming call.
            ClientAnswerError: the client answered with an error.
            DeadlineExceeded: no answer in ``timeout`` or before the deadline.
            Cancelled: the call was cancelled meanwhile.
        """
        request_id, pending = self._send_request(kind, data, None)
        end = None if timeout is None else time.monotonic() + timeout
        try:
            while not pending.done.wait(0.02):
                self.check()
                if end is not None and time.monotonic() >= end:
                    raise DeadlineExceeded(f"the client did not answer the {kind} request within {timeout:g}s")
            return pending.outcome()
        finally:
            self.requests.close(request_id)

    async def ask_async(self, kind: str, data: Any, timeout: float | None = None) -> Any:
        """:meth:`ask` for ``async`` handlers: awaits the answer on the event loop."""
        request_id, pending = self._send_request(kind, data, asyncio.get_running_loop())
        try:
            assert pending.future is not None
            try:
                await asyncio.wait_for(asyncio.shield(pending.future), timeout)
            except TimeoutError:
                raise DeadlineExceeded(f"the client did not answer the {kind} request within {timeout:g}s") from None
            return pending.outcome()
        finally:
            self.requests.close(request_id)

    # -- state the orchestrator keeps ------------------------------------------
    def save_state(self, resource: Stored) -> None:
        """Have the orchestrator store ``resource.snapshot()`` after this call, before its reply goes out."""
        self.changed[resource.resource_id] = resource

    # -- telemetry ---------------------------------------------------------------
    def record_tokens(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        """Add to the tokens this call used (prompt and generated), for the tenant's usage accounting.

        Raises:
            ValueError: a count that is not an int >= 0.
        """
        for what, n in (("tokens_in", tokens_in), ("tokens_out", tokens_out)):
            if n.__class__ is not int or n < 0:
                raise ValueError(f"record_tokens: {what} must be an int >= 0, got {n!r}")
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out

    def span(self, name: str, /, **attributes: Any) -> SpanScope:
        """``with ctx.span("tokenize", n=3) as s:`` marks a span of this call's trace (nested in the span
        open around it, else in the handler's). An exception inside sets ``error.type`` and propagates.

        Attribute values are str, int, float or bool (others become their ``str``; strings are cut to
        256 characters; at most 16). On a call that is not traced this does nothing, and costs next to
        nothing.
        """
        trace = self.trace
        if trace is None:
            return NO_SPAN
        return trace.span(name, attributes)

    def nested(self, command: str, *, resource_id: str = "", resource_type: str = "") -> CallContext:
        """A context for running ``command`` inside this call (``common:profile``): it shares this call's
        cancellation, deadline, trace, tenant, secrets and attachments; it does not stream."""
        inner = CallContext(call_id=self.call_id, command=command, tenant=self.tenant, resource_id=resource_id,
                            resource_type=resource_type, attachments=self.attachments, secrets=self.secrets,
                            max_reply_bytes=self.max_reply_bytes, trace=self.trace)
        inner.deadline = self.deadline
        inner._cancelled = self._cancelled
        return inner

    def absorb(self, inner: CallContext) -> None:
        """Take what a :meth:`nested` call left for the reply: metadata, attachments, changed states, tokens."""
        self.metadata.update(inner.metadata)
        self.reply_attachments.update(inner.reply_attachments)
        self.changed.update(inner.changed)
        self.tokens_in += inner.tokens_in
        self.tokens_out += inner.tokens_out
