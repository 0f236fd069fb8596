"""The steps the edge applies to every request, each one concern.

A step may act when a request comes in (:meth:`Step.enter`: refuse it, hold
a slot, lower its deadline) and when its operation has ended
(:meth:`Step.exit`: release, record). Read-only calls pass only through
:meth:`Step.check`. The edge (:mod:`.pipeline`) runs them in the order
:func:`~orchestrator.edge.build_edge` gives:

1. :class:`ResolveResource`: the resource a resource call names, so policy sees its bridge and type;
2. :class:`Authorize`: the policy's rules, before any work; a denial names its rule;
3. :class:`AuditCall`: the outcome of every call let through, written before the reply goes out;
4. :class:`Quotas`: payload size, calls in flight and per minute, resources held;
5. :class:`Deadline`: the sooner of the client's deadline and the policy's.

Authentication comes before all of them (:class:`Authenticator`): it turns
a bearer token into the :class:`~orchestrator.service.Caller` a request carries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from runtimes.wire.errors import (
    BridgeNotFound,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    Unauthenticated,
)

from ..audit import AuditLog
from ..policy import CallSlot, Policy, Principal, QuotaTracker
from ..registry import ResourceRecord
from ..service import Caller
from .request import Outcome, Request

__all__ = ["AuditCall", "Authenticator", "Authorize", "Deadline", "Quotas", "RefuseSkipped", "ResolveResource", "Step"]


class Step:
    """One concern applied to requests at the edge; every hook defaults to doing nothing."""

    async def enter(self, req: Request) -> None:
        """Before the operation; raise to refuse the request."""

    async def exit(self, req: Request, outcome: Outcome) -> None:
        """After the operation (or after a later step refused it), in reverse order of entry."""

    def check(self, req: Request) -> None:
        """A read-only call (ListBridges, ListResources, GetStats); raise to refuse it."""


class Records(Protocol):
    """Where steps write audit records."""

    async def __call__(self, **fields: Any) -> None: ...


def recorder(audit: AuditLog | None) -> Records:
    """An async writer of audit records that leaves out empty fields (a no-op without a log)."""

    async def record(**fields: Any) -> None:
        if audit is not None:
            await audit.note(**fields)

    return record


def _who(req: Request) -> dict[str, Any]:
    c = req.caller
    return {"tenant": c.tenant, "principal": c.principal, "source": c.source, "method": req.method}


class Authenticator:
    """Bearer token -> :class:`Caller`; failures are audited (``auth_failure``).

    Args:
        policy: the tenants and their tokens; None serves everyone as tenant ``default``.
        audit: the audit log, if any.
    """

    def __init__(self, policy: Policy | None, audit: AuditLog | None) -> None:
        self.policy = policy
        self.audit = audit
        #: Called on every failed authentication (metrics).
        self.on_failure: Callable[[], None] | None = None

    def __call__(self, token: str | None, source: str) -> Caller:
        if self.policy is None:
            return Caller(source=source)
        try:
            p = self.policy.authenticate(token)
        except Unauthenticated:
            if self.on_failure is not None:
                self.on_failure()
            if self.audit is not None:
                self.audit.record(event="auth_failure", source=source, outcome="denied",
                                  error_code="UNAUTHENTICATED")
            raise
        cap = self.policy.quotas_for(p.tenant).max_workers
        return Caller(tenant=p.tenant, principal=p.principal, source=source, max_workers=cap or 0)


class Lookup(Protocol):
    def resource(self, caller: Caller, resource_id: str) -> ResourceRecord: ...


class ResolveResource(Step):
    """Fill in the bridge and type of the resource a request names.

    Another tenant's resource and a missing one both answer NOT_FOUND; the
    failed lookup is audited like a failed call.
    """

    def __init__(self, service: Lookup, record: Records) -> None:
        self.service = service
        self.record = record

    async def enter(self, req: Request) -> None:
        if req.resource_id is None or req.bridge is not None:
            return
        try:
            rec = self.service.resource(req.caller, req.resource_id)
        except NotFound as err:
            await self.record(event="call", resource_id=req.resource_id, outcome="error", error_code=err.code,
                              **_who(req))
            raise
        req.bridge, req.resource_type = rec.bridge, rec.type


class Authorize(Step):
    """The policy's rules, before any work. A denial is ``PERMISSION_DENIED`` naming its rule, and audited."""

    def __init__(self, policy: Policy, audit: AuditLog | None, record: Records) -> None:
        self.policy = policy
        self.audit = audit
        self.record = record

    def _decide(self, req: Request, **scope: Any) -> str:
        c = req.caller
        return self.policy.check(Principal(c.tenant, c.principal), action=req.action, **scope).rule

    async def enter(self, req: Request) -> None:
        try:
            req.rule = self._decide(req, bridge=req.bridge or None, command=req.command,
                                    resource_type=req.resource_type)
        except PermissionDenied as err:
            await self.record(event="denial", decision="deny", rule=err.details.get("rule"), outcome="denied",
                              error_code=err.code, **_fields(req))
            raise

    def check(self, req: Request) -> None:
        try:
            self._decide(req, bridge=req.bridge or None)
        except PermissionDenied as err:
            if self.audit is not None:
                self.audit.record(**{k: v for k, v in {
                    "event": "denial", "decision": "deny", "rule": err.details.get("rule"), "outcome": "denied",
                    "error_code": err.code, **_who(req), "bridge": req.bridge}.items() if v})
            raise


