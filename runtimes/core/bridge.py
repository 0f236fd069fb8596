"""The Bridge base class, the ``@command`` decorator and resource types.

A bridge wraps one framework. It subclasses :class:`Bridge`, names its
namespace, registers command handlers with :func:`command` and declares
resource types as :class:`Resource` subclasses::

    class MyBridge(Bridge):
        name = "my"
        framework = "myframework"
        resource_types = (Model,)

        @command("predict", description="Run one prediction")
        def predict(self, ctx, args):
            return {"y": args["x"] * 2}

A handler takes ``(self, ctx, args)`` and returns a JSON-serialisable value.
A generator handler streams: each yielded value is a chunk, and its
``return`` value (if any) is the final result. ``async def`` handlers run on
the event loop; plain ones in a worker thread, unless ``inline=True`` marks
them as cheap enough to run on the loop directly.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..wire.errors import FrameworkError, InvalidArgument, MLBridgeError, flatten_exception
from .context import CallContext
from .grants import ModelGrant
from .store import ResourceStore
from .telemetry import BridgeMetrics

__all__ = ["Bridge", "CommandSpec", "Resource", "command"]


@dataclass(frozen=True)
class CommandSpec:
    """A registered handler and what ``common:describe`` says about it."""

    name: str
    func: Callable[..., Any]
    description: str = ""
    schema: dict[str, Any] = field(default_factory=dict)
    streaming: bool = False
    is_async: bool = False
    inline: bool = False
    retry_safe: bool = False


def command(
    name: str | None = None,
    *,
    description: str = "",
    schema: dict[str, Any] | None = None,
    inline: bool = False,
    retry_safe: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a method as a command of its bridge's namespace.

    Args:
        name: operation name (without namespace); defaults to the function name.
        description: one line shown by ``common:describe``.
        schema: JSON schema of the args object. Its ``required`` keys and
            top-level property types are checked before the handler runs.
        inline: run on the event loop instead of a thread (only for handlers
            that never block).
        retry_safe: running it again on a replacement worker, after its worker
            died mid-call, repeats no effect outside the worker (the
            orchestrator then retries it once, transparently).
    """

    def deco(func: Callable[..., Any]) -> Callable[..., Any]:
        func.__mlbridge_command__ = CommandSpec(  # type: ignore[attr-defined]
            name=name or func.__name__,
            func=func,
            description=description or (inspect.getdoc(func) or "").split("\n")[0],
            schema=schema or {},
            streaming=inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func),
            is_async=inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func),
            inline=inline,
            retry_safe=retry_safe,
        )
        return func

    return deco


class Resource:
    """A resource type. One instance per created resource, kept in its worker.

    Subclasses set ``type_name`` and override the hooks they support. The
    defaults of the optional hooks raise a sentence saying what is missing.
    """

    type_name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_schema: ClassVar[dict[str, Any]] = {}
    #: Executing it again on a replacement worker (after its worker died mid-call) is safe: the
    #: orchestrator retries such an execution once. Leave False when an execution has effects
    #: outside the worker, or changes state the orchestrator does not keep.
    retry_safe: ClassVar[bool] = False

    def __init__(self, bridge: Bridge, resource_id: str, config: dict[str, Any]) -> None:
        self.bridge = bridge
        self.resource_id = resource_id
        self.config = config

    def create(self, ctx: CallContext) -> Any:
        """Build the framework object from ``self.config``; return info or None."""
        return None

    def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> Any:
        """Run the resource. May be a generator to stream."""
        raise InvalidArgument(f"resource type {self.type_name!r} cannot be executed")

    def loop_execute(self, ctx: CallContext) -> Callable[[CallContext, dict[str, Any]], Awaitable[Any]] | None:
        """An ``async`` execute to run on the event loop for this unary call, or None (the default).

        A plain ``execute`` runs in a handler thread. A resource whose calls
        only wait (for a batch, for another process) can return a coroutine
        function here instead: the call then costs no thread and no thread
        switch. Cancellation and the deadline cancel its task.
        """
        return None

    def delete(self, ctx: CallContext) -> None:
        """Release what ``create`` built."""

    def info(self) -> dict[str, Any]:
        """A JSON-serialisable summary shown by list/get (never secrets)."""
        return {}

    def snapshot(self) -> Any:
        """State the orchestrator should keep (JSON), or None for none.

        A resource whose class overrides this has its snapshot sent to the
        orchestrator after every ``execute`` (and after any call that names it
        with :meth:`CallContext.save_state`); the orchestrator stores it with
        the resource's spec before the reply goes out, and hands it to
        :meth:`restore` when the resource is re-created on another worker.
        """
        return None

    def restore(self, ctx: CallContext, state: Any) -> None:
        """Take back the state :meth:`snapshot` gave, after ``create`` on a re-created resource."""

    @classmethod
    def keeps_state(cls) -> bool:
        """Whether this type's snapshots are kept by the orchestrator (it overrides :meth:`snapshot`)."""
        return cls.snapshot is not Resource.snapshot


