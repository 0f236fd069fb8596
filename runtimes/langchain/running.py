"""Running a Runnable for one mlbridge call: config, cancellation, invoke / batch / stream.

Handlers run in the dispatcher's threads; LangChain's async API is what
stops promptly (cancelling the task closes a provider's HTTP stream), so each
call drives ``ainvoke`` / ``abatch`` / ``astream_events`` on a private event
loop in its own thread, polling the call's cancellation and deadline while it
waits. Sync pieces (tools, fake models, user lambdas) run on the bridge's
shared thread pool, as LangChain schedules them. A callback handler also
checks the call at every model, token and tool boundary, and the call's
:class:`CallContext` is reachable from inside the run (client tools ask the
client through it) via :func:`current_call`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

from runtimes.core import CallContext
from runtimes.core.telemetry import Counter
from runtimes.wire.errors import InvalidArgument

from .events import EventMapper

__all__ = ["CONFIG_SCHEMA", "batch", "current_call", "invoke", "run_config", "stream"]

T = TypeVar("T")
POLL_S = 0.05
STOP_GRACE_S = 0.5
MAX_RECURSION = 1000

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "thread_id (agents with memory), tags, recursion_limit, metadata, run_name",
}
_CONFIG_KEYS = {"thread_id", "tags", "recursion_limit", "metadata", "run_name"}

_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("mlbridge_langchain_call",
                                                                              default=None)


def current_call() -> CallContext:
    """The call the running Runnable serves.

    Raises:
        InvalidArgument: nothing runs on behalf of a call here.
    """
    ctx = _current.get()
    if ctx is None:
        raise InvalidArgument("no mlbridge call is running here; client tools run only inside a call")
    return ctx


def run_config(raw: Any, ctx: CallContext, llm_calls: Counter | None = None) -> dict[str, Any]:
    """A RunnableConfig from a call's ``config`` object, with the call's guard attached.

    With ``llm_calls`` the guard also counts the run's model calls there (label ``provider``) and
    records the tokens their usage metadata reports on ``ctx`` (:meth:`CallContext.record_tokens`).

    Raises:
        InvalidArgument: an unknown key or a value of the wrong type, named.
    """
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise InvalidArgument("'config' must be an object: {thread_id, tags, recursion_limit, metadata, run_name}")
    unknown = sorted(set(raw) - _CONFIG_KEYS)
    if unknown:
        raise InvalidArgument(f"config: unexpected key(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(_CONFIG_KEYS))}")
    config: dict[str, Any] = {"callbacks": [_guard(ctx, llm_calls)]}
    if "thread_id" in raw:
        if not isinstance(raw["thread_id"], str) or not raw["thread_id"]:
            raise InvalidArgument("config.thread_id must be a non-empty string")
        config["configurable"] = {"thread_id": raw["thread_id"]}
    if "tags" in raw:
        if not isinstance(raw["tags"], list) or not all(isinstance(t, str) for t in raw["tags"]):
            raise InvalidArgument("config.tags must be a list of strings")
        config["tags"] = list(raw["tags"])
    if "recursion_limit" in raw:
        limit = raw["recursion_limit"]
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_RECURSION:
            raise InvalidArgument(f"config.recursion_limit must be an integer from 1 to {MAX_RECURSION}")
        config["recursion_limit"] = limit
    if "metadata" in raw:
        if not isinstance(raw["metadata"], dict):
            raise InvalidArgument("config.metadata must be an object")
        config["metadata"] = dict(raw["metadata"])
    if "run_name" in raw:
        if not isinstance(raw["run_name"], str):
            raise InvalidArgument("config.run_name must be a string")
        config["run_name"] = raw["run_name"]
    return config


def _provider(kwargs: dict[str, Any]) -> str:
    metadata = kwargs.get("metadata")
    return str((metadata or {}).get("ls_provider") or "unknown") if isinstance(metadata, dict) else "unknown"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_of(response: Any) -> tuple[int, int]:
    """(input, output) tokens a model's result reports: its messages' ``usage_metadata``, else the
    provider's ``llm_output.token_usage``; (0, 0) when it reports none."""
    tokens_in = tokens_out = 0
    for generations in getattr(response, "generations", None) or []:
        for gen in generations:
            usage = getattr(getattr(gen, "message", None), "usage_metadata", None)
            if isinstance(usage, dict):
                tokens_in += _count(usage.get("input_tokens"))
                tokens_out += _count(usage.get("output_tokens"))
    if not (tokens_in or tokens_out):
        output = getattr(response, "llm_output", None)
        usage = output.get("token_usage") if isinstance(output, dict) else None
        if isinstance(usage, dict):
            tokens_in = _count(usage.get("prompt_tokens"))
            tokens_out = _count(usage.get("completion_tokens"))
    return tokens_in, tokens_out


def _guard(ctx: CallContext, llm_calls: Counter | None = None) -> Any:
    from langchain_core.callbacks import BaseCallbackHandler

    class Guard(BaseCallbackHandler):
        """Stops the run at the next boundary once the call is cancelled or past its deadline;
        counts model calls and their tokens when the run is metered."""

        raise_error = True
        run_inline = True

        def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
            ctx.check()
            if llm_calls is not None:
                llm_calls.inc(provider=_provider(kwargs))

        def on_llm_start(self, *args: Any, **kwargs: Any) -> None:
            ctx.check()
            if llm_calls is not None:
                llm_calls.inc(provider=_provider(kwargs))

        def on_llm_end(self, response: Any, **kwargs: Any) -> None:
            if llm_calls is not None:
                tokens_in, tokens_out = usage_of(response)
                if tokens_in or tokens_out:
                    ctx.record_tokens(tokens_in, tokens_out)

        def on_llm_new_token(self, *args: Any, **kwargs: Any) -> None:
            ctx.check()

        def on_tool_start(self, *args: Any, **kwargs: Any) -> None:
            ctx.check()

        def on_chain_start(self, *args: Any, **kwargs: Any) -> None:
            ctx.check()

    return Guard()


