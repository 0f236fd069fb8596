"""Questions a running call puts to its client, and the client's answers.

A handler of a streaming call may need something only the client has: an
agent calling a *client tool* (a function that runs in the caller's
process, next to the application's own data) is the case this exists for.
:meth:`CallContext.ask` sends the client a ``request`` event on the call's
stream and waits; the client answers with the ``Answer`` RPC, which the
orchestrator routes to the worker running the call, and the dispatcher
hands it to the waiting request here. Waiting honours cancellation and the
call's deadline like any other wait.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import Any

from ..wire.errors import ClientAnswerError, InvalidArgument

__all__ = ["Pending", "Requests"]


class Pending:
    """One request waiting for its answer; threads wait on :attr:`done`, coroutines on :attr:`future`."""

    def __init__(self, kind: str, loop: asyncio.AbstractEventLoop | None) -> None:
        self.kind = kind
        self.done = threading.Event()
        self.value: Any = None
        self.error = ""
        self._loop = loop
        self.future: asyncio.Future[Any] | None = loop.create_future() if loop is not None else None

    def settle(self, value: Any, error: str) -> None:
        self.value, self.error = value, error
        self.done.set()
        fut, loop = self.future, self._loop
        if fut is not None and loop is not None:
            loop.call_soon_threadsafe(lambda: None if fut.done() else fut.set_result(None))

    def outcome(self) -> Any:
        """The answer, or the client's error raised as :class:`ClientAnswerError`."""
        if self.error:
            raise ClientAnswerError(f"the client could not answer the {self.kind} request: {self.error}",
                                    details={"client_error": self.error[:1000]})
        return self.value


class Requests:
    """The requests of one call that still wait for an answer."""

    def __init__(self) -> None:
        self._pending: dict[str, Pending] = {}
        self._lock = threading.Lock()

    def open(self, kind: str, loop: asyncio.AbstractEventLoop | None) -> tuple[str, Pending]:
        request_id = uuid.uuid4().hex
        pending = Pending(kind, loop)
        with self._lock:
            self._pending[request_id] = pending
        return request_id, pending

    def close(self, request_id: str) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def deliver(self, request_id: str, result_json: str, error: str) -> bool:
        """Hand an answer to its request; False when no request of that id waits.

        Raises:
            InvalidArgument: the answer is not valid JSON (the request keeps waiting).
        """
        with self._lock:
            pending = self._pending.get(request_id)
        if pending is None or pending.done.is_set():
            return False
        value = None
        if not error and result_json:
            try:
                value = json.loads(result_json)
            except ValueError as exc:
                raise InvalidArgument(f"the answer to request {request_id} is not valid JSON: {exc}") from None
        pending.settle(value, error)
        return True
