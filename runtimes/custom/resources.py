"""Resource types backed by user code.

``module`` is the built-in type: its config carries the source, so the
orchestrator can re-create it from its spec alone. Types registered at run
time with ``custom:register_type`` wrap a user class in a
:class:`UserResource` subclass built by :func:`make_user_type`.

Each resource instance serialises its own calls (user objects are rarely
thread-safe); a call waiting for the lock still honours cancellation.
Captured output of create / execute / delete goes to the reply metadata
(``custom.stdout`` / ``custom.stderr``), since their results belong to the user.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Generator
from typing import Any, ClassVar

from runtimes.core import CallContext, Resource
from runtimes.core.usercode import (
    Progress,
    UserModule,
    accepts_progress,
    call_user,
    check_json,
    user_error,
)

from .base import CustomBase
from .capture import OutputCapture
from .errors import BadUserType

__all__ = ["ModuleResource", "UserResource", "make_user_type"]

_LOCK_POLL_S = 0.05


class _GuardedResource(Resource):
    """Shared plumbing: a per-instance lock, output capture and error mapping."""

    bridge: CustomBase

    def __init__(self, bridge: Any, resource_id: str, config: dict[str, Any]) -> None:
        super().__init__(bridge, resource_id, config)
        self._lock = threading.Lock()

    def _acquire(self, ctx: CallContext) -> None:
        while not self._lock.acquire(timeout=_LOCK_POLL_S):
            ctx.check()

    def _guarded(self, ctx: CallContext, mod: UserModule, phase: str, fn: Callable[..., Any],
                 *args: Any) -> Any:
        """Run ``fn(*args)`` under the lock with capture; map failures to typed errors."""
        self._acquire(ctx)
        cap = OutputCapture(self.bridge.settings.max_output_bytes)
        try:
            with cap:
                value = call_user(fn, *args)
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything
            raise user_error(exc, mod, phase, cap) from None
        finally:
            self._lock.release()
            _to_metadata(ctx, cap)
        ctx.check()  # returned after should_stop(): still cancelled
        return value

    def _stream(self, ctx: CallContext, mod: UserModule, gen: Generator[Any, Any, Any]) -> Generator[Any, None, Any]:
        """Drive a user generator, capturing around each step and checking each chunk."""
        limit = self.bridge.settings.max_result_bytes
        cap = OutputCapture(self.bridge.settings.max_output_bytes)
        self._acquire(ctx)
        try:
            while True:
                try:
                    with cap:
                        chunk = next(gen)
                except StopIteration as stop:
                    if stop.value is not None:
                        check_json(stop.value, limit, "the final value")
                    return stop.value
                except BaseException as exc:  # noqa: BLE001
                    raise user_error(exc, mod, "execute", cap) from None
                check_json(chunk, limit, "a yielded chunk")
                yield chunk
        finally:
            self._lock.release()
            with cap:
                gen.close()
            _to_metadata(ctx, cap)


def _to_metadata(ctx: CallContext, cap: OutputCapture) -> None:
    for key, buf in (("stdout", cap.stdout), ("stderr", cap.stderr)):
        if buf.getvalue() or buf.dropped:
            ctx.metadata[f"custom.{key}"] = buf.getvalue()
            if buf.dropped:
                ctx.metadata[f"custom.{key}_dropped_bytes"] = str(buf.dropped)


class ModuleResource(_GuardedResource):
    """Built-in: a persistent module; execute calls its ``main(inputs)``."""

    type_name: ClassVar[str] = "module"
    description: ClassVar[str] = (
        "A persistent Python module: config.code runs once at create, execute calls its "
        "main(inputs[, progress]); module globals keep state between calls. Optional "
        "delete() runs on delete."
    )
    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "source defining main(inputs)"}},
        "required": ["code"],
        "additionalProperties": False,
    }

    def create(self, ctx: CallContext) -> dict[str, Any]:
        code = self.config["code"]
        self.bridge.check_code_size(code)
        self.mod = UserModule(code, label=f"module:{self.resource_id}",
                              extra_globals={"WORKDIR": self.bridge.scratch.path})
        try:
            self._guarded(ctx, self.mod, "module top level", self.mod.execute)
            self.main = self.mod.function("main")
        except BaseException:
            self.mod.release()  # a failed create is never deleted
            raise
        self._with_progress = accepts_progress(self.main)
        return {"streaming": inspect.isgeneratorfunction(self.main)}

    def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> Any:
        args = (inputs, Progress(ctx)) if self._with_progress else (inputs,)
        if inspect.isgeneratorfunction(self.main):
            return self._stream(ctx, self.mod, self.main(*args))
        value = self._guarded(ctx, self.mod, "main", self.main, *args)
        if inspect.isgenerator(value):
            return self._stream(ctx, self.mod, value)
        check_json(value, self.bridge.settings.max_result_bytes, "the result of main()")
        return value

    def delete(self, ctx: CallContext) -> None:
        mod = getattr(self, "mod", None)
        if mod is None:
            return
        try:
            hook = mod.namespace.get("delete")
            if callable(hook):
                self._guarded(ctx, mod, "delete", hook)
        finally:
            mod.release()

    def info(self) -> dict[str, Any]:
        return {"kind": "module"}


class UserResource(_GuardedResource):
    """Base of the types built by :func:`make_user_type`."""

    user_class: ClassVar[type]
    user_module: ClassVar[UserModule]
    type_version: ClassVar[int] = 1

    def create(self, ctx: CallContext) -> Any:
        mod = self.user_module
        self.obj = self._guarded(ctx, mod, "__init__", self.user_class)
        info = self._guarded(ctx, mod, "create", self.obj.create, self.config)
        if info is not None:
            check_json(info, self.bridge.settings.max_result_bytes, "the value create() returned")
        return info if isinstance(info, dict) else ({"created": info} if info is not None else None)

    def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> Any:
        fn = self.obj.execute
        args = (inputs, Progress(ctx)) if accepts_progress(fn) else (inputs,)
        if inspect.isgeneratorfunction(fn):
            return self._stream(ctx, self.user_module, fn(*args))
        value = self._guarded(ctx, self.user_module, "execute", fn, *args)
        if inspect.isgenerator(value):
            return self._stream(ctx, self.user_module, value)
        check_json(value, self.bridge.settings.max_result_bytes, "the result of execute()")
        return value

    def delete(self, ctx: CallContext) -> None:
        obj = getattr(self, "obj", None)
        hook = getattr(obj, "delete", None)
        if callable(hook):
            self._guarded(ctx, self.user_module, "delete", hook)

    def info(self) -> dict[str, Any]:
        return {"user_type": self.type_name, "type_version": self.type_version}


def make_user_type(name: str, cls_name: str, mod: UserModule, *, version: int, description: str,
                   config_schema: dict[str, Any]) -> type[UserResource]:
    """Build the Resource subclass for a user class the module defines.

    Raises:
        BadUserType: the module has no such class, or it lacks create / execute.
    """
    user_cls = mod.namespace.get(cls_name)
    if not isinstance(user_cls, type):
        classes = sorted(k for k, v in mod.namespace.items() if isinstance(v, type) and not k.startswith("_"))
        raise BadUserType(
            f"the code defines no class {cls_name!r} (classes defined: {', '.join(classes) or 'none'})",
            details={"class": cls_name},
        )
    missing = [hook for hook in ("create", "execute") if not callable(getattr(user_cls, hook, None))]
    if missing:
        raise BadUserType(
            f"class {cls_name!r} must define {' and '.join(f'{m}()' for m in missing)}; "
            f"a user type needs create(self, config) and execute(self, inputs), delete(self) is optional",
            details={"class": cls_name, "missing": missing},
        )
    streaming = inspect.isgeneratorfunction(getattr(user_cls, "execute", None))
    attrs: dict[str, Any] = {
        "type_name": name,
        "description": description or (inspect.getdoc(user_cls) or "").split("\n")[0]
        or f"user-defined type (class {cls_name})",
        "config_schema": config_schema,
        "user_class": user_cls,
        "user_module": mod,
        "type_version": version,
        "__module__": __name__,
    }
    if streaming:
        # describe() reports streaming from the execute hook's kind.
        def execute(self: UserResource, ctx: CallContext, inputs: dict[str, Any]) -> Generator[Any, None, Any]:
            result = yield from UserResource.execute(self, ctx, inputs)
            return result

        attrs["execute"] = execute
    return type(f"UserType_{name}", (UserResource,), attrs)
