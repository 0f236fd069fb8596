"""The edge: requests pass through its steps on the way in and out of the domain service.

Composition, the way gRPC interceptors and HTTP middleware work: the domain
service is called by an operation the gateway hands in, and knows nothing of
the steps around it. A step that refuses a request stops it; every step that
was entered is exited (in reverse order) whatever happens, so a slot taken is
always given back and an outcome always recorded. For a stream, the steps
exit when its final event arrives and before that event is passed on, so the
audit record is written before the client has its answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from runtimes.wire.errors import MLBridgeError

from ..service import Event
from .request import Outcome, Request
from .steps import Step

__all__ = ["Edge"]

T = TypeVar("T")


class Edge:
    """Runs requests through ``steps`` (in order in, reverse order out)."""

    def __init__(self, steps: Sequence[Step] = ()) -> None:
        self.steps = tuple(steps)

    async def run(self, req: Request, op: Callable[[Request], Awaitable[T]]) -> T:
        """``op(req)`` behind the steps."""
        if not self.steps:
            return await op(req)
        entered = await self._enter(req)
        outcome = Outcome()
        try:
            result = await op(req)
            outcome.result, outcome.ok = result, True
            return result
        except MLBridgeError as err:
            outcome.error = err
            raise
        finally:
            await self._exit(entered, req, outcome)

    async def stream(self, req: Request, op: Callable[[Request], AsyncIterator[Event]]) -> AsyncIterator[Event]:
        """The events of ``op(req)`` behind the steps; they exit before the final event is passed on."""
        if not self.steps:
            async for ev in op(req):
                yield ev
            return
        entered = await self._enter(req)
        outcome = Outcome()
        try:
            async for kind, payload in op(req):
                if kind == "final":
                    outcome.result, outcome.ok = payload, True
                    done, entered = entered, []
                    await self._exit(done, req, outcome)
                yield kind, payload
        except MLBridgeError as err:
            outcome.error = err
            raise
        finally:
            if entered:  # an error, or the client went away
                await self._exit(entered, req, outcome)

    def check(self, req: Request) -> None:
        """A read-only call through each step's check."""
        for step in self.steps:
            step.check(req)

    async def _enter(self, req: Request) -> list[Step]:
        entered: list[Step] = []
        try:
            for step in self.steps:
                await step.enter(req)
                entered.append(step)
        except MLBridgeError as err:
            await self._exit(entered, req, Outcome(error=err))
            raise
        except BaseException:
            await self._exit(entered, req, Outcome())
            raise
        return entered

    @staticmethod
    async def _exit(entered: list[Step], req: Request, outcome: Outcome) -> None:
        for step in reversed(entered):
            await step.exit(req, outcome)


