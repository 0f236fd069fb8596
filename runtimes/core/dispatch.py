"""Routing and running of commands inside a runtime, free of gRPC.

The gRPC servicer (``server.py``) converts messages and hands them here.
The dispatcher resolves ``namespace:operation``, validates args, runs the
handler where it belongs (event loop or thread pool), enforces cancellation
and deadlines, and encodes the result under the reply size cap.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import json
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..wire import metadata as meta
from ..wire.caps import payload_cap
from ..wire.errors import (
    Cancelled,
    ConfigError,
    DeadlineExceeded,
    MLBridgeError,
    PermissionDenied,
    Unavailable,
    UnknownCommand,
)
from ..wire.payload import encode_capped, parse_object
from ..wire.version import __version__
from . import common
from .bridge import Bridge, CommandSpec, dist_version
from .context import CallContext
from .grants import ModelGrant
from .jsonio import check_schema
from .tracing import CallTrace

log = logging.getLogger("mlbridge.runtime")

# How long a cancelled or timed-out handler gets to stop before the runtime
# reports it as stuck (the orchestrator then replaces the whole worker).
STOP_GRACE_S = 1.0
# Chunks a thread handler may queue ahead of the client before it blocks.
STREAM_WINDOW = 256
# The only environment variables Configure may set: where the egress proxy is.
CONFIGURE_ENV = frozenset(
    {"HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy"}
)
#: The largest metrics report one reply carries (JSON, UTF-8 bytes); a larger one is dropped and counted.
MAX_METRICS_BYTES = 64 * 1024


@dataclass
class Outcome:
    """What a call ended with: a JSON result or an error."""

    result: str = ""
    error: MLBridgeError | None = None
    attachments: dict[str, bytes] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    handler_stopped: bool = True


@dataclass
class Running:
    ctx: CallContext
    stop: asyncio.Event
    done: Flag = field(default_factory=lambda: Flag())
    #: The task of a call run on the loop (:meth:`Resource.loop_execute`): cancelling it stops the call.
    task: asyncio.Task[Any] | None = None


class Flag:
    """Set once, read from any thread: whether a handler has returned (cheaper than a threading.Event)."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


