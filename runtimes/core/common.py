"""The ``common:*`` commands every runtime serves, whatever its bridge."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol

from ..wire.errors import AlreadyExists, InvalidArgument, flatten_exception
from ..wire.payload import loads_strict as parse_json
from .bridge import Bridge, Resource, command
from .context import CallContext
from .grants import ModelGrant
from .jsonio import check_schema
from .profile import PROFILE_SCHEMA
from .profile import profile as run_profile

_TYPE_FILTER_SCHEMA = {"type": "object", "properties": {"type": {"type": "string"}}}


def rss_bytes() -> int:
    """Resident memory of this process (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_PRELOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"models": {"type": "array", "maxItems": 16, "items": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "hash": {"type": "string"}, "path": {"type": "string"},
                       "files": {"type": "object", "additionalProperties": {"type": "string"}},
                       "size_bytes": {"type": "integer"}},
        "required": ["name", "hash", "path", "files"], "additionalProperties": False}}},
    "required": ["models"],
    "additionalProperties": False,
}


#: Health check details are cut to this many characters.
MAX_HEALTH_DETAIL_CHARS = 300
_NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


def health_report(bridge: Bridge) -> dict[str, Any]:
    """``common:health``: the bridge's :meth:`~Bridge.health` checks, never an error.

    ``{"ok": every check ok (True when there are none), "bridge": name,
    "checks": {name: {"ok": bool, "detail": str}}}``; a hook that raises (or
    answers something else than name -> (ok, detail)) adds the failing check
    ``health_hook`` with the flattened error.
    """
    checks: dict[str, dict[str, Any]] = {}
    try:
        found = bridge.health()
        if not isinstance(found, dict):
            raise TypeError(f"health() must return a dict of check name -> (ok, detail), "
                            f"not {type(found).__name__}")
        for name, value in found.items():
            ok, detail = value
            checks[str(name)[:128]] = {"ok": bool(ok), "detail": str(detail)[:MAX_HEALTH_DETAIL_CHARS]}
    except Exception as exc:  # noqa: BLE001 - an unhealthy worker, not a failed call
        checks["health_hook"] = {"ok": False, "detail": flatten_exception(exc)[:MAX_HEALTH_DETAIL_CHARS]}
    return {"ok": all(c["ok"] for c in checks.values()), "bridge": bridge.name, "checks": checks}


class Served(Protocol):
    """What the common commands read of the worker serving them (the dispatcher)."""

    bridge: Bridge
    max_reply_bytes: int

    def call_here(self, ctx: CallContext, args: dict[str, Any]) -> Any: ...

    def describe(self) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...

    def preload(self, models: list[ModelGrant]) -> list[dict[str, Any]]: ...


class CommonCommands:
    """Handlers bound to a dispatcher; the core routes ``common:`` here."""

    def __init__(self, dispatcher: Served) -> None:
        self.d = dispatcher
        self.commands = {
            spec.name: spec
            for attr in vars(type(self)).values()
            if (spec := getattr(attr, "__mlbridge_command__", None)) is not None
        }

    @command("ping", description="Liveness check; echoes back any args", inline=True, retry_safe=True)
    def ping(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return {"pong": True, "bridge": self.d.bridge.name, "time_ms": int(time.time() * 1000), "echo": args}

    @command("describe", description="Capability discovery: commands, resource types, versions", inline=True, retry_safe=True)
    def describe(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return self.d.describe()

    @command("stats", description="Call counters, resources and memory of this worker", inline=True, retry_safe=True)
    def stats(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return self.d.stats()

    @command("get_stats", description="Alias of common:stats", inline=True, retry_safe=True)
    def get_stats(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return self.d.stats()

    @command("health", description="The bridge's own health checks: {ok, bridge, checks: {name: {ok, detail}}}",
             schema=_NO_ARGS)
    def health(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return health_report(self.d.bridge)

    @command("profile", description="Profile one call ({command, args} or {resource_id, inputs}: cProfile and "
                                    "stack samples) or sample every thread ({sample_s, interval_ms})",
             schema=PROFILE_SCHEMA)
    def profile(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return run_profile(self.d, ctx, args)

    @command("list_models", description="Models of the model store this tenant may load here "
                                        "(name, hash, size), and whether this worker can export models",
             inline=True)
    def list_models(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        bridge = self.d.bridge
        return {"models": [m.describe() for _, m in sorted(bridge.models.items())],
                "can_export": bridge.export_dir is not None}

    @command("preload_models", description="Orchestrator only, before a claim: load store models into this "
                                           "tenant-neutral spare ({models: [grant]}); refused once it has a tenant",
             schema=_PRELOAD_SCHEMA)
    def preload_models(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        grants = [ModelGrant(m["name"], m["hash"], Path(m["path"]), dict(m.get("files") or {}),
                             int(m.get("size_bytes") or 0)) for m in args["models"]]
        return {"preloaded": self.d.preload(grants)}

    @command("list_resources", description="Resources held by this worker", schema=_TYPE_FILTER_SCHEMA, inline=True, retry_safe=True)
    def list_resources(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        store = self.d.bridge.resources
        return {"resources": [store.summary(rid) for rid, _ in store.items(args.get("type") or "")]}

    @command("get_resource", description="One resource's summary", inline=True, retry_safe=True)
    def get_resource(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return self.d.bridge.resources.summary(ctx.resource_id or args.get("resource_id", ""))

    @command("create_resource", description="Create a resource of a declared type (config in args)")
    def create_resource(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        rid = ctx.resource_id
        if not rid:
            raise InvalidArgument("create_resource needs a resource_id")
        bridge = self.d.bridge
        if rid in bridge.resources:  # before any work; add() checks again
            raise AlreadyExists(f"resource {rid!r} already exists")
        cls: type[Resource] = bridge.resource_type(ctx.resource_type)
        check_schema(args, cls.config_schema, f"config of {ctx.resource_type!r}")
        res = cls(bridge, rid, args)
        info = res.create(ctx)
        if ctx.resource_state_json:
            res.restore(ctx, parse_json(ctx.resource_state_json, f"saved state of {rid!r}"))
        bridge.resources.add(res)
        summary = res.info()
        if isinstance(info, dict):
            summary = {**summary, **info}
        return {"resource_id": rid, "type": cls.type_name, "info": summary}

    @command("execute_resource", description="Run a resource with inputs (inputs in args)")
    def execute_resource(self, ctx: CallContext, args: dict[str, Any]) -> Any:
        res = self.d.bridge.resources.get(ctx.resource_id)
        if res.keeps_state():
            ctx.save_state(res)
        return res.execute(ctx, args)

    @command("delete_resource", description="Delete a resource and release what it holds")
    def delete_resource(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        rid = ctx.resource_id or args.get("resource_id", "")
        store = self.d.bridge.resources
        res = store.get(rid)
        try:
            res.delete(ctx)
        finally:
            store.remove(rid)
        return {"deleted": True, "resource_id": rid}
