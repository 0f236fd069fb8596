"""Compiling, loading and calling user code, and turning its failures into errors.

For every bridge that runs code its users send (``custom:run``, code-defined
LangChain chains and tools).

User source is compiled under a pseudo file name, executed in a fresh module
(registered in ``sys.modules`` while it is in use, so dataclasses, enums and
pickling work), and every exception it raises becomes a typed error whose
traceback shows the user's own frames only.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any, ClassVar, cast

from ..wire.errors import (
    FrameworkError,
    InvalidArgument,
    InvalidResult,
    MLBridgeError,
    PayloadTooLarge,
)
from .context import CallContext

__all__ = [
    "BadEntryPoint",
    "Progress",
    "Reasoned",
    "UserCodeError",
    "UserResultInvalid",
    "UserResultTooLarge",
    "UserSyntaxError",
    "UserModule",
    "accepts_progress",
    "call_user",
    "check_json",
    "user_error",
]

class Reasoned:
    """Mixin: puts the class's ``reason`` first in ``details``."""

    reason: ClassVar[str] = ""

    def __init__(self, message: str = "", *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details={"reason": self.reason, **(details or {})})  # type: ignore[call-arg]


class UserSyntaxError(Reasoned, InvalidArgument):
    """User source does not compile; details carry ``line``, ``offset``, ``text``."""

    reason = "SYNTAX_ERROR"


class BadEntryPoint(Reasoned, InvalidArgument):
    """The source defines no callable ``main`` (or one with an unusable signature)."""

    reason = "NO_MAIN"


class UserCodeError(Reasoned, FrameworkError):
    """User code raised; details carry ``exception_type``, ``traceback`` (user frames only)."""

    reason = "USER_EXCEPTION"


class UserResultInvalid(Reasoned, InvalidResult):
    """User code returned (or yielded) a value that is not JSON-serialisable."""

    reason = "RESULT_NOT_JSON"


class UserResultTooLarge(Reasoned, PayloadTooLarge):
    """User code returned (or yielded) more JSON than the result cap allows."""

    reason = "RESULT_TOO_LARGE"


TRACEBACK_MAX_CHARS = 8 * 1024
MESSAGE_MAX_CHARS = 2 * 1024
OUTPUT_TAIL_BYTES = 4 * 1024

_serial = itertools.count(1)


class Progress:
    """The ``progress`` callable handed to user code.

    ``progress(step, total=0, message="")`` reports progress (streamed to the
    client on streaming calls) and raises ``Cancelled`` / ``DeadlineExceeded``
    when the call should stop. ``progress.should_stop()`` asks without raising;
    ``progress.sleep(s)`` sleeps but wakes (and raises) on cancellation.
    """

    __slots__ = ("_ctx",)

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx

    def __call__(self, step: int, total: int = 0, message: str = "") -> None:
        self._ctx.check()
        self._ctx.progress(step, total, message)

    def should_stop(self) -> bool:
        """True once the call is cancelled or past its deadline."""
        left = self._ctx.remaining()
        return self._ctx.cancelled or (left is not None and left <= 0)

    def check(self) -> None:
        """Raise if the call should stop."""
        self._ctx.check()

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``; raises early on cancellation or deadline."""
        self._ctx.sleep(float(seconds))


class UserModule:
    """One piece of user source, compiled and executed in its own module."""

    def __init__(self, source: str, *, label: str, extra_globals: dict[str, Any] | None = None) -> None:
        n = next(_serial)
        self.filename = f"<{label}>"
        self.module_name = f"mlbridge_user_{n}"
        self.lines = source.splitlines()
        try:
            code = compile(source, self.filename, "exec", dont_inherit=True)
        except SyntaxError as exc:
            raise UserSyntaxError(
                f"{label}: {exc.msg} (line {exc.lineno}, offset {exc.offset})",
                details={
                    "line": exc.lineno,
                    "offset": exc.offset,
                    "text": (exc.text or "").rstrip("\n")[:MESSAGE_MAX_CHARS],
                    "error": exc.msg,
                    "exception_type": type(exc).__name__,
                },
            ) from None
        except (ValueError, MemoryError, RecursionError) as exc:  # NUL bytes, absurd nesting
            raise UserSyntaxError(f"{label} cannot be compiled: {type(exc).__name__}: {exc}",
                                  details={"exception_type": type(exc).__name__}) from None
        self.module = types.ModuleType(self.module_name)
        self._injected = frozenset(extra_globals or {})
        self.module.__dict__.update(extra_globals or {})
        self.module.__dict__["__file__"] = self.filename
        self._code: types.CodeType | None = code

    @property
    def namespace(self) -> dict[str, Any]:
        return self.module.__dict__

    def execute(self, output: Any = None) -> None:
        """Run the module's top level (once); failures become UserCodeError.

        ``output`` is the active :class:`~.capture.OutputCapture`, whose tails
        go into the error's details.
        """
        code, self._code = self._code, None
        if code is None:
            return
        sys.modules[self.module_name] = self.module
        try:
            exec(code, self.module.__dict__)
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything
            raise user_error(exc, self, "module top level", output) from None

    def release(self) -> None:
        """Forget the module in ``sys.modules`` (objects that hold it keep working)."""
        if sys.modules.get(self.module_name) is self.module:
            del sys.modules[self.module_name]

    def function(self, name: str) -> Callable[..., Any]:
        """A callable the module defines, or BadEntryPoint."""
        fn = self.module.__dict__.get(name)
        if fn is None:
            defined = sorted(k for k, v in self.module.__dict__.items()
                             if callable(v) and not k.startswith("_") and not isinstance(v, type)
                             and k not in self._injected)
            raise BadEntryPoint(
                f"the code defines no {name}() function; define `def {name}(inputs):` "
                f"(functions defined: {', '.join(defined[:20]) or 'none'})"
            )
        if not callable(fn):
            raise BadEntryPoint(f"{name} is a {type(fn).__name__}, not a function")
        return cast(Callable[..., Any], fn)

    # -- tracebacks ---------------------------------------------------------
    def format_traceback(self, exc: BaseException) -> tuple[str, int | None]:
        """User frames of ``exc``'s traceback, capped; and the last user line number."""
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == self.filename]
        out = ["Traceback (user code, most recent call last):"]
        last_line: int | None = None
        for f in frames:
            last_line = f.lineno
            out.append(f'  File "{self.filename}", line {f.lineno}, in {f.name}')
            if f.lineno and 0 < f.lineno <= len(self.lines):
                out.append(f"    {self.lines[f.lineno - 1].strip()[:200]}")
        out.append(_exception_line(exc))
        cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if cause is not None:
            out.append(f"(raised while handling {_exception_line(cause)})")
        text = "\n".join(out)
        if len(text) > TRACEBACK_MAX_CHARS:
            # Keep the head and the innermost frames, which say the most.
            half = TRACEBACK_MAX_CHARS // 2
            text = text[:half] + "\n  ... (frames elided) ...\n" + text[-half:]
        return text, last_line


