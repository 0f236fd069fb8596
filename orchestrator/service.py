"""The orchestrator's domain logic: pools, routing, resources and calls, free of gRPC and of policy.

A :class:`Caller` (tenant, principal, source address, and the tenant's cap
on workers) comes with every call; every resource lookup is scoped to the
caller's tenant, so another tenant's resource is indistinguishable from one
that does not exist. Who may call what, quotas, deadlines and the audit log
are applied in front of this service, at the API edge
(:mod:`orchestrator.edge`); what a claim hands a worker is the claim
pipeline's business (:mod:`orchestrator.claims`). This module knows neither.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from runtimes.wire import metadata as meta
from runtimes.wire.errors import (
    AlreadyExists,
    BridgeNotFound,
    ConfigError,
    DeadlineExceeded,
    InvalidArgument,
    MLBridgeError,
    NotFound,
    OutOfMemory,
    QuotaExceeded,
    UnknownCommand,
    WorkerDied,
)
from runtimes.wire.payload import dumps, loads_lenient
from runtimes.wire.proto import runtime_pb2 as rpb

from .backends.base import Backend, SupportsGpus
from .calls import CallRunner, Reply, created_resources
from .circuit import Circuit, CircuitBreakers, CircuitSettings
from .claims import ClaimPipeline
from .config import Config, check_environment
from .images import image_tag
from .pool import Listener, Pool
from .probe import NullProbe, Probe
from .registry import Registry, ResourceRecord
from .worker import Worker

log = logging.getLogger("mlbridge.orchestrator")

__all__ = ["Caller", "Event", "ExportSink", "Orchestrator", "new_call_id"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
# Resource commands go through CreateResource/ExecuteResource/DeleteResource so
# that the orchestrator records and routes them.
_RESOURCE_COMMANDS = {"common:create_resource", "common:execute_resource", "common:delete_resource"}

Event = tuple[str, Any]


@dataclass(frozen=True)
class Caller:
    """Who a call is for.

    Attributes:
        tenant: every resource and worker belongs to one tenant.
        principal: who, within the tenant (for the audit log).
        source: the peer address.
        max_workers: the most workers of one bridge the tenant may hold at once;
            0 leaves it to the bridge's ``workers_per_tenant``.
    """

    tenant: str = "default"
    principal: str = "anonymous"
    source: str = ""
    max_workers: int = 0


class ExportSink(Protocol):
    """Takes models a worker exported into the model store (:class:`orchestrator.models.ModelCatalog`)."""

    async def import_exports(self, tenant: str, worker: Worker, metadata: Mapping[str, str]) -> Any:
        """Import what ``metadata`` (a reply's) lists as exported by ``worker``, as ``tenant``'s models."""
        ...


def new_call_id() -> str:
    return uuid.uuid4().hex


def _log_event(event: str, worker: Worker, extra: dict[str, Any]) -> None:
    log.info("%s %s %s", event, worker.id, extra)


def _log_circuit(bridge: str, tenant: str, circuit: Circuit) -> None:
    if circuit.state == "open":
        log.warning("circuit of tenant %s on bridge %s is open for %.1fs after %d failures in a row (last: %s)",
                    tenant, bridge, circuit.open_for, circuit.failures, circuit.reason)
    else:
        log.info("circuit of tenant %s on bridge %s is %s", tenant, bridge, circuit.state)


class Orchestrator:
    """Pools, routing, resources and calls for every configured bridge.

    Args:
        config: the configuration.
        backend: runs the workers.
        registry: resource specs and replayable calls.
        claims: hands a warm worker to a tenant.
        listeners: told of every worker event, besides the log.
        exports: takes models workers export into the model store.
        probe: told of acquisitions, claims and runtime calls (metrics, usage, traces).
    """

    def __init__(self, config: Config, backend: Backend, registry: Registry, claims: ClaimPipeline, *,
                 listeners: Sequence[Listener] = (), exports: ExportSink | None = None,
                 probe: Probe | None = None) -> None:
        self.config = config
        self.id = uuid.uuid4().hex[:12]
        self.backend = backend
        self.registry = registry
        self.claims = claims
        self.exports = exports
        self.listeners: tuple[Listener, ...] = (_log_event, self._on_worker_event, *listeners)
        self.circuits = CircuitBreakers(self._circuit_settings, on_change=_log_circuit)
        self.probe: Probe = probe or NullProbe()
        self.runner = CallRunner(self.probe)
        #: Bridges left out at start because their framework is not installed (name -> why).
        self.skipped: dict[str, str] = {}
        self.pools: dict[str, Pool] = {}
        self._describe: dict[str, dict[str, Any]] = {}
        self.started = time.time()
        self.calls_total = 0
        self.errors_total = 0
        self.retries_total = 0

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        """Validate the environment, reap leftovers, start every pool concurrently.

        Raises:
            ConfigError: a missing variable, package or image, GPUs the backend cannot
                give, or a bridge whose workers cannot start; the message says which
                and how to fix it.
        """
        check_environment(self.config)
        self._check_gpus()
        await self.backend.prepare(self.config)
        reaped = await self.backend.reap(self.id)
        if reaped:
            log.warning("removed %d worker(s) left by an earlier orchestrator", reaped)
        for name, bcfg in self.config.bridges.items():
            self.pools[name] = Pool(name, bcfg, self.backend, orchestrator_id=self.id,
                                    max_message_bytes=self.config.max_message_bytes, claims=self.claims,
                                    listeners=self.listeners, probe=self.probe)
        results = await asyncio.gather(*(p.start() for p in self.pools.values()), return_exceptions=True)
        failed = [(n, r) for n, r in zip(self.pools, results, strict=True) if isinstance(r, BaseException)]
        if failed:
            await self.stop()
            raise ConfigError("bridges failed to start:\n" + "\n".join(f"  {n}: {r}" for n, r in failed))

    def _check_gpus(self) -> None:
        wanting = sorted(n for n, b in self.config.bridges.items() if b.limits.gpus)
        if not wanting:
            return
        if not isinstance(self.backend, SupportsGpus):
            raise ConfigError(f"bridge(s) {', '.join(wanting)} ask for GPUs (limits.gpus), which the "
                              f"{self.backend.name} backend cannot give; use a backend that can (docker)")
        for name in wanting:
            self.backend.check_gpus(name, self.config.bridges[name])

    async def stop(self) -> None:
        """Drain every pool, stop its workers, release the backend and the registry."""
        await self.runner.close()
        await asyncio.gather(*(p.stop() for p in self.pools.values()), return_exceptions=True)
        await self.backend.close()
        self.registry.close()

    # -- lookups ----------------------------------------------------------------
    def pool(self, bridge: str) -> Pool:
        """The pool of ``bridge`` (the default bridge when empty).

        Raises:
            BridgeNotFound: no such bridge is configured.
        """
        name = bridge or self.config.default_bridge
        try:
            return self.pools[name]
        except KeyError:
            raise BridgeNotFound(
                f"unknown bridge {name!r}; bridges: {', '.join(sorted(self.pools)) or 'none'}"
            ) from None

    def resource(self, caller: Caller, resource_id: str) -> ResourceRecord:
        """The caller's resource ``resource_id``.

        Raises:
            NotFound: no such resource of the caller's tenant (another tenant's looks the same).
        """
        rec = self.registry.get(caller.tenant, resource_id)
        if rec is None:
            raise NotFound(f"resource {resource_id!r} not found")
        return rec

    def resource_count(self, tenant: str) -> int:
        return self.registry.count(tenant)

    def route_bridge(self, bridge: str, command: str) -> str:
        """The bridge a call goes to: as named, else the command's namespace, else the default."""
        if bridge:
            return bridge
        ns = command.partition(":")[0]
        return ns if ns in self.pools else self.config.default_bridge

    def worker_image(self, worker_id: str) -> str | None:
        """The image id of a live worker, None when unknown (or gone)."""
        for pool in self.pools.values():
            worker = pool.workers.get(worker_id)
            if worker is not None:
                return worker.handle.image_id or None
        return None

    def _circuit_settings(self, bridge: str) -> CircuitSettings:
        c = self.config.bridges[bridge].circuit
        return CircuitSettings(c.failures, c.open_s, c.max_open_s)

    def _on_worker_event(self, event: str, worker: Worker, extra: dict[str, Any]) -> None:
        """A claimed worker's death counts against its tenant's circuit on that bridge."""
        if event == "worker_kill" and worker.tenant:
            self.circuits.failed(worker.bridge, worker.tenant, str(extra.get("reason") or extra.get("cause") or ""))

    async def _retry(self, caller: Caller, pool: Pool, req: rpb.CallRequest, first: WorkerDied, started: float,
                     timeout_s: float | None, resource: ResourceRecord | None = None) -> Reply:
        """Run a retry-safe call once more, on a replacement worker (its resource re-created there), within
        what is left of its deadline; the reply says so (``mlbridge-retried``: the first attempt's error)."""
        left = self._timeout(pool, timeout_s) - (time.monotonic() - started)
        if left <= 0.05:
            raise first
        log.warning("retrying call %s (%s) of tenant %s on a new worker: %s", req.call_id, req.command,
                    caller.tenant, first.message)
        self.retries_total += 1
        if resource is not None:
            pool, worker = await self._holder(caller, resource, left)
        else:
            worker = await self._acquire(caller, pool, left)
        req.traceparent = ""
        left = self._timeout(pool, timeout_s) - (time.monotonic() - started)
        reply = await self._counted(caller, pool, self.runner.unary(caller.tenant, pool, worker, req, max(left, 0.05)))
        reply.metadata[meta.RETRIED] = first.flat()[:300]
        return reply

    def _max_workers(self, caller: Caller, pool: Pool) -> int:
        per = pool.cfg.workers_per_tenant
        return min(per, caller.max_workers) if caller.max_workers else per

    def _timeout(self, pool: Pool, timeout_s: float | None) -> float:
        limit = pool.cfg.call_timeout_s
        return min(limit, timeout_s) if timeout_s else limit

    async def _acquire(self, caller: Caller, pool: Pool, timeout_s: float | None = None) -> Worker:
        """One of the caller's workers; a worker new to the tenant first gets back what the tenant lost."""
        probing = self.circuits.admit(pool.name, caller.tenant)
        token = self.probe.acquire_begin(pool.name)
        try:
            worker = await pool.acquire(caller.tenant, max_workers=self._max_workers(caller, pool))
            if not worker.restored:
                await self._restore_lost(caller, pool, worker, timeout_s)
        except MLBridgeError as exc:
            if isinstance(exc, QuotaExceeded) or pool.closed:
                if probing:
                    self.circuits.released(pool.name, caller.tenant)
            else:  # no worker could be started or handed over for this tenant
                self.circuits.failed(pool.name, caller.tenant, f"no worker: {exc}")
            raise
        except BaseException:
            if probing:
                self.circuits.released(pool.name, caller.tenant)
            raise
        finally:
            self.probe.acquire_end(token, pool.name)
        return worker

    async def _restore_lost(self, caller: Caller, pool: Pool, worker: Worker, timeout_s: float | None) -> None:
        """Re-create, on a worker new to the tenant, every resource of the tenant and bridge whose worker is gone.

        Oldest first, so resources that refer to others find them; with their
        kept state. Once per worker: callers arriving meanwhile wait for it, so
        nothing is re-created twice. A resource that cannot be re-created is
        logged and left lost; using it tries again and reports why.
        """
        async with worker.restore_lock:
            if worker.restored:
                return
            for r in self._lost(caller, pool):
                log.info("re-creating resource %s on worker %s from its spec", r.resource_id, worker.id)
                try:
                    await self._create_on(caller, pool, worker, r.resource_id, r.type, r.config, None, "",
                                          timeout_s, state=r.state)
                except MLBridgeError as exc:
                    log.warning("could not re-create resource %s: %s", r.resource_id, exc)
                    continue
                r.worker_id = worker.id
            worker.restored = True

    def _lost(self, caller: Caller, pool: Pool) -> list[ResourceRecord]:
        """The caller's resources of this bridge whose worker is gone (or never was, after a restart)."""
        return [r for r in self.registry.list(caller.tenant, pool.name)
                if r.worker_id not in pool.workers or pool.workers[r.worker_id].state != "ready"]

    # -- bridges ------------------------------------------------------------------
    def list_bridges(self, caller: Caller) -> list[dict[str, Any]]:
        out = []
        for name, pool in sorted(self.pools.items()):
            d = self._describe.get(name, {})
            out.append({
                "name": name,
                "framework": d.get("framework", ""),
                "image": pool.cfg.image or image_tag(name),
                "pool_size": pool.cfg.pool_size,
                "workers_ready": pool.ready_count,
                "is_default": name == self.config.default_bridge,
                "backend": self.backend.name,
            })
        return out

    async def describe(self, caller: Caller, bridge: str) -> dict[str, Any]:
        pool = self.pool(bridge)
        if pool.name not in self._describe:
            worker = pool.any_ready() or await self._acquire(caller, pool)
            reply = await worker.describe()
            self._describe[pool.name] = {
                "bridge": reply.bridge,
                "framework": reply.framework,
                "framework_version": reply.framework_version,
                "commands": [
                    {"name": c.name, "description": c.description, "schema": loads_lenient(c.args_schema_json, {}),
                     "streaming": c.streaming, "retry_safe": c.retry_safe} for c in reply.commands
                ],
                "resource_types": [
                    {"name": t.name, "description": t.description,
                     "schema": loads_lenient(t.config_schema_json, {}), "streaming": t.streaming,
                     "retry_safe": t.retry_safe, "keeps_state": t.keeps_state}
                    for t in reply.resource_types
                ],
                "packages": dict(reply.packages),
                "runtime_version": reply.runtime_version,
                "python_version": reply.python_version,
                "required_secrets": list(reply.required_secrets),
            }
        return self._describe[pool.name]

    # -- commands -------------------------------------------------------------------
    @staticmethod
    def _request(command: str, args_json: str, attachments: dict[str, bytes] | None, call_id: str, *,
                 resource: ResourceRecord | None = None, resource_id: str = "",
                 resource_type: str = "") -> rpb.CallRequest:
        """The runtime request for one call (a resource's own id and type when ``resource`` is given)."""
        if resource is not None:
            resource_id, resource_type = resource.resource_id, resource.type
        return rpb.CallRequest(call_id=call_id or new_call_id(), command=command, args_json=args_json,
                               attachments=attachments or {}, resource_id=resource_id,
                               resource_type=resource_type)

    def _command_request(self, command: str, args_json: str, attachments: dict[str, bytes] | None,
                         call_id: str) -> rpb.CallRequest:
        if ":" not in command:
            raise UnknownCommand(  # "Unknown command: " is DSPex's wording, which its Elixir side matches on
                f"Unknown command: {command} (commands are 'namespace:operation'; namespaces: "
                f"{', '.join(['common', *sorted(self.pools)])})"
            )
        if command in _RESOURCE_COMMANDS:
            raise InvalidArgument(f"{command} is reached through the CreateResource, ExecuteResource and "
                                  f"DeleteResource calls, not Call")
        return self._request(command, args_json, attachments, call_id)

    async def call(self, caller: Caller, bridge: str, command: str, args_json: str = "",
                   attachments: dict[str, bytes] | None = None, call_id: str = "",
                   timeout_s: float | None = None) -> Reply:
        """Run one namespaced command on one of the caller's workers of its bridge."""
        pool = self.pool(self.route_bridge(bridge, command))
        req = self._command_request(command, args_json, attachments, call_id)
        started = time.monotonic()
        worker = await self._acquire(caller, pool, timeout_s)
        try:
            reply = await self._counted(caller, pool, self.runner.unary(caller.tenant, pool, worker, req,
                                                                        self._timeout(pool, timeout_s)))
        except WorkerDied as exc:
            if not pool.retry_safe(command):
                raise
            reply = await self._retry(caller, pool, req, exc, started, timeout_s)
        if reply.metadata:
            self._note_effects(caller, pool, command, args_json, reply)
            await self._import_exports(caller, worker, reply)
        return reply

    async def call_stream(self, caller: Caller, bridge: str, command: str, args_json: str = "",
                          attachments: dict[str, bytes] | None = None, call_id: str = "",
                          timeout_s: float | None = None) -> AsyncIterator[Event]:
        """Like :meth:`call`, yielding ``("chunk", text)``, ``("progress", (step, total, msg))``,
        ``("request", (id, kind, data))`` and ``("final", Reply)``; the reply's effects are recorded before it goes on."""
        pool = self.pool(self.route_bridge(bridge, command))
        req = self._command_request(command, args_json, attachments, call_id)
        worker = await self._acquire(caller, pool, timeout_s)
        async for kind, payload in self._counted_stream(caller, pool, self.runner.stream(
                caller.tenant, pool, worker, req, self._timeout(pool, timeout_s))):
            if kind == "final" and payload.metadata:
                self._note_effects(caller, pool, command, args_json, payload)
                await self._import_exports(caller, worker, payload)
            yield kind, payload

    async def cancel(self, caller: Caller, call_id: str) -> bool:
        return await self.runner.cancel(caller.tenant, call_id)

    def call_info(self, caller: Caller, call_id: str) -> tuple[str, str] | None:
        """(bridge, command) of the caller's call in flight by that id; None when it has none."""
        fl = self.runner.call_of(caller.tenant, call_id)
        return (fl.pool.name, fl.command) if fl is not None else None

    async def answer(self, caller: Caller, call_id: str, request_id: str, result_json: str = "",
                     error: str = "") -> bool:
        """Hand the client's answer to a request its streaming call sent; False when nothing waits for it."""
        return await self.runner.answer(caller.tenant, call_id, request_id, result_json, error)

    def _note_effects(self, caller: Caller, pool: Pool, command: str, args_json: str, reply: Reply) -> None:
        """Record what a reply's metadata asks for: replayable calls, resources made or dropped."""
        md = reply.metadata
        if md.get(meta.REPLAY_CLEAR):
            self.registry.clear_replay(caller.tenant, pool.name)
        if md.get(meta.REPLAY_KEY):
            self.registry.set_replay(caller.tenant, pool.name, md[meta.REPLAY_KEY], command, args_json)
        gone = loads_lenient(md.get(meta.DELETED_RESOURCES, ""), [])
        for rid in gone if isinstance(gone, list) else []:
            if isinstance(rid, str):
                self.registry.remove(caller.tenant, rid)
        self._note_resources(caller, pool, reply)

    # -- resources ----------------------------------------------------------------------
    async def create_resource(self, caller: Caller, bridge: str, type_: str, config_json: str = "",
                              attachments: dict[str, bytes] | None = None, resource_id: str = "",
                              call_id: str = "", timeout_s: float | None = None) -> tuple[str, str]:
        """Create a resource on one of the caller's workers and record its spec; return (id, info JSON)."""
        pool = self.pool(bridge)
        if not type_:
            raise InvalidArgument("CreateResource needs a resource type")
        rid = resource_id or f"res_{uuid.uuid4().hex[:20]}"
        if not _ID.match(rid):
            raise InvalidArgument(f"resource id {rid!r} must match {_ID.pattern}")
        if self.registry.exists(caller.tenant, rid):
            raise AlreadyExists(f"resource {rid!r} already exists")
        worker = await self._acquire(caller, pool)
        reply = await self._create_on(caller, pool, worker, rid, type_, config_json, attachments, call_id, timeout_s)
        info = dumps((loads_lenient(reply.result, None) or {}).get("info", {}))
        self.registry.add(caller.tenant, rid, pool.name, type_, config_json, info, worker.id)
        return rid, info

    async def _create_on(self, caller: Caller, pool: Pool, worker: Worker, rid: str, type_: str,
                         config_json: str, attachments: dict[str, bytes] | None, call_id: str,
                         timeout_s: float | None, state: str = "") -> Reply:
        req = self._request("common:create_resource", config_json, attachments, call_id, resource_id=rid,
                            resource_type=type_)
        req.resource_state_json = state
        return await self._counted(caller, pool, self.runner.unary(caller.tenant, pool, worker, req,
                                                                   self._timeout(pool, timeout_s)))

    async def _holder(self, caller: Caller, rec: ResourceRecord, timeout_s: float | None) -> tuple[Pool, Worker]:
        """The worker holding a resource; re-created from its spec (and kept state) if that worker is gone."""
        pool = self.pool(rec.bridge)
        worker = pool.workers.get(rec.worker_id)
        if worker is not None and worker.tenant == caller.tenant and pool.usable(worker):
            return pool, worker
        worker = await self._acquire(caller, pool, timeout_s)
        if rec.worker_id != worker.id and rec in self._lost(caller, pool):
            # Not re-created with the rest (it failed then, or its worker died since): once more, and say why.
            await self._create_on(caller, pool, worker, rec.resource_id, rec.type, rec.config, None, "", timeout_s,
                                  state=rec.state)
            rec.worker_id = worker.id
        return pool, worker

    async def execute_resource(self, caller: Caller, resource_id: str, inputs_json: str = "",
                               attachments: dict[str, bytes] | None = None, call_id: str = "",
                               timeout_s: float | None = None) -> Reply:
        rec = self.resource(caller, resource_id)
        started = time.monotonic()
        pool, worker = await self._holder(caller, rec, timeout_s)
        req = self._request("common:execute_resource", inputs_json, attachments, call_id, resource=rec)
        try:
            reply = await self._counted(caller, pool, self.runner.unary(caller.tenant, pool, worker, req,
                                                                        self._timeout(pool, timeout_s)))
        except WorkerDied as exc:
            if not pool.retry_safe("common:execute_resource", rec.type):
                raise
            reply = await self._retry(caller, pool, req, exc, started, timeout_s, resource=rec)
        self._note_resources(caller, pool, reply)
        await self._import_exports(caller, worker, reply)
        return reply

    async def execute_resource_stream(self, caller: Caller, resource_id: str, inputs_json: str = "",
                                      attachments: dict[str, bytes] | None = None, call_id: str = "",
                                      timeout_s: float | None = None) -> AsyncIterator[Event]:
        rec = self.resource(caller, resource_id)
        pool, worker = await self._holder(caller, rec, timeout_s)
        req = self._request("common:execute_resource", inputs_json, attachments, call_id, resource=rec)
        async for kind, payload in self._counted_stream(caller, pool, self.runner.stream(
                caller.tenant, pool, worker, req, self._timeout(pool, timeout_s))):
            if kind == "final":
                self._note_resources(caller, pool, payload)
                await self._import_exports(caller, worker, payload)
            yield kind, payload

    async def _import_exports(self, caller: Caller, worker: Worker, reply: Reply) -> None:
        """Take the models the worker exported into the model store, before the reply goes out."""
        if meta.EXPORTED_MODELS not in reply.metadata:
            return
        if self.exports is None:
            raise InvalidArgument("this orchestrator has no model store to export models to")
        await self.exports.import_exports(caller.tenant, worker, reply.metadata)

    def _note_resources(self, caller: Caller, pool: Pool, reply: Reply) -> None:
        """Record resources a handler created, and keep the states of those a call changed."""
        if not reply.metadata:
            return
        for item in created_resources(reply):
            rid = item["resource_id"]
            if _ID.match(rid) and not self.registry.exists(caller.tenant, rid):
                self.registry.add(caller.tenant, rid, pool.name, str(item.get("type", "")),
                                  dumps(item.get("config", {})), dumps(item.get("info", {})), reply.worker_id)
        states = loads_lenient(reply.metadata.get(meta.RESOURCE_STATES, ""), {})
        for rid, state in (states.items() if isinstance(states, dict) else ()):
            # Only a resource of this tenant on this bridge: a worker cannot write another's state.
            rec = self.registry.get(caller.tenant, rid)
            if rec is not None and rec.bridge == pool.name:
                self.registry.set_state(caller.tenant, rid, dumps(state))

    def list_resources(self, caller: Caller, bridge: str = "", type_: str = "") -> list[ResourceRecord]:
        if bridge:
            self.pool(bridge)  # unknown bridge is an error, not an empty list
        return self.registry.list(caller.tenant, bridge, type_)

    async def delete_resource(self, caller: Caller, resource_id: str, timeout_s: float | None = None) -> bool:
        rec = self.resource(caller, resource_id)
        pool = self.pool(rec.bridge)
        worker = pool.workers.get(rec.worker_id)
        if worker is not None and worker.state == "ready" and worker.tenant == caller.tenant:
            req = self._request("common:delete_resource", "", None, "", resource=rec)
            try:
                await self.runner.unary(caller.tenant, pool, worker, req, self._timeout(pool, timeout_s))
            except NotFound:
                pass  # the worker lost it already; the spec still goes
        return self.registry.remove(caller.tenant, resource_id)

    # -- stats ----------------------------------------------------------------------------
    def stats(self, caller: Caller) -> dict[str, Any]:
        workers = [w.snapshot() for p in self.pools.values() for w in p.workers.values()]
        return {
            "orchestrator_id": self.id,
            "backend": self.backend.name,
            "uptime_ms": int((time.time() - self.started) * 1000),
            "calls_total": self.calls_total,
            "errors_total": self.errors_total,
            "retries_total": self.retries_total,
            "in_flight": len(self.runner.inflight),
            "resources": self.registry.total(),
            "workers": workers,
            "bridges": {n: p.facts() for n, p in self.pools.items()},
            "circuits": self.circuits.snapshot(),
            "skipped": dict(self.skipped),
        }

    # -- counting -------------------------------------------------------------------------
    async def _counted(self, caller: Caller, pool: Pool, coro: Any) -> Reply:
        self.calls_total += 1
        try:
            reply: Reply = await coro
        except MLBridgeError as exc:
            self.errors_total += 1
            self._settle(caller, pool, exc)
            raise
        except BaseException:
            self.circuits.released(pool.name, caller.tenant)
            raise
        self.circuits.succeeded(pool.name, caller.tenant)
        return reply

    async def _counted_stream(self, caller: Caller, pool: Pool, gen: AsyncIterator[Event]) -> AsyncIterator[Event]:
        self.calls_total += 1
        try:
            async for ev in gen:
                if ev[0] == "final":
                    self.circuits.succeeded(pool.name, caller.tenant)
                yield ev
        except MLBridgeError as exc:
            self.errors_total += 1
            self._settle(caller, pool, exc)
            raise
        finally:
            self.circuits.released(pool.name, caller.tenant)

    def _settle(self, caller: Caller, pool: Pool, exc: MLBridgeError) -> None:
        """A failed call and the tenant's circuit: a worker that died counts already (its death event);
        any other error came from a worker that lived."""
        if isinstance(exc, (WorkerDied, OutOfMemory)) or exc.details.get("worker_replaced") or isinstance(exc, DeadlineExceeded):
            self.circuits.released(pool.name, caller.tenant)
        else:
            self.circuits.succeeded(pool.name, caller.tenant)
