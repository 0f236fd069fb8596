"""User code in the sandbox: code-defined chains (``build()``) and code-defined tools (``@tool``).

Source is compiled and run exactly as ``custom:run`` runs it
(:class:`runtimes.core.usercode.UserModule`: a fresh module, syntax errors
with their line, exceptions with the user's frames only), inside this
worker, the tenant's hardened container: code-defined chains and tools get
no more network or file access than the worker has.

A chain's source defines ``build()`` or ``build(resources)`` returning any
Runnable (a plain callable is wrapped in ``RunnableLambda``); ``resources``
hands out the LangChain objects behind this tenant's other resources:
``resources.model("m")``, ``.prompt("p")``, ``.tool("t")``, ``.chain("c")``.
A tool's source defines one ``@tool`` function (``tool`` is predefined), or
one plain function with a docstring; ``name`` picks one of several.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from runtimes.core.usercode import UserModule, accepts_progress, user_error
from runtimes.wire.errors import InvalidArgument, MLBridgeError

from .errors import ToolFailure

__all__ = ["MAX_CODE_CHARS", "Refs", "build_runnable", "load_tool"]

MAX_CODE_CHARS = 1024 * 1024


class Refs:
    """What ``build(resources)`` sees: the objects behind the tenant's resources in this worker."""

    def __init__(self, lookup: Callable[[str, str], Any]) -> None:
        self._lookup = lookup

    def model(self, rid: str) -> Any:
        """The chat model of a ``model`` resource."""
        return self._lookup(rid, "model")

    def prompt(self, rid: str) -> Any:
        """The ChatPromptTemplate of a ``prompt`` resource."""
        return self._lookup(rid, "prompt")

    def tool(self, rid: str) -> Any:
        """The BaseTool of a ``tool`` resource."""
        return self._lookup(rid, "tool")

    def chain(self, rid: str) -> Any:
        """The Runnable of a ``chain`` resource."""
        return self._lookup(rid, "chain")


def _module(source: Any, label: str, extra: dict[str, Any]) -> UserModule:
    if not isinstance(source, str) or not source.strip():
        raise InvalidArgument(f"{label}: 'code' must be non-empty Python source")
    if len(source) > MAX_CODE_CHARS:
        raise InvalidArgument(f"{label}: code is {len(source)} characters, over the {MAX_CODE_CHARS} limit")
    mod = UserModule(source, label=label, extra_globals=extra)
    try:
        mod.execute()
    except BaseException:
        mod.release()
        raise
    return mod


def build_runnable(source: Any, label: str, refs: Refs) -> tuple[Any, UserModule]:
    """Run ``source`` and its ``build()``; the Runnable it returns and the module (release it on delete).

    Raises:
        UserSyntaxError, BadEntryPoint: the source does not compile, or defines no build().
        UserCodeError: the module or build() raised.
        InvalidArgument: build() returned neither a Runnable nor a callable.
    """
    from langchain_core.runnables import Runnable, RunnableLambda

    mod = _module(source, label, {})
    try:
        build = mod.function("build")
        args = (refs,) if accepts_progress(build, 0) else ()
        try:
            value = build(*args)
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything
            raise user_error(exc, mod, "build()") from None
        if isinstance(value, Runnable):
            return value, mod
        if callable(value):
            return RunnableLambda(value), mod
        raise InvalidArgument(f"{label}: build() returned a {type(value).__name__}, not a Runnable")
    except BaseException:
        mod.release()
        raise


def load_tool(source: Any, label: str, name: str | None, handle_errors: bool) -> tuple[Any, UserModule]:
    """The tool ``source`` defines, its function wrapped so failures say which tool and line.

    With ``handle_errors`` an exception becomes a ``ToolException`` whose text
    the agent sees (and may recover from); otherwise it ends the run as a
    ``TOOL_ERROR`` with the user-frame traceback.
    """
    from langchain_core.tools import BaseTool, tool

    mod = _module(source, label, {"tool": tool})
    try:
        ns = mod.namespace
        tools = {v.name: v for k, v in ns.items() if isinstance(v, BaseTool) and not k.startswith("_")}
        funcs = {k: v for k, v in ns.items() if inspect.isfunction(v) and v.__module__ == mod.module_name
                 and not k.startswith("_")}
        if name is not None:
            found = tools.get(name) or (_as_tool(funcs[name], label) if name in funcs else None)
            if found is None:
                raise InvalidArgument(f"{label}: the code defines no tool or function {name!r} (tools: "
                                      f"{', '.join(sorted(tools)) or 'none'}; functions: "
                                      f"{', '.join(sorted(funcs)) or 'none'})")
        elif len(tools) == 1:
            found = next(iter(tools.values()))
        elif not tools and len(funcs) == 1:
            found = _as_tool(next(iter(funcs.values())), label)
        else:
            raise InvalidArgument(f"{label}: define exactly one @tool function, or say which with 'name' "
                                  f"(tools: {', '.join(sorted(tools)) or 'none'})")
        _guard(found, mod, handle_errors)
        return found, mod
    except BaseException:
        mod.release()
        raise


def _as_tool(fn: Callable[..., Any], label: str) -> Any:
    from langchain_core.tools import tool

    try:
        return tool(fn)
    except ValueError as exc:
        raise InvalidArgument(f"{label}: function {fn.__name__} cannot be a tool: {exc} (the docstring is "
                              f"the description the model sees)") from None


def _guard(t: Any, mod: UserModule, handle_errors: bool) -> None:
    """Wrap the tool's function(s) so an exception names the tool and the user's line."""
    from langchain_core.tools import ToolException

    def failure(exc: BaseException) -> BaseException:
        if isinstance(exc, (MLBridgeError, ToolException)):
            return exc
        if handle_errors:
            return ToolException(f"{type(exc).__name__}: {exc}")
        err = user_error(exc, mod, f"tool {t.name}")
        return ToolFailure(f"tool {t.name!r} failed: {err.message}; fix the tool, or create it with "
                           f"handle_errors: true so the agent sees the error and can recover",
                           details={**err.details, "tool": t.name})

    def wrap_sync(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - user code may raise anything
                raise failure(exc) from None
        return run

    def wrap_async(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                raise failure(exc) from None
        return run

    if getattr(t, "func", None) is not None:
        t.func = wrap_sync(t.func)
    if getattr(t, "coroutine", None) is not None:
        t.coroutine = wrap_async(t.coroutine)
    if handle_errors:
        t.handle_tool_error = True