class Dispatcher:
    """Serves one bridge's commands and resources in one worker."""

    def __init__(self, bridge: Bridge, *, max_message_bytes: int, threads: int = 8) -> None:
        self.bridge = bridge
        self.max_message_bytes = max_message_bytes
        self.max_reply_bytes = payload_cap(max_message_bytes)
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mlbridge-call")
        self.running: dict[str, Running] = {}
        self.common = common.CommonCommands(self)
        self.started = time.time()
        self.calls = 0
        self.errors = 0
        self.stuck = 0
        self.stuck_calls: dict[str, Running] = {}
        self.configured = False
        #: The event loop calls run on (known from the first call that left it; :meth:`call_here`).
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Metrics reports dropped for being over :data:`MAX_METRICS_BYTES`.
        self.metrics_reports_dropped = 0
        self._metrics = bridge.metrics  # read on every reply: one attribute away

    # -- lookup ---------------------------------------------------------------
    def resolve(self, command: str) -> tuple[CommandSpec, object]:
        ns, sep, op = command.partition(":")
        if not sep or not ns or not op:
            raise UnknownCommand(
                f"command {command!r} is not of the form 'namespace:operation' "
                f"(namespaces here: common, {self.bridge.name})"
            )
        owner: object
        if ns == "common":
            table, owner = self.common.commands, self.common
        elif ns == self.bridge.name:
            table, owner = self.bridge.commands, self.bridge
        else:
            raise UnknownCommand(
                f"unknown namespace {ns!r} in {command!r}; namespaces here: common, {self.bridge.name}",
                details={"namespaces": ["common", self.bridge.name]},
            )
        spec = table.get(op)
        if spec is None:
            known = ", ".join(f"{ns}:{n}" for n in sorted(table))
            raise UnknownCommand(f"unknown command {command!r}; {ns} commands: {known}")
        return spec, owner

    def is_inline(self, command: str) -> bool:
        """Whether a command runs inline on the event loop (cheap and never blocking)."""
        try:
            spec, _ = self.resolve(command)
        except MLBridgeError:
            return True  # the error reply is immediate
        return spec.inline and not spec.streaming and not spec.is_async

    # -- facts ----------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        b = self.bridge
        commands = [
            {"name": f"common:{s.name}", "description": s.description, "schema": s.schema, "streaming": s.streaming,
             "retry_safe": s.retry_safe}
            for s in self.common.commands.values()
        ] + [
            {"name": f"{b.name}:{s.name}", "description": s.description, "schema": s.schema, "streaming": s.streaming,
             "retry_safe": s.retry_safe}
            for s in b.commands.values()
        ]
        types = [
            {
                "name": t.type_name,
                "description": t.description,
                "schema": t.config_schema,
                "streaming": inspect.isgeneratorfunction(t.execute) or inspect.isasyncgenfunction(t.execute),
                "retry_safe": t.retry_safe,
                "keeps_state": t.keeps_state(),
            }
            for t in b.types.values()
        ]
        pkgs = {p: v for p in (b.framework, *b.packages) if p and (v := dist_version(p))}
        pkgs.update({p: v for p in ("grpcio", "protobuf") if (v := dist_version(p))})
        return {
            "bridge": b.name,
            "framework": b.framework,
            "framework_version": b.framework_version(),
            "commands": commands,
            "resource_types": types,
            "packages": pkgs,
            "runtime_version": __version__,
            "python_version": sys.version.split()[0],
            "required_secrets": list(b.required_secrets),
        }

    def stats(self) -> dict[str, Any]:
        return {
            "bridge": self.bridge.name,
            "calls": self.calls,
            "errors": self.errors,
            "in_flight": len(self.running),
            "stuck_handlers": self.stuck,
            "resources": len(self.bridge.resources),
            "rss_bytes": common.rss_bytes(),
            "uptime_s": round(time.time() - self.started, 3),
            "tenant": self.bridge.tenant,
            "metrics_dropped": self.bridge.metrics.dropped,
            "bridge_stats": self.bridge.stats(),
        }

    def preload(self, models: list[ModelGrant]) -> list[dict[str, Any]]:
        """Have the bridge load ``models`` while this worker is a tenant-neutral spare.

        Raises:
            PermissionDenied: the worker already belongs to a tenant.
        """
        if self.configured:
            raise PermissionDenied("models are preloaded only by a tenant-neutral spare; this worker has a tenant")
        return self.bridge.preload(models)

    def configure(self, tenant: str, secrets: dict[str, str], env: dict[str, str] | None = None,
                  models: Iterable[ModelGrant] = (), export_dir: str = "") -> None:
        """Hand the worker its tenant, secrets and proxy environment (see :data:`CONFIGURE_ENV`).

        ``env`` is set in this process's ``os.environ`` before the bridge's
        ``configure`` hook runs, so clients the hook creates see the proxy.

        Raises:
            ConfigError: the worker belongs to another tenant, or ``env``
                names a variable outside :data:`CONFIGURE_ENV` or holds a
                value with a NUL or line break.
        """
        if self.configured and tenant != self.bridge.tenant:
            raise ConfigError("this worker is already claimed by another tenant")
        for key, value in (env or {}).items():
            if key not in CONFIGURE_ENV:
                raise ConfigError(f"configure may not set environment variable {key!r}; "
                                  f"only {', '.join(sorted(CONFIGURE_ENV))}")
            if any(c in value for c in "\0\r\n"):
                raise ConfigError(f"environment variable {key} holds a NUL or line break")
        os.environ.update(env or {})
        self.bridge.models = {m.name: m for m in models}
        granted = {m.hash for m in self.bridge.models.values()}
        # A model loaded while a spare stays only if the tenant may load it.
        self.bridge.preloaded = {h: v for h, v in self.bridge.preloaded.items() if h in granted}
        self.bridge.export_dir = Path(export_dir) if export_dir else None
        self.bridge.configure(tenant, secrets)
        self.configured = True

    def cancel(self, call_id: str) -> bool:
        """Ask a call to stop. True while it runs, including a handler that ignored an earlier cancel."""
        run = self.running.get(call_id)
        if run is None:
            stuck = self.stuck_calls.get(call_id)
            if stuck is None or stuck.done.is_set():
                self.stuck_calls.pop(call_id, None)
                return False
            return True
        run.ctx.cancel()
        run.stop.set()
        if run.task is not None:
            run.task.cancel()
        return True

    # -- running --------------------------------------------------------------
    def make_context(self, *, call_id: str, command: str, emit: Callable[[str, Any], None] | None = None,
                     traceparent: str = "", **fields: Any) -> CallContext:
        """The context of one call; ``traceparent`` (W3C) naming a sampled trace makes it a traced call."""
        return CallContext(call_id=call_id, command=command, emit=emit, secrets=self.bridge.secrets,
                           max_reply_bytes=self.max_reply_bytes,
                           trace=CallTrace.from_traceparent(traceparent) if traceparent else None, **fields)

    async def run(self, ctx: CallContext, args_json: str) -> Outcome:
        """Run one call to completion (unary, or the body of a stream)."""
        self.calls += 1
        out = Outcome()
        run = Running(ctx, asyncio.Event())
        if ctx.call_id:
            self.running[ctx.call_id] = run
        try:
            spec, owner = self.resolve(ctx.command)
            args = parse_object(args_json, f"args of {ctx.command}")
            check_schema(args, spec.schema, ctx.command)
            value = await self._invoke(spec, owner, ctx, args, run)
            out.result = encode_capped(value, self.max_reply_bytes, f"result of {ctx.command}")
        except BaseException as exc:  # noqa: BLE001 - everything becomes a typed error
            if isinstance(exc, asyncio.CancelledError):
                exc = Cancelled(f"call {ctx.call_id} was cancelled")
            self.errors += 1
            out.error = self.bridge.to_error(exc)
            out.handler_stopped = run.done.is_set() or not isinstance(exc, (Cancelled, DeadlineExceeded))
            if not out.handler_stopped:
                self.stuck += 1
                if ctx.call_id:  # still running in its thread: cancel() keeps reporting it
                    self.stuck_calls[ctx.call_id] = run
        finally:
            self.running.pop(ctx.call_id, None)
        if ctx.changed:
            self._attach_states(ctx, out)
        if ctx.trace is not None:
            self._attach_spans(ctx, out)
        if ctx.tokens_in or ctx.tokens_out:
            ctx.metadata[meta.USAGE] = json.dumps({"tokens_in": ctx.tokens_in, "tokens_out": ctx.tokens_out})
        if self._metrics.pending:
            self._attach_metrics(ctx)
        out.attachments = ctx.reply_attachments
        out.metadata = ctx.metadata
        return out

    def _attach_spans(self, ctx: CallContext, out: Outcome) -> None:
        """The handler span and the bridge's spans of a traced call, for the orchestrator to export."""
        assert ctx.trace is not None
        ctx.metadata[meta.SPANS] = ctx.trace.finish(out.error.code if out.error is not None else "")

    def _attach_metrics(self, ctx: CallContext) -> None:
        """What the bridge's metrics counted since the last reply that carried a report."""
        metrics = self._metrics
        report = metrics.take()
        if report is None:
            return
        text = json.dumps(report, separators=(",", ":"))  # ASCII: characters are bytes
        if len(text) > MAX_METRICS_BYTES:
            self.metrics_reports_dropped += 1
            lost = len(report["series"])
            metrics.count_dropped(lost)
            log.warning("a metrics report of bridge %s was %d bytes, over the %d-byte cap: its %d series were "
                        "dropped", self.bridge.name, len(text), MAX_METRICS_BYTES, lost)
            return
        ctx.metadata[meta.METRICS] = text

    def _attach_states(self, ctx: CallContext, out: Outcome) -> None:
        """Put the snapshots of the resources this call changed in the reply, for the orchestrator to keep.

        Also after a failed call: the worker's resources are as the call left
        them, and a re-created resource must come back the same.
        """
        states: dict[str, Any] = {}
        for rid, res in ctx.changed.items():
            try:
                state = res.snapshot()
            except Exception as exc:  # noqa: BLE001 - a broken hook must not cost the reply
                log.warning("snapshot of resource %s failed: %s", rid, exc)
                continue
            if state is not None:
                states[rid] = state
        if not states:
            return
        try:
            ctx.metadata[meta.RESOURCE_STATES] = encode_capped(states, self.max_reply_bytes // 2,
                                                               "the state of the resources this call changed")
        except MLBridgeError as err:
            # The worker holds a state the orchestrator could not keep: say so rather than lose it silently.
            log.warning("%s", err.message)
            if out.error is None:
                out.error, out.result = err, ""

    def answer(self, call_id: str, request_id: str, result_json: str, error: str) -> bool:
        """The client's answer to a request of a running call; False when no such call or request waits.

        Raises:
            InvalidArgument: the answer is not valid JSON.
        """
        run = self.running.get(call_id)
        return run is not None and run.ctx.requests.deliver(request_id, result_json, error)

    async def _invoke(self, spec: CommandSpec, owner: object, ctx: CallContext, args: dict[str, Any],
                      run: Running) -> Any:
        if spec.inline and not spec.streaming and not spec.is_async:
            try:
                return spec.func(owner, ctx, args)
            finally:
                run.done.set()
        fast = self._loop_execute(spec, ctx)
        if fast is not None:
            return await self._run_loop_execute(fast, ctx, args, run)
        if spec.is_async:
            work: asyncio.Future[Any] = asyncio.ensure_future(self._run_async(spec, owner, ctx, args, run))
        else:
            self.loop = loop = asyncio.get_running_loop()
            work = loop.run_in_executor(self.executor, self._run_sync, spec, owner, ctx, args, run, loop)
        return await self._await_bounded(work, ctx, run)

    def _loop_execute(self, spec: CommandSpec, ctx: CallContext) -> Callable[..., Any] | None:
        """A unary execute_resource whose resource offers :meth:`Resource.loop_execute`: its coroutine function."""
        if spec.name != "execute_resource" or ctx.streaming or spec is not self.common.commands.get(spec.name):
            return None
        try:
            res = self.bridge.resources.get(ctx.resource_id)
        except MLBridgeError:
            return None  # the handler reports it
        if res.keeps_state():
            return None  # its snapshot is taken by the handler's path
        return res.loop_execute(ctx)

    async def _run_loop_execute(self, fast: Callable[..., Any], ctx: CallContext, args: dict[str, Any],
                                run: Running) -> Any:
        """Run it as one task, stopped by cancelling it (cancel, or a timer at the deadline): the hot path of
        a batching resource, without :meth:`_await_bounded`'s extra task and wait."""
        loop = asyncio.get_running_loop()
        run.task = task = loop.create_task(fast(ctx, args))
        left = ctx.remaining()
        timer = loop.call_later(max(left, 0.0), task.cancel) if left is not None else None
        try:
            return await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # this call's own task was cancelled (the stream went away)
            ctx.cancel()
            if run.stop.is_set():
                raise Cancelled(f"call {ctx.call_id} was cancelled") from None
            raise DeadlineExceeded(f"call {ctx.call_id} ran past its deadline") from None
        finally:
            if timer is not None:
                timer.cancel()
            if not task.done():
                task.cancel()
            run.done.set()

    async def _await_bounded(self, work: asyncio.Future[Any], ctx: CallContext, run: Running) -> Any:
        stopper = asyncio.ensure_future(run.stop.wait())
        timeout = ctx.remaining()
        try:
            done, _ = await asyncio.wait(
                {work, stopper}, timeout=None if timeout is None else max(timeout, 0),
                return_when=asyncio.FIRST_COMPLETED,
            )
        except asyncio.CancelledError:
            ctx.cancel()
            work.cancel()
            raise
        finally:
            stopper.cancel()
        if work in done:
            return work.result()
        # Cancelled or past the deadline: ask the handler to stop, give it a grace.
        ctx.cancel()
        if isinstance(work, asyncio.Task):
            work.cancel()  # async handlers stop by task cancellation
        # A thread handler's future must not be cancelled before the grace: a
        # cancelled future would end the wait at once and report it stuck.
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(work), STOP_GRACE_S)
        work.cancel()
        if run.stop.is_set():
            raise Cancelled(f"call {ctx.call_id} was cancelled")
        raise DeadlineExceeded(f"call {ctx.call_id} ran past its deadline")

    def _run_sync(self, spec: CommandSpec, owner: object, ctx: CallContext, args: dict[str, Any],
                  run: Running, loop: asyncio.AbstractEventLoop) -> Any:
        try:
            return _call_sync(spec, owner, ctx, args, loop)
        finally:
            run.done.set()

    def call_here(self, ctx: CallContext, args: dict[str, Any]) -> Any:
        """Run ``ctx.command`` with ``args`` to its end in the calling thread (not the event loop's): a
        plain handler runs here, an ``async`` one on the event loop while this thread waits. For
        ``common:profile``, whose profiler sees this thread.

        Raises:
            UnknownCommand / InvalidArgument: as a call would; and whatever the handler raised.
        """
        spec, owner = self.resolve(ctx.command)
        check_schema(args, spec.schema, ctx.command)
        loop = self.loop
        if spec.is_async:
            if loop is None:
                raise Unavailable("the runtime's event loop is not known yet; call again")
            run = Running(ctx, asyncio.Event())
            return _wait_on_loop(self._run_async(spec, owner, ctx, args, run), loop, ctx)
        return _call_sync(spec, owner, ctx, args, loop)

    async def _run_async(self, spec: CommandSpec, owner: object, ctx: CallContext, args: dict[str, Any],
                         run: Running) -> Any:
        try:
            value = spec.func(owner, ctx, args)
            if inspect.isasyncgen(value):
                return await _drain_async(value, ctx)
            value = await value
            if inspect.isgenerator(value):  # an async hook that returned a sync generator
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self.executor, _drain, value, ctx)
            return value
        finally:
            run.done.set()

    async def stream(self, ctx_fields: dict[str, Any], args_json: str) -> AsyncIterator[tuple[str, Any]]:
        """Run a call, yielding ("chunk", value), ("progress", (s, t, m)), then ("final", Outcome)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        window = threading.BoundedSemaphore(STREAM_WINDOW)
        loop_thread = threading.get_ident()

        def emit(kind: str, payload: Any) -> None:
            if threading.get_ident() == loop_thread:
                queue.put_nowait((kind, payload))
                return
            while not window.acquire(timeout=0.05):  # backpressure for thread handlers
                ctx.check()
            loop.call_soon_threadsafe(queue.put_nowait, (kind, payload, window))  # type: ignore[arg-type]

        ctx = self.make_context(emit=emit, **ctx_fields)
        task = asyncio.ensure_future(self.run(ctx, args_json))
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                yield _release(getter.result())
            while not queue.empty():
                yield _release(queue.get_nowait())
            yield ("final", task.result())
        finally:
            if not task.done():  # the client went away: stop the handler
                ctx.cancel()
                task.cancel()


def _call_sync(spec: CommandSpec, owner: object, ctx: CallContext, args: dict[str, Any],
               loop: asyncio.AbstractEventLoop | None) -> Any:
    """Run a plain handler in this thread to its end (a generator's chunks streamed or collected)."""
    value = spec.func(owner, ctx, args)
    if inspect.iscoroutine(value) or inspect.isasyncgen(value):
        # An async hook behind a sync handler (``async def execute`` under
        # common:execute_resource): it runs on the event loop, this thread waits.
        if loop is None:
            raise Unavailable("the runtime's event loop is not known yet; call again")
        value = _wait_on_loop(value if inspect.iscoroutine(value) else _drain_async(value, ctx), loop, ctx)
    if inspect.isgenerator(value):
        return _drain(value, ctx)
    return value


def _release(item: tuple[Any, ...]) -> tuple[str, Any]:
    if len(item) == 3:
        item[2].release()
    return item[0], item[1]


async def _drain_async(agen: Any, ctx: CallContext) -> Any:
    """Run an async generator handler: stream its chunks or collect them."""
    chunks: list[Any] = []
    try:
        async for chunk in agen:
            ctx.check()
            (ctx.emit if ctx.streaming else chunks.append)(chunk)
    finally:
        await agen.aclose()
    return None if ctx.streaming else {"chunks": chunks}


def _wait_on_loop(coro: Any, loop: asyncio.AbstractEventLoop, ctx: CallContext) -> Any:
    """Run ``coro`` on the event loop from a handler thread and wait, honouring cancellation and the deadline."""
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    while True:
        try:
            return future.result(timeout=0.05)
        except concurrent.futures.TimeoutError:
            try:
                ctx.check()
            except BaseException:
                future.cancel()
                raise


def _drain(gen: Any, ctx: CallContext) -> Any:
    """Run a sync generator handler: stream its chunks or collect them."""
    chunks: list[Any] = []
    try:
        while True:
            chunk = next(gen)
            ctx.check()
            if ctx.streaming:
                ctx.emit(chunk)
            else:
                chunks.append(chunk)
    except StopIteration as stop:
        if stop.value is not None:
            return stop.value
    finally:
        gen.close()
    return None if ctx.streaming else {"chunks": chunks}
