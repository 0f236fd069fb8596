"""The public service: each public operation as a :class:`Request` through the edge to the domain service.

The servicer (``api/``) and the DSPex facade (``compat/``) call these
methods; they never call the domain service directly, so every public call,
a legacy command's every step included, is authorised, counted against the
tenant's quotas, given the policy's deadline and audited alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from runtimes.wire.errors import InvalidArgument, NotFound
from runtimes.wire.payload import check_payload

from ..calls import Reply
from ..registry import ResourceRecord
from ..service import Caller, Event, Orchestrator
from ..usage import MAX_NAME_CHARS
from .pipeline import Edge
from .request import Request, code_hash, payload_size

__all__ = ["Gateway"]

T = TypeVar("T")

Visible = Callable[[str, list[str]], list[str]]


class UsageQuery(Protocol):
    """Where GetStats reads usage accounting (:class:`orchestrator.usage.UsageBook`)."""

    bucket_s: int

    def query(self, tenant: str | None = None, since: float | None = None) -> list[dict[str, Any]]: ...


class Gateway:
    """Public operations for one orchestrator.

    Args:
        service: the domain service.
        edge: the steps every request passes.
        visible_bridges: ``(tenant, names) -> the names the tenant may see``; all by default.
        scoped_stats: whether GetStats shows a caller only its own tenant's workers, resources and usage.
        usage: usage accounting, for GetStats.
    """

    def __init__(self, service: Orchestrator, edge: Edge, *, visible_bridges: Visible | None = None,
                 scoped_stats: bool = False, usage: UsageQuery | None = None) -> None:
        self.service = service
        self.edge = edge
        self.usage = usage
        self._visible = visible_bridges
        self._scoped_stats = scoped_stats

    def _code(self, args_json: str) -> str | None:
        """The SHA-256 of submitted code, for the audit log: parsed only when the edge has steps to use it."""
        return code_hash(args_json) if self.edge.steps else None

    @property
    def default_bridge(self) -> str:
        return self.service.config.default_bridge

    @property
    def started(self) -> float:
        """Unix time the orchestrator started."""
        return self.service.started

    # -- read-only calls: authorised, not counted ------------------------------------------
    def list_bridges(self, caller: Caller) -> list[dict[str, Any]]:
        self.edge.check(Request(caller, "ListBridges", "list_bridges"))
        items = self.service.list_bridges(caller)
        if self._visible is None:
            return items
        visible = set(self._visible(caller.tenant, [b["name"] for b in items]))
        return [b for b in items if b["name"] in visible]

    def list_resources(self, caller: Caller, bridge: str = "", type_: str = "") -> list[ResourceRecord]:
        self.edge.check(Request(caller, "ListResources", "list_resources", bridge=bridge or None))
        return self.service.list_resources(caller, bridge, type_)

    def stats(self, caller: Caller, usage_tenant: str = "", usage_since: float | None = None) -> dict[str, Any]:
        """The orchestrator's figures; with usage accounting, the usage rows of ``usage_tenant`` (every tenant
        when empty) since ``usage_since`` (Unix seconds). A scoped caller sees only its own tenant's."""
        self.edge.check(Request(caller, "GetStats", "stats"))
        if len(usage_tenant) > MAX_NAME_CHARS:
            raise InvalidArgument(f"usage_tenant is {len(usage_tenant)} characters; a tenant name has at most "
                                  f"{MAX_NAME_CHARS}")
        out = self.service.stats(caller)
        if self.usage is not None:
            tenant = caller.tenant if self._scoped_stats else (usage_tenant or None)
            rows = [] if self._scoped_stats and usage_tenant not in ("", caller.tenant) else \
                self.usage.query(tenant, usage_since)
            out["usage"] = {"since_unix": usage_since, "bucket_s": self.usage.bucket_s, "rows": rows}
        if self._scoped_stats:
            out["workers"] = [w for w in out["workers"] if w["tenant"] == caller.tenant]
            if self._visible is not None:
                visible = set(self._visible(caller.tenant, list(out["bridges"])))
                out["bridges"] = {k: v for k, v in out["bridges"].items() if k in visible}
            out["resources"] = self.service.resource_count(caller.tenant)
        return out

    # -- calls --------------------------------------------------------------------------------
    async def describe(self, caller: Caller, bridge: str) -> dict[str, Any]:
        req = Request(caller, "DescribeBridge", "describe", bridge=bridge or self.default_bridge)
        return await self.edge.run(req, lambda r: self.service.describe(caller, bridge))

    async def call(self, caller: Caller, bridge: str, command: str, args_json: str = "",
                   attachments: dict[str, bytes] | None = None, call_id: str = "",
                   timeout_s: float | None = None) -> Reply:
        check_payload(args_json, "args")
        req = Request(caller, "Call", "call", bridge=self.service.route_bridge(bridge, command), command=command,
                      payload_bytes=payload_size(args_json, attachments), code_sha256=self._code(args_json),
                      call_id=call_id, timeout_s=timeout_s)
        return await self.edge.run(req, lambda r: self.service.call(
            caller, bridge, command, args_json, attachments, call_id, r.timeout_s))

    def call_stream(self, caller: Caller, bridge: str, command: str, args_json: str = "",
                    attachments: dict[str, bytes] | None = None, call_id: str = "",
                    timeout_s: float | None = None) -> AsyncIterator[Event]:
        check_payload(args_json, "args")
        req = Request(caller, "CallStream", "call", bridge=self.service.route_bridge(bridge, command),
                      command=command, payload_bytes=payload_size(args_json, attachments),
                      code_sha256=self._code(args_json), call_id=call_id, timeout_s=timeout_s)
        return self.edge.stream(req, lambda r: self.service.call_stream(
            caller, bridge, command, args_json, attachments, call_id, r.timeout_s))

    async def local(self, caller: Caller, bridge: str, command: str, args_json: str,
                    op: Callable[[], Awaitable[T]]) -> T:
        """An operation the orchestrator answers itself (a DSPex session command), through the edge as a
        Call of ``command`` on ``bridge``: authorised, counted, given its deadline and audited like one."""
        check_payload(args_json, "args")
        req = Request(caller, "Call", "call", bridge=bridge, command=command,
                      payload_bytes=payload_size(args_json, None))
        return await self.edge.run(req, lambda r: op())

    async def cancel(self, caller: Caller, call_id: str) -> bool:
        req = Request(caller, "Cancel", "cancel", call_id=call_id)
        return await self.edge.run(req, lambda r: self.service.cancel(caller, call_id))

    async def answer(self, caller: Caller, call_id: str, request_id: str, result_json: str = "",
                     error: str = "") -> bool:
        """The caller's answer to a request of one of its streaming calls: part of that call, authorised as it."""
        info = self.service.call_info(caller, call_id)
        if info is None:
            return False  # no such call of this caller: another tenant's looks the same
        bridge, command = info
        check_payload(result_json, "the answer's result", always=True)  # the worker's parse is not strict
        req = Request(caller, "Answer", "call", bridge=bridge, command=command,
                      payload_bytes=payload_size(result_json) + payload_size(error), call_id=call_id)
        return await self.edge.run(req, lambda r: self.service.answer(caller, call_id, request_id, result_json,
                                                                       error))

    # -- resources ------------------------------------------------------------------------
    async def create_resource(self, caller: Caller, bridge: str, type_: str, config_json: str = "",
                              attachments: dict[str, bytes] | None = None, resource_id: str = "",
                              call_id: str = "", timeout_s: float | None = None) -> tuple[str, str]:
        check_payload(config_json, "config")
        req = Request(caller, "CreateResource", "create_resource", bridge=bridge or self.default_bridge,
                      resource_type=type_, resource_id=resource_id or None,
                      payload_bytes=payload_size(config_json, attachments), code_sha256=self._code(config_json),
                      call_id=call_id, timeout_s=timeout_s)
        return await self.edge.run(req, lambda r: self.service.create_resource(
            caller, bridge, type_, config_json, attachments, resource_id, call_id, r.timeout_s))

    async def execute_resource(self, caller: Caller, resource_id: str, inputs_json: str = "",
                               attachments: dict[str, bytes] | None = None, call_id: str = "",
                               timeout_s: float | None = None) -> Reply:
        check_payload(inputs_json, "inputs")
        req = Request(caller, "ExecuteResource", "execute_resource", resource_id=resource_id,
                      payload_bytes=payload_size(inputs_json, attachments), call_id=call_id, timeout_s=timeout_s)
        return await self.edge.run(req, lambda r: self.service.execute_resource(
            caller, resource_id, inputs_json, attachments, call_id, r.timeout_s))

    def execute_resource_stream(self, caller: Caller, resource_id: str, inputs_json: str = "",
                                attachments: dict[str, bytes] | None = None, call_id: str = "",
                                timeout_s: float | None = None) -> AsyncIterator[Event]:
        check_payload(inputs_json, "inputs")
        req = Request(caller, "ExecuteResourceStream", "execute_resource", resource_id=resource_id,
                      payload_bytes=payload_size(inputs_json), call_id=call_id, timeout_s=timeout_s)
        return self.edge.stream(req, lambda r: self.service.execute_resource_stream(
            caller, resource_id, inputs_json, attachments, call_id, r.timeout_s))

    async def delete_resource(self, caller: Caller, resource_id: str) -> bool:
        req = Request(caller, "DeleteResource", "delete_resource", resource_id=resource_id)
        return await self.edge.run(req, lambda r: self.service.delete_resource(caller, resource_id, r.timeout_s))

    def find_resource(self, caller: Caller, resource_id: str) -> ResourceRecord | None:
        """The caller's resource record, None when it has none by that id (no audit: a lookup, not a call)."""
        try:
            return self.service.resource(caller, resource_id)
        except NotFound:
            return None