def _exception_line(exc: BaseException) -> str:
    try:
        msg = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ is the user's
        msg = "<unprintable>"
    if len(msg) > MESSAGE_MAX_CHARS:
        msg = msg[:MESSAGE_MAX_CHARS] + "...(truncated)"
    name = type(exc).__qualname__
    return f"{name}: {msg}" if msg else name


def user_error(exc: BaseException, mod: UserModule, phase: str,
               output: Any = None) -> MLBridgeError:
    """Turn an exception raised by user code into the error to reply with.

    ``Cancelled`` / ``DeadlineExceeded`` (raised by ``progress``) and any other
    mlbridge error pass through unchanged; anything else becomes
    :class:`UserCodeError` with the user-frame traceback. ``output`` is an
    :class:`~.capture.OutputCapture` whose tails go into the details.
    """
    if isinstance(exc, MLBridgeError):
        return exc
    tb, line = mod.format_traceback(exc)
    details: dict[str, Any] = {
        "exception_type": type(exc).__qualname__,
        "phase": phase,
        "line": line,
        "traceback": tb,
    }
    if output is not None:
        details["stdout_tail"] = output.stdout.tail(OUTPUT_TAIL_BYTES)
        details["stderr_tail"] = output.stderr.tail(OUTPUT_TAIL_BYTES)
    where = f" at line {line}" if line else ""
    return UserCodeError(f"user code raised {_exception_line(exc)} ({phase}{where})", details=details)


def accepts_progress(fn: Callable[..., Any], n_fixed: int = 1) -> bool:
    """Whether ``fn`` takes one more positional argument than ``n_fixed``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    return len(positional) >= n_fixed + 1


def call_user(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a user function; a coroutine function is run to completion here."""
    value = fn(*args)
    if inspect.iscoroutine(value):
        value = asyncio.run(value)
    return value


def check_json(value: Any, limit: int, what: str) -> int:
    """Check that ``value`` encodes as JSON within ``limit`` bytes; return its size."""
    try:
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        hint = ""
        if type(value).__module__.startswith("numpy") or "numpy" in str(exc) or "int64" in str(exc):
            hint = "; convert numpy values with .tolist() or .item()"
        raise UserResultInvalid(
            f"{what} is not JSON-serialisable: {type(exc).__name__}: {str(exc)[:500]}{hint}",
            details={"exception_type": type(exc).__name__},
        ) from None
    if len(data) > limit:
        raise UserResultTooLarge(
            f"{what} is {len(data)} bytes of JSON, over the {limit}-byte cap",
            details={"size": len(data), "limit": limit},
        )
    return len(data)