class ImageOf(Protocol):
    def worker_image(self, worker_id: str) -> str | None: ...


class AuditCall(Step):
    """Record each call let through, with its outcome and duration, before the reply goes out."""

    def __init__(self, service: ImageOf, record: Records) -> None:
        self.service = service
        self.record = record

    async def enter(self, req: Request) -> None:
        req.started = time.monotonic()

    async def exit(self, req: Request, outcome: Outcome) -> None:
        duration = round((time.monotonic() - req.started) * 1000, 3)
        if outcome.error is not None:
            err = outcome.error
            await self.record(event="call", decision="allow", rule=req.rule, outcome="error", error_code=err.code,
                              duration_ms=duration,
                              extra={"quota": err.details.get("quota")} if isinstance(err, QuotaExceeded) else None,
                              **_fields(req))
        elif outcome.ok:
            worker_id = getattr(outcome.result, "worker_id", "")
            await self.record(event="call", decision="allow", rule=req.rule, outcome="ok", duration_ms=duration,
                              image_id=self.service.worker_image(worker_id) if worker_id else None, **_fields(req))


class Held(Protocol):
    def resource_count(self, tenant: str) -> int: ...

    def resource(self, caller: Caller, resource_id: str) -> ResourceRecord: ...


class Quotas(Step):
    """The tenant's quotas: payload size, calls in flight and per minute, and resources held (on create)."""

    def __init__(self, policy: Policy, tracker: QuotaTracker, service: Held) -> None:
        self.policy = policy
        self.tracker = tracker
        self.service = service
        self._slots: dict[int, CallSlot] = {}

    async def enter(self, req: Request) -> None:
        tenant = req.caller.tenant
        quotas = self.policy.quotas_for(tenant)
        self.tracker.check_payload(tenant, req.payload_bytes, quotas)
        if req.method == "Answer":
            return  # part of a streaming call that already holds its slot; counting it again could deadlock it
        slot = self.tracker.start_call(tenant, quotas)
        if req.action == "create_resource" and not self._exists(req):
            # An id that exists answers ALREADY_EXISTS from the service, whatever the count.
            try:
                self.tracker.check_resources(tenant, self.service.resource_count(tenant), quotas)
            except QuotaExceeded:
                self.tracker.end_call(slot)
                raise
        self._slots[id(req)] = slot

    def _exists(self, req: Request) -> bool:
        if not req.resource_id:
            return False
        try:
            self.service.resource(req.caller, req.resource_id)
        except NotFound:
            return False
        return True

    async def exit(self, req: Request, outcome: Outcome) -> None:
        slot = self._slots.pop(id(req), None)
        if slot is not None:
            self.tracker.end_call(slot)


class Deadline(Step):
    """The sooner of the client's deadline and the policy's ``call_timeout_s`` for the tenant and bridge."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    async def enter(self, req: Request) -> None:
        if req.bridge:
            req.timeout_s = self.policy.deadline_s(req.caller.tenant, req.bridge, req.timeout_s)


def _fields(req: Request) -> dict[str, Any]:
    return {**_who(req), "command": req.command, "bridge": req.bridge, "resource_id": req.resource_id,
            "code_sha256": req.code_sha256, "call_id": req.call_id}


class RefuseSkipped(Step):
    """Calls naming a bridge left out at start fail at once with ``UNKNOWN_BRIDGE`` and the reason.

    Args:
        skipped: bridge name -> why it was left out; read on every call (it is filled at start).
    """

    def __init__(self, skipped: Mapping[str, str]) -> None:
        self.skipped = skipped

    async def enter(self, req: Request) -> None:
        reason = self.skipped.get(req.bridge or "")
        if reason is not None:
            raise BridgeNotFound(f"bridge {req.bridge!r} is not served: it was skipped at start: {reason}",
                                 details={"bridge": req.bridge, "skipped": reason})
