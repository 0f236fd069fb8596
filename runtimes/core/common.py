"""The ``common:*`` commands every runtime serves, whatever its bridge."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from .bridge import Resource, command
from .context import CallContext
from .errors import AlreadyExists, InvalidArgument
from .jsonio import check_schema

if TYPE_CHECKING:
    from .dispatch import Dispatcher

_TYPE_FILTER_SCHEMA = {"type": "object", "properties": {"type": {"type": "string"}}}


def rss_bytes() -> int:
    """Resident memory of this process (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class CommonCommands:
    """Handlers bound to a dispatcher; the core routes ``common:`` here."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher
        self.commands = {
            spec.name: spec
            for attr in vars(type(self)).values()
            if (spec := getattr(attr, "__mlbridge_command__", None)) is not None
        }

    @command("ping", description="Liveness check; echoes back any args", inline=True)
    def ping(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return {"pong": True, "bridge": self.d.bridge.name, "time_ms": int(time.time() * 1000), "echo": args}

    @command("describe", description="Capability discovery: commands, resource types, versions", inline=True)
    def describe(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return self.d.describe()

    @command("stats", description="Call counters, resources and memory of this worker", inline=True)
    def stats(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return self.d.stats()

    @command("get_stats", description="Alias of common:stats", inline=True)
    def get_stats(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return self.d.stats()

    @command("list_resources", description="Resources held by this worker", schema=_TYPE_FILTER_SCHEMA, inline=True)
    def list_resources(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        want = args.get("type")
        return {
            "resources": [
                self.d.resource_summary(rid, res)
                for rid, res in self.d.resources.items()
                if not want or res.type_name == want
            ]
        }

    @command("get_resource", description="One resource's summary", inline=True)
    def get_resource(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        rid = ctx.resource_id or args.get("resource_id", "")
        return self.d.resource_summary(rid, self.d.resource(rid))

    @command("create_resource", description="Create a resource of a declared type (config in args)")
    def create_resource(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        rid = ctx.resource_id
        if not rid:
            raise InvalidArgument("create_resource needs a resource_id")
        if rid in self.d.resources:
            raise AlreadyExists(f"resource {rid!r} already exists")
        cls: type[Resource] = self.d.bridge.resource_type(ctx.resource_type)
        check_schema(args, cls.config_schema, f"config of {ctx.resource_type!r}")
        res = cls(self.d.bridge, rid, args)
        info = res.create(ctx)
        self.d.resources[rid] = res
        self.d.created[rid] = time.time()
        out = {"resource_id": rid, "type": cls.type_name, "info": res.info()}
        if isinstance(info, dict):
            out["info"] = {**out["info"], **info}
        return out

    @command("execute_resource", description="Run a resource with inputs (inputs in args)")
    def execute_resource(self, ctx: CallContext, args: dict[str, Any]) -> Any:
        return self.d.resource(ctx.resource_id).execute(ctx, args)

    @command("delete_resource", description="Delete a resource and release what it holds")
    def delete_resource(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        rid = ctx.resource_id or args.get("resource_id", "")
        res = self.d.resource(rid)
        try:
            res.delete(ctx)
        finally:
            self.d.resources.pop(rid, None)
            self.d.created.pop(rid, None)
        return {"deleted": True, "resource_id": rid}