class Bridge:
    """Base class of every bridge.

    Class attributes:
        name: the bridge's command namespace ("dspy", "mock").
        framework: the framework's distribution name, for describe and images.
        resource_types: :class:`Resource` subclasses this bridge serves.

    Attributes:
        resources: the :class:`~runtimes.core.store.ResourceStore` of this
            worker's resources (``get``, ``get_as``, ``add``, ``remove``).
        required_secrets: secret names the bridge needs (delivered per tenant).
        packages: distributions whose versions ``describe`` reports.
        metrics: the bridge's :class:`~runtimes.core.telemetry.BridgeMetrics`.
    """

    name: ClassVar[str] = ""
    framework: ClassVar[str] = ""
    resource_types: ClassVar[tuple[type[Resource], ...]] = ()
    required_secrets: ClassVar[tuple[str, ...]] = ()
    packages: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        if not self.name or ":" in self.name:
            raise TypeError(f"{type(self).__name__}.name must be a non-empty namespace without ':'")
        self.tenant = ""
        self.secrets: dict[str, str] = {}
        #: The store's models this worker's tenant may load, by name (set at configure).
        self.models: dict[str, ModelGrant] = {}
        #: Where this worker may write models for the orchestrator to import (None: it may not).
        self.export_dir: Path | None = None
        #: Models this worker loaded while a tenant-neutral spare (:meth:`preload`), by hash;
        #: the first resource that asks for one takes it. Configure drops those its tenant may not load.
        self.preloaded: dict[str, Any] = {}
        #: The resources this worker holds; handlers add, look up and remove through it.
        self.resources: ResourceStore[Resource] = ResourceStore()
        #: This bridge's own counters and histograms (declare them in ``__init__`` or ``setup``);
        #: reported to the orchestrator with the replies (:mod:`runtimes.core.telemetry`).
        self.metrics = BridgeMetrics()
        self._types: dict[str, type[Resource]] = {t.type_name: t for t in self.resource_types}
        self.commands: dict[str, CommandSpec] = {}
        for klass in reversed(type(self).__mro__):
            for attr in vars(klass).values():
                spec = getattr(attr, "__mlbridge_command__", None)
                if spec is not None:
                    self.commands[spec.name] = spec

    # -- hooks ------------------------------------------------------------
    def setup(self) -> None:
        """Import the framework and warm up. Runs once before serving."""

    def preload(self, models: list[ModelGrant]) -> list[dict[str, Any]]:
        """Load ``models`` into :attr:`preloaded` before any tenant claims this worker (the
        orchestrator's ``preload_models``); describe what was loaded. Runs in a call thread.

        Raises:
            InvalidArgument: this bridge does not preload models (the default).
        """
        raise InvalidArgument(f"bridge {self.name!r} does not preload models; remove preload_models from its config")

    def configure(self, tenant: str, secrets: dict[str, str]) -> None:
        """Receive the claiming tenant and its secrets for this bridge."""
        self.tenant = tenant
        self.secrets = dict(secrets)

    def framework_version(self) -> str:
        """The framework's version string ("" when the bridge has none)."""
        return dist_version(self.framework) if self.framework else ""

    def translate_error(self, exc: BaseException) -> MLBridgeError | None:
        """Map a framework exception to an mlbridge error; None uses the default.

        The default wraps it in :class:`FrameworkError` with the flattened
        ``"module.Class: message"`` text.
        """
        return None

    def stats(self) -> dict[str, Any]:
        """Bridge-specific figures for ``common:stats``."""
        return {}

    def health(self) -> dict[str, tuple[bool, str]]:
        """Checks of this worker's framework for ``common:health``: check name -> (ok, detail).

        Runs in a call thread; keep it cheap (well under a second) and offline.
        The default has no checks (healthy). An exception raised here makes
        the worker unhealthy, with the error as the detail.
        """
        return {}

    # -- resource types -----------------------------------------------------
    def register_resource_type(self, cls: type[Resource]) -> None:
        """Add a resource type at run time (used for user-defined types)."""
        if not cls.type_name:
            raise InvalidArgument("a resource type needs a non-empty type_name")
        self._types[cls.type_name] = cls

    def resource_type(self, name: str) -> type[Resource]:
        try:
            return self._types[name]
        except KeyError:
            known = ", ".join(sorted(self._types)) or "none"
            raise InvalidArgument(
                f"bridge {self.name!r} has no resource type {name!r}; types: {known}"
            ) from None

    @property
    def types(self) -> dict[str, type[Resource]]:
        return dict(self._types)

    # -- error translation ---------------------------------------------------
    def to_error(self, exc: BaseException) -> MLBridgeError:
        """Turn any exception into an MLBridgeError (framework hook first)."""
        if isinstance(exc, MLBridgeError):
            return exc
        try:
            mapped = self.translate_error(exc)
        except Exception:  # a broken hook must not hide the original error
            mapped = None
        if mapped is not None:
            return mapped
        return FrameworkError(flatten_exception(exc), details={"_flattened": True})


def dist_version(dist: str) -> str:
    """The installed version of a distribution, "" when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""
