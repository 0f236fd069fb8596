"""A dead man's switch: a runtime whose orchestrator is gone exits by itself.

While its orchestrator lives, a runtime always hears from it: the
orchestrator keeps a ``Session`` stream open to every worker it has
connected to, probes idle workers' health every two seconds, and a call in
progress is an open RPC. When the orchestrator process dies (SIGKILL, a
crash, a host that lost it), its streams break and the probes stop. A
runtime that has had no RPC open and received none for ``grace`` seconds
therefore stops serving and exits, so no worker keeps running unowned
whatever happened to the host process; the container (``--init``) goes
with it.

``MLBRIDGE_ORPHAN_GRACE_S`` sets the grace (default 60 s; 0 turns the
switch off). It counts from the last RPC, so a worker still starting, or
one whose orchestrator is briefly busy, is not affected.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

__all__ = ["DEFAULT_GRACE_S", "Watchdog", "grace_from_env"]

log = logging.getLogger("mlbridge.runtime.watchdog")

DEFAULT_GRACE_S = 60.0


def grace_from_env() -> float:
    try:
        return max(0.0, float(os.environ.get("MLBRIDGE_ORPHAN_GRACE_S", DEFAULT_GRACE_S)))
    except ValueError:
        return DEFAULT_GRACE_S


class Watchdog(grpc.aio.ServerInterceptor):
    """Counts open RPCs and the time of the last one; :meth:`run` sets ``stop`` once the orchestrator is gone."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.open = 0
        self.last = time.monotonic()

    def _enter(self) -> None:
        self.open += 1
        self.last = time.monotonic()

    def _exit(self) -> None:
        self.open -= 1
        self.last = time.monotonic()

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary),
                                                       handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._streaming(handler.unary_stream),
                                                        handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._unary(handler.stream_unary),
                                                        handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(self._streaming(handler.stream_stream),
                                                     handler.request_deserializer, handler.response_serializer)

    def _unary(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapped(request: Any, context: Any) -> Any:
            self._enter()
            try:
                return await behavior(request, context)
            finally:
                self._exit()
        return wrapped

    def _streaming(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behavior):
            return self._unary(behavior)  # a handler that writes with context.write (Session)

        async def wrapped(request: Any, context: Any) -> AsyncIterator[Any]:
            self._enter()
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                self._exit()
        return wrapped

    async def run(self, stop: asyncio.Event) -> None:
        """Set ``stop`` after ``grace_s`` with no RPC open and none received (never when the grace is 0)."""
        if self.grace_s <= 0:
            return
        tick = min(1.0, self.grace_s / 4)
        while not stop.is_set():
            await asyncio.sleep(tick)
            idle = time.monotonic() - self.last
            if self.open == 0 and idle > self.grace_s:
                log.warning("no word from the orchestrator for %.0f s (no call, stream or health probe): "
                            "it is gone; this runtime exits", idle)
                stop.set()
