"""Registering the public service with request decoding that never fails loudly.

gRPC's generated registration decodes each request with ``FromString``; a
message that does not parse (a string field that is not UTF-8, truncated
bytes) then ends the call with gRPC's own error and a traceback in the log,
before any of mlbridge's code runs. Here a message that does not parse
becomes an :class:`Unparseable` value, which the servicer answers with
``INVALID_ARGUMENT`` naming the field at fault.

Such requests are logged in summary, never one line each (a flood of
garbage must not flood the log): the first one at once, then at most one
WARNING line per :data:`REFUSED_LOG_EVERY_S` saying how many were refused
since the last line (:class:`RefusalLog`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor, message
from google.protobuf.message import DecodeError

__all__ = ["REFUSED_LOG_EVERY_S", "RefusalLog", "Unparseable", "add_service"]

log = logging.getLogger("mlbridge.api")

#: The shortest time between two log lines about requests that did not parse.
REFUSED_LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class Unparseable:
    """A request message that did not parse; ``reason`` says why, for the client."""

    reason: str


class RefusalLog:
    """Counts requests that did not parse and logs them at most once per ``every_s`` seconds.

    The first refusal after a quiet window is logged at once; later ones are
    counted, and the count is logged when the window ends (by a timer on the
    running event loop, else with the next refusal after it).
    """

    def __init__(self, every_s: float = REFUSED_LOG_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self.total = 0
        self._pending = 0
        self._latest = ""
        self._last_line: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._lock = threading.Lock()

    def note(self, method: str, reason: str) -> None:
        """One request to ``method`` refused because ``reason`` (mlbridge's words, never the client's bytes)."""
        with self._lock:
            self.total += 1
            self._pending += 1
            self._latest = f"{method}: {reason}"
            now = self.clock()
            if self._last_line is None or now - self._last_line >= self.every_s:
                self._flush_locked(now)
            elif self._timer is None:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    return
                self._timer = loop.call_later(self._last_line + self.every_s - now, self.flush)

    def flush(self) -> None:
        """Log what was counted since the last line, if anything."""
        with self._lock:
            self._timer = None
            self._flush_locked(self.clock())

    def _flush_locked(self, now: float) -> None:
        if not self._pending:
            return
        if self._last_line is None:
            log.warning("refused a request that did not parse (%s); more are counted, one line per %g s",
                        self._latest, self.every_s)
        else:
            log.warning("refused %d request(s) that did not parse in the last %.0f s (%d in all; latest %s)",
                        self._pending, now - self._last_line, self.total, self._latest)
        self._pending = 0
        self._last_line = now


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _bad_string_field(desc: Any, data: bytes) -> str | None:
    """The name of a top-level string field of ``desc`` whose bytes in ``data`` are not UTF-8, if any."""
    strings: dict[int, str] = {f.number: f.name for f in desc.fields
                               if f.type == descriptor.FieldDescriptor.TYPE_STRING}
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                size, pos = _varint(data, pos)
                chunk, pos = data[pos:pos + size], pos + size
                if number in strings:
                    try:
                        chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        return strings[number]
            else:
                return None
    except ValueError:
        return None
    return None


def _unparseable(name: str, data: bytes, desc: Any) -> Unparseable:
    field = _bad_string_field(desc, data)
    if field is None:
        return Unparseable(f"the request is not a valid {name} message")
    if field.endswith("_json"):
        return Unparseable(f"{field} is not valid JSON: it is not UTF-8 text")
    return Unparseable(f"{field} of {name} is not UTF-8 text")


def _decoder(cls: type[message.Message], method: str, refused: RefusalLog) -> Callable[[bytes], Any]:
    name = cls.DESCRIPTOR.full_name

    def decode(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError, or whatever else the parser raises on garbage
            bad = _unparseable(name, data, cls.DESCRIPTOR) if isinstance(exc, DecodeError) else \
                Unparseable(f"the request is not a valid {name} message")
            refused.note(method, bad.reason)
            return bad

    return decode


def _guarded(method: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
    """``method``, answering a request that did not parse with INVALID_ARGUMENT (for servicers that do not
    know :class:`Unparseable`, such as grpc's own health servicer)."""
    if streaming:
        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, Unparseable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
            async for item in method(request, context):
                yield item

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Unparseable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        return await method(request, context)

    return unary


def add_service(servicer: Any, server: grpc.aio.Server, service: descriptor.ServiceDescriptor,
                module: Any, refused: RefusalLog | None = None, *, guard: bool = False) -> RefusalLog:
    """Register ``servicer``'s methods for ``service``, whose messages are classes of ``module``.

    With ``guard``, the servicer never sees a request that did not parse (it is answered
    INVALID_ARGUMENT first). Returns the :class:`RefusalLog` counting requests that did not parse
    (``refused``, or a new one).
    """
    refused = refused or RefusalLog()
    handlers = {}
    for method in service.methods:
        request = getattr(module, method.input_type.name)
        reply = getattr(module, method.output_type.name)
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        behaviour = getattr(servicer, method.name, None)
        if behaviour is None:  # a method this servicer does not implement: gRPC answers UNIMPLEMENTED
            continue
        if guard:
            behaviour = _guarded(behaviour, method.server_streaming)
        handlers[method.name] = make(behaviour,
                                     request_deserializer=_decoder(request, f"/{service.full_name}/{method.name}",
                                                                   refused),
                                     response_serializer=reply.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
    return refused
