"""Commands and a stateful resource type that exercise every runtime path."""

from __future__ import annotations

import time
from typing import Any

from runtimes.core import Bridge, CallContext, InvalidArgument, MLBridgeError, Resource, command
from runtimes.wire.errors import FrameworkError


class MockFrameworkError(RuntimeError):
    """Stands in for an exception type a real framework would raise."""


class MockBridgeError(FrameworkError):
    """What ``translate_error`` turns a MockFrameworkError into."""

    code = "FRAMEWORK_ERROR"


class Counter(Resource):
    """A counter that keeps its value between calls in its worker."""

    type_name = "counter"
    description = "Integer counter; execute adds inputs.add (default 1) and returns the value"
    config_schema = {"type": "object", "properties": {"start": {"type": "integer"}}}

    def create(self, ctx: CallContext) -> dict[str, Any]:
        self.value = int(self.config.get("start", 0))
        return {"value": self.value}

    def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> dict[str, Any]:
        add = inputs.get("add", 1)
        if not isinstance(add, int) or isinstance(add, bool):
            raise InvalidArgument("inputs.add must be an integer")
        self.value += add
        return {"value": self.value}

    def info(self) -> dict[str, Any]:
        return {"value": getattr(self, "value", None)}


class Ticker(Resource):
    """A streaming resource: execute yields ``inputs.n`` ticks with progress."""

    type_name = "ticker"
    description = "Streams n ticks, reporting progress"

    def execute(self, ctx: CallContext, inputs: dict[str, Any]):
        n = int(inputs.get("n", 3))
        for i in range(n):
            ctx.progress(i + 1, n, f"tick {i + 1}")
            yield {"tick": i + 1, "label": self.config.get("label", "")}
        return {"ticks": n}


class Journal(Resource):
    """Entries the orchestrator keeps: they survive the worker (snapshot / restore)."""

    type_name = "journal"
    description = "Appends inputs.entry and returns every entry so far; kept by the orchestrator"

    def create(self, ctx: CallContext) -> None:
        self.entries: list[Any] = []

    def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> dict[str, Any]:
        if "entry" in inputs:
            self.entries.append(inputs["entry"])
        return {"entries": list(self.entries)}

    def snapshot(self) -> Any:
        return {"entries": self.entries}

    def restore(self, ctx: CallContext, state: Any) -> None:
        self.entries = list(state["entries"])

    def info(self) -> dict[str, Any]:
        return {"entries": len(getattr(self, "entries", []))}


class MockBridge(Bridge):
    name = "mock"
    framework = ""
    resource_types = (Counter, Ticker, Journal)

    def framework_version(self) -> str:
        return "0"

    def translate_error(self, exc: BaseException) -> MLBridgeError | None:
        if isinstance(exc, MockFrameworkError):
            return MockBridgeError(f"mock framework failed: {exc}", details={"framework_error": type(exc).__name__})
        return None

    @command(description="Return the args unchanged", inline=True)
    def echo(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return args

    @command(description="Sleep for args.seconds, cancellable",
             schema={"type": "object", "properties": {"seconds": {"type": "number"}}, "required": ["seconds"]})
    def sleep(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        ctx.sleep(float(args["seconds"]))
        return {"slept": round(time.monotonic() - started, 3)}

    @command(description="Busy-loop for args.seconds ignoring cancellation (tests worker replacement)")
    def spin(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        end = time.monotonic() + float(args.get("seconds", 10))
        n = 0
        while time.monotonic() < end:
            n += 1
        return {"loops": n}

    @command(description="Raise a framework error with args.message")
    def fail(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        raise MockFrameworkError(args.get("message", "boom"))

    @command(description="Raise an untranslated Python error")
    def crash(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        raise ValueError(args.get("message", "unexpected"))

    @command(description="Stream args.n chunks with progress events",
             schema={"type": "object", "properties": {"n": {"type": "integer"}, "delay": {"type": "number"}}})
    def stream(self, ctx: CallContext, args: dict[str, Any]):
        n = int(args.get("n", 3))
        delay = float(args.get("delay", 0))
        for i in range(n):
            ctx.progress(i + 1, n, f"chunk {i + 1} of {n}")
            yield {"index": i, "token": f"t{i}"}
            if delay:
                ctx.sleep(delay)
        return {"count": n}

    @command(description="Ask the client for args.questions answers (streaming only), one after another",
             schema={"type": "object", "properties": {"questions": {"type": "array"}}})
    def ask(self, ctx: CallContext, args: dict[str, Any]):
        answers = []
        for q in args.get("questions", ["?"]):
            answers.append(ctx.ask("question", {"question": q}, timeout=30))
            yield {"answered": q}
        return {"answers": answers}

    @command(description="Ask the client from an async handler (streaming only)")
    async def ask_async(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return {"answer": await ctx.ask_async("question", {"question": args.get("question", "?")}, timeout=30)}

    @command(description="Append args.entry to journal args.journal from a command (kept via save_state)",
             schema={"type": "object", "properties": {"journal": {"type": "string"}}, "required": ["journal"]})
    def note(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        journal = self.resources.get_as(args["journal"], Journal, "journal")
        journal.entries.append(args.get("entry"))
        ctx.save_state(journal)
        return {"entries": len(journal.entries)}

    @command(description="Return a string of args.size bytes (tests reply caps)")
    def blob(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return {"data": "x" * int(args.get("size", 0))}

    @command(description="Return something that is not JSON-serialisable")
    def unserialisable(self, ctx: CallContext, args: dict[str, Any]) -> Any:
        return {"value": object()}

    @command(description="Echo attachments back with their sizes")
    def attach(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        ctx.reply_attachments.update({k: v[::-1] for k, v in ctx.attachments.items()})
        return {"sizes": {k: len(v) for k, v in ctx.attachments.items()}}

    @command(description="Hold args.mb megabytes of memory, then return")
    def allocate(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        block = bytearray(int(args.get("mb", 1)) * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        return {"allocated_mb": len(block) // (1024 * 1024)}

    @command(description="The tenant and the names (never values) of the secrets this worker holds", inline=True)
    def whoami(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return {"tenant": self.tenant, "secret_names": sorted(self.secrets)}