class _Borrowed(ThreadPoolExecutor):
    """The bridge's pool lent to one call's loop: closing the loop must not shut the pool down."""

    def __init__(self, pool: Executor) -> None:
        super().__init__(max_workers=1)  # starts no thread; every submit goes to ``pool``
        self._pool = pool

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


_local = threading.local()


class _Driver:
    """This thread's event loop, run for one call while the call may go on.

    A handler thread keeps its loop from call to call (making one costs more
    than a small chain's whole run); a call never leaves tasks behind on it.
    """

    def __init__(self, ctx: CallContext, executor: Executor) -> None:
        self.ctx = ctx
        loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
        if loop is None or loop.is_closed() or getattr(_local, "pool", None) is not executor:
            if loop is not None and not loop.is_closed():
                loop.close()
            loop = asyncio.new_event_loop()
            loop.set_default_executor(_Borrowed(executor))
            _local.loop, _local.pool = loop, executor
        self.loop = loop
        self.token = _current.set(ctx)  # tasks made from here on see the call

    def _stop_requested(self) -> bool:
        left = self.ctx.remaining()
        return self.ctx.cancelled or (left is not None and left <= 0)

    def wait(self, aw: Awaitable[T]) -> T:
        """Run ``aw`` to its end, or cancel it when the call stops (then raise Cancelled / DeadlineExceeded)."""

        async def guarded() -> T:
            task = asyncio.ensure_future(aw)
            try:
                while True:
                    done, _ = await asyncio.wait({task}, timeout=POLL_S)
                    if done:
                        return task.result()
                    if self._stop_requested():
                        task.cancel()
                        await asyncio.wait({task}, timeout=STOP_GRACE_S)
                        self.ctx.check()
            finally:
                task.cancel()

        return self.loop.run_until_complete(guarded())

    def iterate(self, agen: AsyncIterator[Any], feed: Callable[[Any], list[T]]) -> Iterator[T]:
        """What ``feed`` makes of each item of ``agen``, handed out as soon as there is some.

        The loop runs until ``feed`` returns something (or the call must
        stop); while the consumer takes the items, the run waits, so a slow
        client slows the run down rather than piling items up.
        """
        loop, ready = self.loop, collections.deque[T]()

        async def pump() -> None:
            async for item in agen:
                out = feed(item)
                if out:
                    ready.extend(out)
                    loop.stop()
                    await asyncio.sleep(0)  # run_forever returns before this resumes

        def watch() -> None:
            if self._stop_requested():
                loop.stop()
            else:
                timer[0] = loop.call_later(POLL_S, watch)

        def finished(_: object) -> None:
            loop.stop()

        task = loop.create_task(pump())
        task.add_done_callback(finished)
        timer = [loop.call_later(POLL_S, watch)]
        try:
            while True:
                loop.run_forever()
                while ready:
                    yield ready.popleft()
                if task.done():
                    task.result()
                    return
                if self._stop_requested():
                    break
        finally:
            # Nothing may stop the loop from here on: run_until_complete below must finish its wait.
            timer[0].cancel()
            task.remove_done_callback(finished)
            if not task.done():
                task.cancel()
                loop.run_until_complete(asyncio.wait({task}, timeout=STOP_GRACE_S))
        self.ctx.check()

    def close(self) -> None:
        try:
            pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.wait(pending, timeout=STOP_GRACE_S))
        finally:
            try:
                _current.reset(self.token)
            except ValueError:  # closed from another context (a generator finalised elsewhere)
                pass


def invoke(runnable: Any, value: Any, config: dict[str, Any], ctx: CallContext, executor: Executor) -> Any:
    """``runnable.ainvoke(value, config)``, stopped when the call is."""
    driver = _Driver(ctx, executor)
    try:
        return driver.wait(runnable.ainvoke(value, config))
    finally:
        driver.close()


def batch(runnable: Any, values: list[Any], config: dict[str, Any], ctx: CallContext, executor: Executor,
          *, max_concurrency: int | None = None, return_exceptions: bool = False) -> list[Any]:
    """``runnable.abatch``: at most ``max_concurrency`` inputs at a time; results in input order."""
    if max_concurrency is not None:
        config = {**config, "max_concurrency": max_concurrency}
    driver = _Driver(ctx, executor)
    try:
        return list(driver.wait(runnable.abatch(values, config, return_exceptions=return_exceptions)))
    finally:
        driver.close()


def stream(runnable: Any, value: Any, config: dict[str, Any], ctx: CallContext,
           executor: Executor) -> Generator[dict[str, Any], None, Any]:
    """Yield the run's chunks (:mod:`.events`) as they come; return the root run's output."""
    mapper = EventMapper(ctx)
    driver = _Driver(ctx, executor)
    events = runnable.astream_events(value, config, version="v2")
    try:
        yield from driver.iterate(events, mapper.feed)
        return mapper.output
    finally:
        with contextlib.suppress(BaseException):  # closing after a failure must not hide it
            driver.loop.run_until_complete(asyncio.wait_for(events.aclose(), STOP_GRACE_S))
        driver.close()
