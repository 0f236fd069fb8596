"""Commands and a stateful resource type that exercise every runtime path."""

from __future__ import annotations

import os
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
    description = "Streams n ticks (inputs.delay seconds apart), reporting progress; retry-safe"
    retry_safe = True  # it changes nothing, in the worker or outside

    def execute(self, ctx: CallContext, inputs: dict[str, Any]):
        n = int(inputs.get("n", 3))
        delay = float(inputs.get("delay", 0))
        for i in range(n):
            if delay:
                ctx.sleep(delay)
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


#: Buckets of the ``mock_values`` histogram (``mock:observe``).
MOCK_BUCKETS = (1, 2, 5, 10, 20, 50, 100)
#: Set (non-empty) in a mock worker's environment, it fails the ``mock`` health check with its value as detail.
UNHEALTHY_ENV = "MLBRIDGE_MOCK_UNHEALTHY"
_OBSERVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "value": {"type": "number", "description": "observed into the mock_values histogram"},
        "count": {"type": "integer", "minimum": 0, "maximum": 10000, "description": "times (default 1)"},
        "kind": {"type": "string", "maxLength": 16, "description": "the mock_observed counter's label (default a)"},
        "tokens_in": {"type": "integer", "minimum": 0},
        "tokens_out": {"type": "integer", "minimum": 0},
    },
    "required": ["value"],
    "additionalProperties": False,
}
_SPAN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "names": {"type": "array", "items": {"type": "string"}, "description": "nested spans, outermost first"},
        "attributes": {"type": "object", "description": "set on the innermost span"},
        "fail": {"type": "boolean", "description": "raise MockFrameworkError inside the innermost span"},
    },
    "additionalProperties": False,
}


def _count(args: dict[str, Any], key: str, default: int, high: int) -> int:
    value = args.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise InvalidArgument(f"{key} must be an integer from 0 to {high}, got {value!r}")
    return value


class MockBridge(Bridge):
    name = "mock"
    framework = ""
    resource_types = (Counter, Ticker, Journal)

    def __init__(self) -> None:
        super().__init__()
        self.values = self.metrics.histogram("mock_values", "Values observed by mock:observe", buckets=MOCK_BUCKETS)
        self.observed = self.metrics.counter("mock_observed", "Observations made by mock:observe", labels=("kind",))

    def framework_version(self) -> str:
        return "0"

    def health(self) -> dict[str, tuple[bool, str]]:
        reason = os.environ.get(UNHEALTHY_ENV, "")
        if reason:
            return {"mock": (False, reason)}
        return {"mock": (True, "ok")}

    def translate_error(self, exc: BaseException) -> MLBridgeError | None:
        if isinstance(exc, MockFrameworkError):
            return MockBridgeError(f"mock framework failed: {exc}", details={"framework_error": type(exc).__name__})
        return None

    @command(description="Return the args unchanged", inline=True, retry_safe=True)
    def echo(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return args

    @command(description="Sleep for args.seconds, cancellable",
             schema={"type": "object", "properties": {"seconds": {"type": "number"}}, "required": ["seconds"]})
    def sleep(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        ctx.sleep(float(args["seconds"]))
        return {"slept": round(time.monotonic() - started, 3)}

    @command(description="mock:sleep, declared retry-safe: run again on a new worker if this one dies",
             retry_safe=True,
             schema={"type": "object", "properties": {"seconds": {"type": "number"}}, "required": ["seconds"]})
    def nap(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return self.sleep(ctx, args)

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

    @command(description="Observe args.value args.count times (default 1) into the mock_values histogram "
                         f"(buckets {', '.join(map(str, MOCK_BUCKETS))}), add args.count to the mock_observed "
                         "counter (label kind: args.kind, default a) and record args.tokens_in / tokens_out",
             schema=_OBSERVE_SCHEMA, inline=True)
    def observe(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        value = args["value"]
        count = _count(args, "count", 1, 10000)
        kind = args.get("kind", "a")
        if not isinstance(kind, str) or not 1 <= len(kind) <= 16:
            raise InvalidArgument("kind must be a string of 1 to 16 characters")
        tokens_in, tokens_out = (_count(args, k, 0, 1 << 40) for k in ("tokens_in", "tokens_out"))
        try:
            for _ in range(count):
                self.values.observe(value)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        self.observed.inc(count, kind=kind)
        ctx.record_tokens(tokens_in=tokens_in, tokens_out=tokens_out)
        return {"observed": count, "kind": kind}

    @command(description="Mark nested spans args.names (outermost first) in this call's trace; args.fail raises "
                         "inside the innermost", schema=_SPAN_SCHEMA)
    def span(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        names = list(args.get("names") or ["mock"])
        if len(names) > 200:
            raise InvalidArgument("names: at most 200 nested spans")
        attributes = args.get("attributes") or {}

        def nest(depth: int) -> None:
            with ctx.span(str(names[depth])) as span:
                if depth + 1 < len(names):
                    nest(depth + 1)
                    return
                for key, value in attributes.items():
                    span.set_attribute(key, value)
                if args.get("fail"):
                    raise MockFrameworkError("failed inside a span")

        nest(0)
        return {"spans": len(names), "traced": ctx.trace is not None}

    @command(description="The tenant and the names (never values) of the secrets this worker holds", inline=True)
    def whoami(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return {"tenant": self.tenant, "secret_names": sorted(self.secrets)}
