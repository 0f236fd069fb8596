"""What the langchain bridge's resources share with it, and the base of every runnable resource.

The resources (:mod:`.resources`, :mod:`.memory`, :mod:`.agents`) reach
their bridge through :class:`LangChainBase`, and the bridge (:mod:`.bridge`)
adds the commands on top, so the modules import in one direction only.

:class:`RunnableResource` is why ExecuteResource, ExecuteResourceStream and
the ``langchain:invoke`` / ``batch`` / ``stream`` commands behave alike on
every runnable type: one input shape (``{"input", "config"}``, or
``{"inputs", "max_concurrency"}`` for a batch), one output shape
(``{"output": ...}``), and one hook (:meth:`RunnableResource.turn`) where an
agent takes its memory thread's lock, rolls a failed turn back and has the
orchestrator keep the new state.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from runtimes.core import Bridge, CallContext, InvalidArgument, Resource

from . import running
from .jsonify import to_json

__all__ = ["LangChainBase", "LCResource", "RunnableResource"]

# Threads LangChain may use for sync pieces (tools, fake models, user lambdas) across all calls.
RUN_THREADS = 32
MAX_BATCH = 1000
_RUN_KEYS = {"input", "config"}
_BATCH_KEYS = {"inputs", "config", "max_concurrency", "return_exceptions"}


class LangChainBase(Bridge):
    """Per-worker state: the run thread pool and the counters ``langchain:stats`` reports."""

    def __init__(self) -> None:
        super().__init__()
        self.executor = ThreadPoolExecutor(max_workers=RUN_THREADS, thread_name_prefix="langchain-run")
        self._counts: dict[str, int] = {"invocations": 0, "batches": 0, "streams": 0, "agent_turns": 0}
        self._lock = threading.Lock()
        self.llm_calls = self.metrics.counter("llm_calls", "Chat model and LLM calls", labels=("provider",))

    def count(self, name: str) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class LCResource(Resource):
    bridge: LangChainBase


class RunnableResource(LCResource):
    """A resource that is a LangChain Runnable (``self.runnable``, set by ``create``)."""

    runnable: Any = None

    # -- hooks for subclasses ----------------------------------------------------------
    def prepare_input(self, value: Any) -> Any:
        """The Runnable's input for a call's ``input`` (an agent wraps text as a message)."""
        return value

    def result(self, output: Any, turn: Any) -> dict[str, Any]:
        """A call's reply from the run's output; ``turn`` is what :meth:`turn` yielded."""
        return {"output": to_json(output)}

    @contextlib.contextmanager
    def turn(self, ctx: CallContext, config: dict[str, Any]) -> Iterator[Any]:
        """Around one run (invoke or stream): nothing here; agents hold their memory thread."""
        yield None

    # -- running ---------------------------------------------------------------------------
    def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> Generator[dict[str, Any], None, Any]:
        if "inputs" in inputs:
            return self.run_batch(ctx, inputs)
        unknown = sorted(set(inputs) - _RUN_KEYS)
        if unknown or "input" not in inputs:
            raise InvalidArgument(f"{self.type_name} {self.resource_id!r} takes {{input, config}} (or "
                                  f"{{inputs: [...], max_concurrency}} for a batch)"
                                  + (f"; unexpected: {', '.join(unknown)}" if unknown else "; 'input' is missing"))
        if ctx.streaming:
            return (yield from self.run_stream(ctx, inputs["input"], inputs.get("config")))
        return self.run(ctx, inputs["input"], inputs.get("config"))

    def run(self, ctx: CallContext, value: Any, raw_config: Any) -> dict[str, Any]:
        config = running.run_config(raw_config, ctx, self.bridge.llm_calls)
        self.bridge.count("invocations")
        with self.turn(ctx, config) as turn:
            out = running.invoke(self.runnable, self.prepare_input(value), config, ctx, self.bridge.executor)
            return self.result(out, turn)

    def run_stream(self, ctx: CallContext, value: Any, raw_config: Any) -> Generator[dict[str, Any], None, Any]:
        config = running.run_config(raw_config, ctx, self.bridge.llm_calls)
        self.bridge.count("streams")
        with self.turn(ctx, config) as turn:
            out = yield from running.stream(self.runnable, self.prepare_input(value), config, ctx,
                                            self.bridge.executor)
            return self.result(out, turn)

    def run_batch(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(args) - _BATCH_KEYS)
        if unknown:
            raise InvalidArgument(f"a batch takes {', '.join(sorted(_BATCH_KEYS))}; unexpected: {', '.join(unknown)}")
        values, limit = args["inputs"], args.get("max_concurrency")
        if not isinstance(values, list) or len(values) > MAX_BATCH:
            raise InvalidArgument(f"'inputs' must be a list of at most {MAX_BATCH} inputs")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise InvalidArgument("max_concurrency must be a positive integer")
        keep_going = bool(args.get("return_exceptions", False))
        self.check_batchable()
        config = running.run_config(args.get("config"), ctx, self.bridge.llm_calls)
        self.bridge.count("batches")
        outs = running.batch(self.runnable, [self.prepare_input(v) for v in values], config, ctx,
                             self.bridge.executor, max_concurrency=limit, return_exceptions=keep_going)
        replies = []
        for out in outs:
            if isinstance(out, BaseException):
                err = self.bridge.to_error(out)
                replies.append({"error": {"code": err.code, "message": err.message, "details": err.details}})
            else:
                replies.append(self.result(out, None)["output"])
        return {"outputs": replies}

    def check_batchable(self) -> None:
        """Raise InvalidArgument when this resource cannot run inputs side by side."""
