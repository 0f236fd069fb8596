"""The ``dspy`` bridge: DSPy programs, LMs, datasets and optimizers as resources.

Resource types (see :mod:`runtimes.dspy.resources`): ``signature``, ``lm``,
``program``, ``dataset``, ``optimization``. Commands: ``dspy:configure_lm``,
``dspy:reset``, ``dspy:stats``, ``dspy:set_secret``. Streaming is described
in :mod:`runtimes.dspy.programs`.

API keys arrive as tenant secrets through :meth:`Bridge.configure`; an LM
config names the secret it uses. A client holding its own key (the DSPex
``configure_lm {api_key}`` path) hands it to its worker with
``dspy:set_secret``: the value travels as an attachment, never in JSON
arguments, and lives only in this worker's memory, so it is never stored in
a resource spec and is gone when the worker is. Keys never appear in a
result, an info summary, an error or a log record
(:mod:`runtimes.core.redaction`).

``import dspy`` happens in :meth:`DSPyBridge.setup` and in hooks, never at
import time, so describing this bridge stays fast.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from runtimes.core import CallContext, InvalidArgument, command
from runtimes.core.redaction import install_log_redaction, redact
from runtimes.wire import metadata as meta
from runtimes.wire.errors import (
    ConfigError,
    FrameworkError,
    MLBridgeError,
    PermissionDenied,
    flatten_exception,
)

from .base import DSPyBase
from .lms import LM_SCHEMA, LMSpec
from .resources import (
    DatasetResource,
    LMResource,
    OptimizationResource,
    ProgramResource,
    SignatureResource,
)

_CONFIGURE_LM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        **LM_SCHEMA["properties"],
        "lm": {"type": "string", "description": "an lm resource id, instead of a config"},
    },
}
_SET_SECRET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string", "description": "secret name, e.g. DSPEX_API_KEY"}},
    "required": ["name"],
    "additionalProperties": False,
}
def resolve_lm(lm: Any) -> tuple[bool, str]:
    """Whether DSPy can route ``lm`` (offline: its provider and model are resolved, nothing is called)."""
    import dspy  # type: ignore[import-untyped]

    model = str(getattr(lm, "model", "") or "")
    if isinstance(lm, dspy.utils.DummyLM):
        return True, "dummy LM (offline)"
    try:
        from dspy.clients.backend_selection import select_backend  # type: ignore[import-untyped]
    except ImportError:
        return bool(model), f"{model or 'no model'}: configured (this DSPy cannot resolve it offline)"
    try:
        chosen = select_backend(lm)
    except TypeError:  # a custom engine: it owns its own routing
        return True, f"{model}: custom engine {type(getattr(lm, '_engine_spec', None)).__name__}"
    except Exception as exc:  # noqa: BLE001 - an LM DSPy cannot route
        return False, f"{model}: {flatten_exception(exc)}"
    if chosen.native and chosen.resolution is not None:
        return True, str(chosen.resolution)
    litellm = sys.modules.get("litellm")  # never imported here: its import goes to the network
    if litellm is not None and hasattr(litellm, "get_llm_provider"):
        try:
            _, provider, _, _ = litellm.get_llm_provider(model)
        except Exception as exc:  # noqa: BLE001
            return False, f"{model}: LiteLLM cannot route it: {flatten_exception(exc)}"
        return True, f"{model}: via LiteLLM, provider {provider}"
    return True, f"{model}: via the LiteLLM compatibility engine (provider {model.split('/', 1)[0]!r})"


_SECRET_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
MAX_SECRET_BYTES = 8192
# Longest framework error message passed on (provider errors can be pages long).
MAX_ERROR_CHARS = 4000


class DSPyBridge(DSPyBase):
    """Serves DSPy 3.x in one worker."""

    name = "dspy"
    framework = "dspy"
    resource_types = (SignatureResource, LMResource, ProgramResource, DatasetResource, OptimizationResource)
    # Provider keys are not fixed: each LM config names the secret it needs.
    required_secrets = ()
    packages = ("litellm", "openai", "pydantic")

    # -- hooks ------------------------------------------------------------
    def setup(self) -> None:
        import dspy  # type: ignore[import-untyped]

        # Memory cache only: a worker's rootfs is read-only and it lives for one tenant.
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
        install_log_redaction(lambda: list(self.secrets.values()))

    def translate_error(self, exc: BaseException) -> MLBridgeError | None:
        text = redact(flatten_exception(exc), self.secrets.values())
        if len(text) > MAX_ERROR_CHARS:
            text = text[:MAX_ERROR_CHARS] + " [truncated]"
        details: dict[str, Any] = {"_flattened": True, "framework_error": type(exc).__name__}
        try:
            from dspy.utils.exceptions import LMConfigurationError  # type: ignore[import-untyped]
        except ImportError:  # dspy missing: nothing of it can have raised
            return FrameworkError(text, details=details)
        if isinstance(exc, LMConfigurationError):
            return ConfigError(text, details=details)
        return FrameworkError(text, details=details)

    def health(self) -> dict[str, tuple[bool, str]]:
        """The tenant's default LM resolves (offline, never called), and DSPy answers a one-field
        Predict through its own DummyLM."""
        import dspy  # type: ignore[import-untyped]

        checks: dict[str, tuple[bool, str]] = {}
        with self._lock:
            lm = self.default_lm
        if lm is not None:
            ok, detail = resolve_lm(lm)
            checks["default_lm"] = (ok, redact(detail, self.secrets.values()))
        try:
            answer = dspy.utils.DummyLM([{"answer": "ok"}])
            with dspy.context(lm=answer):
                out = dspy.Predict("question -> answer")(question="ping")
            got = str(getattr(out, "answer", ""))
            checks["dummy_predict"] = (got == "ok", f"dspy {dspy.__version__}: DummyLM answered {got[:60]!r}")
        except Exception as exc:  # noqa: BLE001 - a failing check, not a failed call
            checks["dummy_predict"] = (False, redact(flatten_exception(exc), self.secrets.values()))
        return checks

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self._counts)
        return {"default_lm": self.default_lm_info, "resources": self.resources.counts_by_type(), **counts}

    # -- commands -----------------------------------------------------------
    @command("configure_lm", description="Set the default LM (an lm config, or {lm: <lm resource id>})",
             schema=_CONFIGURE_LM_SCHEMA)
    def configure_lm(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        if "lm" in args:
            if len(args) != 1:
                raise InvalidArgument("configure_lm takes either {lm: <resource id>} or an LM config, not both")
            res = self.resources.get_as(args["lm"], LMResource, "lm")
            lm, info = res.lm, res.info()
        else:
            spec = LMSpec(args)
            lm, info = self.instrument(spec.build(self.secrets)), spec.info()
            # An inline default LM follows the tenant onto replacement workers.
            ctx.metadata[meta.REPLAY_KEY] = "dspy:default-lm"
        with self._lock:
            self.default_lm, self.default_lm_info = lm, info
        return {"default_lm": info}

    @command("reset", description="Delete every dspy resource in this worker and the default LM")
    def reset(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        deleted = []
        for rid, res in self.resources.items():
            try:
                res.delete(ctx)
            finally:
                self.resources.remove(rid)
            deleted.append({"resource_id": rid, "type": res.type_name})
        with self._lock:
            had_lm = self.default_lm is not None
            self.default_lm, self.default_lm_info = None, None
        # Tell the orchestrator: these specs are gone, and nothing is to be replayed.
        ctx.metadata[meta.DELETED_RESOURCES] = json.dumps([d["resource_id"] for d in deleted])
        ctx.metadata[meta.REPLAY_CLEAR] = "1"
        return {"deleted": deleted, "default_lm_cleared": had_lm}

    @command("stats", description="Default LM, resources by type, executions and optimizations",
             inline=True)
    def dspy_stats(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return self.stats()

    @command("set_secret", description="Keep a secret in this worker's memory for LM configs to name "
             "(value in the attachment 'value', never in args)", schema=_SET_SECRET_SCHEMA, inline=True)
    def set_secret(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        name = args["name"]
        if not _SECRET_NAME.match(name):
            raise InvalidArgument(f"secret name {name!r} must match {_SECRET_NAME.pattern}")
        raw = ctx.attachments.get("value", b"")
        if not raw or len(raw) > MAX_SECRET_BYTES:
            raise InvalidArgument(f"set_secret needs the value as attachment 'value' (1 to {MAX_SECRET_BYTES} bytes)")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument("the secret value must be UTF-8 text") from None
        with self._lock:
            if name in self.secrets and name not in self._client_secrets:
                raise PermissionDenied(f"secret {name!r} is given to this tenant by the operator; "
                                       f"it cannot be replaced from a call")
            self.secrets[name] = value  # redaction reads self.secrets, so this value is masked from now on
            self._client_secrets.add(name)
        return {"name": name, "set": True}
