"""The orchestrator with a policy and an audit log in front of every call.

Order for each request: authenticate (token -> tenant), authorise (before
any work; a denial names its rule), quotas, then the call itself with the
policy's deadline; the outcome is written to the audit log before the reply
goes out. Secrets reach a worker only when its tenant claims it, and only the
names its bridge declares.

Egress. When some tenant's policy grants a bridge an allowlist, the docker
backend opens the internal egress network and the egress proxy listens on its
gateway (:mod:`orchestrator.egress`, :mod:`orchestrator.backends.docker_egress`).
A worker claimed by a tenant with an allowlist for its bridge is moved onto that
network, its IP is registered with the proxy under the tenant's allowlist, and
it is configured with ``HTTPS_PROXY`` / ``HTTP_PROXY`` pointing at the proxy;
its IP is revoked when it is destroyed. Every proxy decision is audited
(``event="egress"``). Other workers stay on network ``none``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from runtimes.core.errors import (
    ConfigError,
    MLBridgeError,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    Unauthenticated,
)

from ..audit import AuditLog, code_digest
from ..calls import Reply
from ..config import Config
from ..egress import RULE as EGRESS_RULE
from ..egress import EgressDecision, EgressProxy
from ..registry import ResourceRecord
from ..service import Caller, Event, Orchestrator
from ..worker import Worker
from .engine import Policy, Principal, load_policy
from .quotas import QuotaTracker

log = logging.getLogger("mlbridge.policy")
# Set in a worker by Configure when its tenant has an allowlist (docker backend).
PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
NO_PROXY_ENV = ("NO_PROXY", "no_proxy")


def _code_hash(args_json: bytes) -> str | None:
    """SHA-256 of submitted source code (``code`` in the args), never the code itself."""
    if b'"code"' not in args_json:
        return None
    try:
        code = json.loads(args_json).get("code")
    except (ValueError, AttributeError):
        return None
    return code_digest(code) if isinstance(code, str) else None


class GuardedOrchestrator(Orchestrator):
    def __init__(self, config: Config, backend: Any = None, *, policy: Policy | None = None,
                 audit: AuditLog | None = None) -> None:
        super().__init__(config, backend)
        self.policy = policy or (load_policy(config.policy) if config.policy else Policy.permissive())
        self.audit = audit or (AuditLog(config.audit_log) if config.audit_log else None)
        self.quota = QuotaTracker()
        self._declared: dict[str, set[str]] = {}
        self.egress: EgressProxy | None = None
        self._egress_ips: dict[str, str] = {}  # worker id -> its address on the egress network
        self._egress_warned = False

    # -- lifecycle and hooks -----------------------------------------------------------
    async def start(self) -> None:
        await self._record(event="policy_load", outcome="ok", policy_hash=self.policy.source_hash,
                           extra={"source": str(self.policy.source), "tenants": list(self.policy.tenants)})
        await self._start_egress()
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        if self.egress is not None:
            await self.egress.close()
            self.egress = None
        self._egress_ips.clear()
        if self.audit is not None:
            self.audit.close()

    # -- egress -----------------------------------------------------------------------------
    def egress_bridges(self) -> dict[str, list[str]]:
        """Configured bridges for which some tenant has an allowlist -> those tenants."""
        out: dict[str, list[str]] = {}
        for bridge in self.config.bridges:
            tenants = [t for t in self.policy.tenants if self.policy.network_for(t, bridge).mode == "allowlist"]
            if tenants:
                out[bridge] = tenants
        return out

    async def _start_egress(self) -> None:
        """Open the egress network and proxy when the policy has allowlists (docker backend only)."""
        wanted = self.egress_bridges()
        if not wanted:
            return
        what = "; ".join(f"bridge {b}: tenants {', '.join(ts)}" for b, ts in sorted(wanted.items()))
        if self.backend.name != "docker":
            if not self._egress_warned:
                log.warning("EGRESS ALLOWLISTS ARE NOT ENFORCED (%s): the %s backend isolates nothing, so its "
                            "workers reach any network the host reaches. Use the docker backend to enforce "
                            "them.", what, self.backend.name)
                self._egress_warned = True
            return
        bad = sorted(b for b in wanted if self.config.bridges[b].network.strip() != "none")
        if bad:
            raise ConfigError(f"egress allowlists need bridges whose workers start on network none; "
                              f"{', '.join(bad)} set(s) another network in the configuration")
        backend: Any = self.backend
        try:
            gateway = await backend.open_egress()
            self.egress = EgressProxy(gateway, 0, on_decision=self._egress_decision)
            port = await self.egress.start()
            await backend.guard_egress(port)
        except BaseException:
            if self.egress is not None:
                await self.egress.close()
                self.egress = None
            await backend.close_egress()
            raise
        log.info("egress proxy on %s for %s", self.egress.url, what)

    async def claim_env(self, tenant: str, bridge: str, worker: Worker) -> dict[str, str]:
        net = self.policy.network_for(tenant, bridge)
        if net.mode != "allowlist":
            return {}
        if self.egress is None:
            if self.backend.name == "docker":
                log.warning("tenant %s has an egress allowlist for bridge %s but no egress proxy runs (the "
                            "policy had none at start); its worker stays on network none", tenant, bridge)
            return {}
        ip = await self.backend.connect_egress(worker.handle)  # type: ignore[attr-defined]
        self._egress_ips[worker.id] = ip
        self.egress.allow(ip, net.allowlist, tenant=tenant, bridge=bridge, worker_id=worker.id)
        url = self.egress.url
        return {**dict.fromkeys(PROXY_ENV, url), **dict.fromkeys(NO_PROXY_ENV, "")}

    async def _egress_decision(self, d: EgressDecision) -> None:
        extra: dict[str, Any] = {"target": d.target, "reason": d.reason, "via": d.method}
        if d.suppressed:
            extra["suppressed"] = d.suppressed
        await self._record(event="egress", tenant=d.tenant, bridge=d.bridge, worker_id=d.worker_id,
                           source=d.source, decision="allow" if d.allowed else "deny", rule=EGRESS_RULE,
                           outcome="ok" if d.allowed else "denied", extra=extra)

    async def _record(self, **fields: Any) -> None:
        if self.audit is not None:
            await self.audit.arecord(**{k: v for k, v in fields.items() if v not in (None, "")})

    def authenticate(self, token: str | None, source: str) -> Caller:
        try:
            p = self.policy.authenticate(token)
        except Unauthenticated:
            if self.audit is not None:
                self.audit.record(event="auth_failure", source=source, outcome="denied",
                                  error_code="UNAUTHENTICATED")
            raise
        return Caller(tenant=p.tenant, principal=p.principal, source=source)

    async def secrets_for(self, tenant: str, bridge: str, worker: Worker | None = None) -> dict[str, str]:
        declared = set(self.pools[bridge].cfg.secrets) if bridge in self.pools else set()
        if worker is not None:
            if bridge not in self._declared:
                self._declared[bridge] = set((await worker.describe()).required_secrets)
            declared |= self._declared[bridge]
        secrets = self.policy.secrets_for(tenant, bridge, sorted(declared))
        if self.audit is not None and secrets:
            self.audit.redact_values(secrets.values())
        return secrets

    async def on_worker_event(self, event: str, worker: Worker, extra: dict[str, Any]) -> None:
        await super().on_worker_event(event, worker, extra)
        if event == "worker_claim":
            await self._apply_tenant_limits(worker, extra.get("tenant", ""))
            return
        if event in ("worker_stop", "worker_kill") and worker.id in self._egress_ips:
            ip = self._egress_ips.pop(worker.id)
            if self.egress is not None:
                self.egress.revoke(ip, worker_id=worker.id)
        extra = dict(extra)
        usage = extra.pop("usage", None) or None
        await self._record(event=event, bridge=worker.bridge, worker_id=worker.id, tenant=worker.tenant or None,
                           image_id=worker.handle.image_id, outcome="ok", usage=usage, extra=extra)

    async def _apply_tenant_limits(self, worker: Worker, tenant: str) -> None:
        """A tenant may lower its workers' limits below the operator's, never raise them."""
        cfg = self.pools[worker.bridge].cfg.limits
        want = self.policy.limits_for(tenant, worker.bridge)
        lower: dict[str, Any] = {}
        if want.get("cpus") and want["cpus"] < cfg.cpus:
            lower["cpus"] = want["cpus"]
        if want.get("memory_bytes") and want["memory_bytes"] < cfg.memory_bytes:
            lower["memory_bytes"] = want["memory_bytes"]
        if want.get("pids") and want["pids"] < cfg.pids:
            lower["pids"] = want["pids"]
        if lower:
            await self.backend.apply_limits(worker.handle, lower)

    def timeout_for(self, caller: Caller, bridge: str, client_timeout_s: float | None) -> float:
        return min(super().timeout_for(caller, bridge, client_timeout_s),
                   self.policy.deadline_s(caller.tenant, bridge, client_timeout_s))

    def check_resource_quota(self, caller: Caller) -> None:
        self.quota.check_resources(caller.tenant, self.registry.count(caller.tenant),
                                   self.policy.quotas_for(caller.tenant))

    def _max_workers(self, caller: Caller, bridge: str) -> int:
        cap = self.policy.quotas_for(caller.tenant).max_workers
        per = self.pools[bridge].cfg.workers_per_tenant if bridge in self.pools else 1
        return min(per, cap) if cap else per

    # -- the guard ------------------------------------------------------------------------
    async def _guard(self, caller: Caller, method: str, action: str, run: Callable[[], Awaitable[Any]], *,
                     bridge: str | None = None, command: str | None = None, resource_type: str | None = None,
                     resource_id: str | None = None, payload: int = 0, code: str | None = None,
                     call_id: str | None = None) -> Any:
        fields = {"tenant": caller.tenant, "principal": caller.principal, "source": caller.source,
                  "method": method, "command": command, "bridge": bridge, "resource_id": resource_id,
                  "code_sha256": code, "call_id": call_id}
        try:
            decision = self.policy.check(Principal(caller.tenant, caller.principal), action=action,
                                         bridge=bridge or None, command=command, resource_type=resource_type)
        except PermissionDenied as err:
            await self._record(event="denial", decision="deny", rule=err.details.get("rule"), outcome="denied",
                               error_code=err.code, **fields)
            raise
        started = time.monotonic()
        quotas = self.policy.quotas_for(caller.tenant)
        slot = None
        try:
            self.quota.check_payload(caller.tenant, payload, quotas)
            slot = self.quota.start_call(caller.tenant, quotas)
            result = await run()
        except MLBridgeError as err:
            await self._record(event="call", decision="allow", rule=decision.rule, outcome="error",
                               error_code=err.code, duration_ms=round((time.monotonic() - started) * 1000, 3),
                               extra={"quota": err.details.get("quota")} if isinstance(err, QuotaExceeded) else None,
                               **fields)
            raise
        finally:
            if slot is not None:
                self.quota.end_call(slot)
        await self._record(event="call", decision="allow", rule=decision.rule, outcome="ok",
                           duration_ms=round((time.monotonic() - started) * 1000, 3),
                           image_id=self._image_of(result), **fields)
        return result

    def _image_of(self, result: Any) -> str | None:
        wid = getattr(result, "worker_id", "")
        for pool in self.pools.values():
            if wid in pool.workers:
                return pool.workers[wid].handle.image_id or None
        return None

    async def _rec_bridge(self, caller: Caller, method: str, resource_id: str) -> tuple[str, str]:
        """The bridge and type of the caller's resource; NOT_FOUND (audited) for others' and missing ones alike."""
        try:
            rec = self._resource(caller, resource_id)
        except NotFound as err:
            await self._record(event="call", tenant=caller.tenant, principal=caller.principal, source=caller.source,
                               method=method, resource_id=resource_id, outcome="error", error_code=err.code)
            raise
        return rec.bridge, rec.type

    # -- the public operations ------------------------------------------------------------
    def _check_sync(self, caller: Caller, method: str, action: str, bridge: str | None = None) -> None:
        """Authorise a read-only call; a denial is audited like any other."""
        try:
            self.policy.check(Principal(caller.tenant, caller.principal), action=action, bridge=bridge)
        except PermissionDenied as err:
            if self.audit is not None:
                self.audit.record(**{k: v for k, v in {
                    "event": "denial", "decision": "deny", "rule": err.details.get("rule"), "outcome": "denied",
                    "error_code": err.code, "tenant": caller.tenant, "principal": caller.principal,
                    "source": caller.source, "method": method, "bridge": bridge}.items() if v})
            raise

    def list_bridges(self, caller: Caller) -> list[dict[str, Any]]:
        self._check_sync(caller, "ListBridges", "list_bridges")
        visible = set(self.policy.visible_bridges(caller.tenant, self.pools))
        return [b for b in super().list_bridges(caller) if b["name"] in visible]

    async def describe(self, caller: Caller, bridge: str) -> dict[str, Any]:
        name = bridge or self.config.default_bridge
        return await self._guard(caller, "DescribeBridge", "describe", lambda: super(GuardedOrchestrator, self)
                                 .describe(caller, bridge), bridge=name)

    async def call(self, caller: Caller, bridge: str, command: str, args_json: bytes = b"",
                   attachments: dict[str, bytes] | None = None, call_id: str = "",
                   timeout_s: float | None = None) -> Reply:
        if ":" not in command:
            # Legacy DSPex commands: the compat layer calls the guarded operations
            # below for each step, so each step is authorised, counted and audited.
            return await super().call(caller, bridge, command, args_json, attachments, call_id, timeout_s)
        name = self.route_bridge(bridge, command)
        size = len(args_json) + sum(len(v) for v in (attachments or {}).values())
        return await self._guard(
            caller, "Call", "call",
            lambda: super(GuardedOrchestrator, self).call(caller, bridge, command, args_json, attachments,
                                                          call_id, timeout_s),
            bridge=name, command=command, payload=size,
            code=_code_hash(args_json), call_id=call_id)

    async def call_stream(self, caller: Caller, bridge: str, command: str, args_json: bytes = b"",
                          attachments: dict[str, bytes] | None = None, call_id: str = "",
                          timeout_s: float | None = None) -> AsyncIterator[Event]:
        name = self.route_bridge(bridge, command)
        size = len(args_json) + sum(len(v) for v in (attachments or {}).values())
        gen = super().call_stream(caller, bridge, command, args_json, attachments, call_id, timeout_s)
        async for ev in self._guard_stream(caller, "CallStream", "call", gen, bridge=name, command=command,
                                           payload=size, code=_code_hash(args_json), call_id=call_id):
            yield ev

    async def _guard_stream(self, caller: Caller, method: str, action: str, gen: AsyncIterator[Event],
                            **kw: Any) -> AsyncIterator[Event]:
        """Streams: the guard runs around draining the stream into the client."""
        import asyncio

        queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=self.config.max_stream_buffer)
        final: list[Any] = []

        async def drain() -> Any:
            async for ev in gen:
                if ev[0] == "final":
                    final.append(ev[1])
                await queue.put(ev)
            return final[0] if final else None

        task = asyncio.ensure_future(self._guard(caller, method, action, drain, **kw))
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()  # type: ignore[misc]
                    continue
                getter.cancel()
                while not queue.empty():
                    yield queue.get_nowait()  # type: ignore[misc]
                task.result()  # raises the call's error, if any
                return
        finally:
            if not task.done():
                task.cancel()

    async def cancel(self, caller: Caller, call_id: str) -> bool:
        return await self._guard(caller, "Cancel", "cancel", lambda: super(GuardedOrchestrator, self)
                                 .cancel(caller, call_id), call_id=call_id)

    async def create_resource(self, caller: Caller, bridge: str, type_: str, config_json: bytes = b"",
                              attachments: dict[str, bytes] | None = None, resource_id: str = "",
                              call_id: str = "", timeout_s: float | None = None) -> tuple[str, bytes]:
        name = bridge or self.config.default_bridge
        size = len(config_json) + sum(len(v) for v in (attachments or {}).values())
        return await self._guard(
            caller, "CreateResource", "create_resource",
            lambda: super(GuardedOrchestrator, self).create_resource(
                caller, bridge, type_, config_json, attachments, resource_id, call_id, timeout_s),
            bridge=name, resource_type=type_, resource_id=resource_id or None, payload=size,
            code=_code_hash(config_json), call_id=call_id)

    async def execute_resource(self, caller: Caller, resource_id: str, inputs_json: bytes = b"",
                               attachments: dict[str, bytes] | None = None, call_id: str = "",
                               timeout_s: float | None = None) -> Reply:
        bridge, rtype = await self._rec_bridge(caller, "ExecuteResource", resource_id)
        size = len(inputs_json) + sum(len(v) for v in (attachments or {}).values())
        return await self._guard(
            caller, "ExecuteResource", "execute_resource",
            lambda: super(GuardedOrchestrator, self).execute_resource(
                caller, resource_id, inputs_json, attachments, call_id, timeout_s),
            bridge=bridge, resource_type=rtype, resource_id=resource_id, payload=size, call_id=call_id)

    async def execute_resource_stream(self, caller: Caller, resource_id: str, inputs_json: bytes = b"",
                                      attachments: dict[str, bytes] | None = None, call_id: str = "",
                                      timeout_s: float | None = None) -> AsyncIterator[Event]:
        bridge, rtype = await self._rec_bridge(caller, "ExecuteResourceStream", resource_id)
        gen = super().execute_resource_stream(caller, resource_id, inputs_json, attachments, call_id, timeout_s)
        async for ev in self._guard_stream(caller, "ExecuteResourceStream", "execute_resource", gen,
                                           bridge=bridge, resource_type=rtype, resource_id=resource_id,
                                           payload=len(inputs_json), call_id=call_id):
            yield ev

    def list_resources(self, caller: Caller, bridge: str = "", type_: str = "") -> list[ResourceRecord]:
        self._check_sync(caller, "ListResources", "list_resources", bridge=bridge or None)
        return super().list_resources(caller, bridge, type_)

    async def delete_resource(self, caller: Caller, resource_id: str) -> bool:
        bridge, rtype = await self._rec_bridge(caller, "DeleteResource", resource_id)
        return await self._guard(caller, "DeleteResource", "delete_resource",
                                 lambda: super(GuardedOrchestrator, self).delete_resource(caller, resource_id),
                                 bridge=bridge, resource_type=rtype, resource_id=resource_id)

    def stats(self, caller: Caller) -> dict[str, Any]:
        self._check_sync(caller, "GetStats", "stats")
        out = super().stats(caller)
        if not self.policy.is_permissive:
            out["workers"] = [w for w in out["workers"] if w["tenant"] == caller.tenant]
            visible = set(self.policy.visible_bridges(caller.tenant, self.pools))
            out["bridges"] = {k: v for k, v in out["bridges"].items() if k in visible}
            out["resources"] = self.registry.count(caller.tenant)
        return out
