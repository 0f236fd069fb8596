"""The orchestrator's domain logic, free of gRPC.

The public servicer converts messages and calls these methods. A
:class:`Caller` (tenant, principal, source address) comes with every call;
every resource lookup is scoped to the caller's tenant, so another tenant's
resource is indistinguishable from one that does not exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtimes.core import metadata as meta
from runtimes.core.errors import (
    AlreadyExists,
    BridgeNotFound,
    ConfigError,
    InvalidArgument,
    MLBridgeError,
    NotFound,
    UnknownCommand,
)
from runtimes.proto import runtime_pb2 as rpb

from . import sockets
from .backends.base import Backend
from .calls import CallRunner, Reply, created_resources
from .config import Config, check_environment
from .pool import Pool
from .registry import Registry, ResourceRecord
from .worker import Worker

log = logging.getLogger("mlbridge.orchestrator")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
# Resource commands go through CreateResource/ExecuteResource/DeleteResource so
# that the orchestrator records and routes them.
_RESOURCE_COMMANDS = {"common:create_resource", "common:execute_resource", "common:delete_resource"}

Event = tuple[str, Any]


@dataclass(frozen=True)
class Caller:
    tenant: str = "default"
    principal: str = "anonymous"
    source: str = ""


def make_backend(config: Config) -> Backend:
    if config.backend == "process":
        from .backends.process import ProcessBackend

        return ProcessBackend()
    if config.backend == "docker":
        from .backends.docker import DockerBackend

        # Orchestrators sharing a state dir are one deployment: the reaper removes
        # what an earlier one of them left, never another deployment's workers.
        scope = hashlib.sha256(str(Path(config.state_dir).resolve()).encode()).hexdigest()[:12]
        return DockerBackend(scope=scope)
    raise ConfigError(f"unknown backend {config.backend!r}; use 'process' or 'docker'")


def new_call_id() -> str:
    return uuid.uuid4().hex


class Orchestrator:
    """Pools, routing, resources and calls for every configured bridge."""

    def __init__(self, config: Config, backend: Backend | None = None) -> None:
        self.config = config
        self.id = uuid.uuid4().hex[:12]
        self.backend = backend or make_backend(config)
        self.registry = Registry(Path(config.state_dir) / "registry.sqlite")
        self.runner = CallRunner()
        self.pools: dict[str, Pool] = {}
        self._describe: dict[str, dict[str, Any]] = {}
        self._socket_root = Path(tempfile.mkdtemp(prefix="mlb-"))
        self.started = time.time()
        self.calls_total = 0
        self.errors_total = 0

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        """Validate the environment, reap leftovers, start every pool concurrently.

        Raises:
            ConfigError: a missing variable, package or image, or a bridge whose
                workers cannot start; the message says which and how to fix it.
        """
        check_environment(self.config)
        await self.backend.prepare(self.config.bridges)
        reaped = await self.backend.reap(self.id)
        if reaped:
            log.warning("removed %d worker(s) left by an earlier orchestrator", reaped)
        for name, bcfg in self.config.bridges.items():
            self.pools[name] = Pool(name, bcfg, self.backend, orchestrator_id=self.id,
                                    socket_root=self._socket_root,
                                    max_message_bytes=self.config.max_message_bytes,
                                    secrets_for=self.secrets_for, on_event=self.on_worker_event,
                                    claim_env=self.claim_env)
        results = await asyncio.gather(*(p.start() for p in self.pools.values()), return_exceptions=True)
        failed = [(n, r) for n, r in zip(self.pools, results, strict=True) if isinstance(r, BaseException)]
        if failed:
            await self.stop()
            raise ConfigError("bridges failed to start:\n" + "\n".join(f"  {n}: {r}" for n, r in failed))

    async def stop(self) -> None:
        await self.runner.close()
        await asyncio.gather(*(p.stop() for p in self.pools.values()), return_exceptions=True)
        await self.backend.close()
        self.registry.close()
        sockets.unmount_all_under(self._socket_root)
        shutil.rmtree(self._socket_root, ignore_errors=True)

    # -- hooks the policy layer overrides ----------------------------------------
    async def secrets_for(self, tenant: str, bridge: str, worker: Worker | None = None) -> dict[str, str]:
        """Secrets handed to a worker when ``tenant`` claims it (none without a policy)."""
        return {}

    async def claim_env(self, tenant: str, bridge: str, worker: Worker) -> dict[str, str]:
        """Environment (egress proxy settings) handed to a worker when ``tenant`` claims it (none here)."""
        return {}

    async def on_worker_event(self, event: str, worker: Worker, extra: dict[str, Any]) -> None:
        log.info("%s %s %s", event, worker.id, extra)
        if event == "worker_claim":
            await self._replay(extra["tenant"], worker)

    async def _replay(self, tenant: str, worker: Worker) -> None:
        """Re-run the tenant's replayable calls (e.g. registered types) on a newly claimed worker."""
        for command, args in self.registry.replays(tenant, worker.bridge):
            assert worker.session is not None
            reply = await worker.session.request(rpb.CallRequest(call_id=new_call_id(), command=command,
                                                                 args_json=args, tenant=tenant))
            if not reply.ok:
                log.warning("replaying %s on worker %s failed: %s", command, worker.id, reply.error.message)

    def _note_effects(self, caller: Caller, bridge: str, command: str, args_json: bytes, reply: Reply) -> None:
        """Record what a reply's metadata asks for: replayable calls, resources made or dropped."""
        md = reply.metadata
        if md.get(meta.REPLAY_CLEAR):
            self.registry.clear_replay(caller.tenant, bridge)
        if md.get(meta.REPLAY_KEY):
            self.registry.set_replay(caller.tenant, bridge, md[meta.REPLAY_KEY], command, args_json)
        if md.get(meta.DELETED_RESOURCES):
            try:
                gone = json.loads(md[meta.DELETED_RESOURCES])
            except ValueError:
                gone = []
            for rid in gone if isinstance(gone, list) else []:
                if isinstance(rid, str):
                    self.registry.remove(caller.tenant, rid)
        pool = self.pools.get(bridge)
        if pool is not None:
            self._adopt_created(caller, pool, reply)

    def _max_workers(self, caller: Caller, bridge: str) -> int:
        return self.pools[bridge].cfg.workers_per_tenant

    def timeout_for(self, caller: Caller, bridge: str, client_timeout_s: float | None) -> float:
        limit = self.pools[bridge].cfg.call_timeout_s
        return min(limit, client_timeout_s) if client_timeout_s else limit

    # -- lookups ------------------------------------------------------------------
    def pool(self, bridge: str) -> Pool:
        name = bridge or self.config.default_bridge
        try:
            return self.pools[name]
        except KeyError:
            raise BridgeNotFound(
                f"unknown bridge {name!r}; bridges: {', '.join(sorted(self.pools)) or 'none'}"
            ) from None

    def _resource(self, caller: Caller, resource_id: str) -> ResourceRecord:
        rec = self.registry.get(caller.tenant, resource_id)
        if rec is None:
            raise NotFound(f"resource {resource_id!r} not found")
        return rec

    def route_bridge(self, bridge: str, command: str) -> str:
        """The bridge a call goes to: as named, else the command's namespace, else the default."""
        if bridge:
            return bridge
        ns = command.partition(":")[0]
        return ns if ns in self.pools else self.config.default_bridge

    # -- bridges --------------------------------------------------------------------
    def list_bridges(self, caller: Caller) -> list[dict[str, Any]]:
        out = []
        for name, pool in sorted(self.pools.items()):
            d = self._describe.get(name, {})
            out.append({
                "name": name,
                "framework": d.get("framework", ""),
                "image": pool.cfg.image or f"mlbridge/{name}:0.1.0",
                "pool_size": pool.cfg.pool_size,
                "workers_ready": pool.ready_count,
                "is_default": name == self.config.default_bridge,
                "backend": self.backend.name,
            })
        return out

    async def describe(self, caller: Caller, bridge: str) -> dict[str, Any]:
        pool = self.pool(bridge)
        if pool.name not in self._describe:
            worker = pool.any_ready() or await pool.acquire(caller.tenant, max_workers=self._max_workers(caller, pool.name))
            reply = await worker.describe()
            self._describe[pool.name] = {
                "bridge": reply.bridge,
                "framework": reply.framework,
                "framework_version": reply.framework_version,
                "commands": [
                    {"name": c.name, "description": c.description, "schema": _loads(c.args_schema_json),
                     "streaming": c.streaming} for c in reply.commands
                ],
                "resource_types": [
                    {"name": t.name, "description": t.description, "schema": _loads(t.config_schema_json),
                     "streaming": t.streaming} for t in reply.resource_types
                ],
                "packages": dict(reply.packages),
                "runtime_version": reply.runtime_version,
                "python_version": reply.python_version,
                "required_secrets": list(reply.required_secrets),
            }
        return self._describe[pool.name]

    # -- commands ---------------------------------------------------------------------
    def _command_request(self, command: str, args_json: bytes, attachments: dict[str, bytes],
                         call_id: str) -> rpb.CallRequest:
        if ":" not in command:
            raise UnknownCommand(
                f"command {command!r} is not of the form 'namespace:operation'; namespaces: "
                f"{', '.join(['common', *sorted(self.pools)])}"
            )
        if command in _RESOURCE_COMMANDS:
            raise InvalidArgument(f"{command} is reached through the CreateResource, ExecuteResource and "
                                  f"DeleteResource calls, not Call")
        return rpb.CallRequest(call_id=call_id or new_call_id(), command=command, args_json=args_json,
                               attachments=attachments)

    async def call(self, caller: Caller, bridge: str, command: str, args_json: bytes = b"",
                   attachments: dict[str, bytes] | None = None, call_id: str = "",
                   timeout_s: float | None = None) -> Reply:
        if ":" not in command:
            from .compat import dspex

            if command in dspex.LEGACY_COMMANDS:
                return await dspex.handle(self, caller, command, args_json, call_id or new_call_id(), timeout_s)
        pool = self.pool(self.route_bridge(bridge, command))
        req = self._command_request(command, args_json, attachments or {}, call_id)
        worker = await pool.acquire(caller.tenant, max_workers=self._max_workers(caller, pool.name))
        reply = await self._counted(self.runner.unary(
            caller.tenant, pool, worker, req, self.timeout_for(caller, pool.name, timeout_s)))
        if reply.metadata:
            self._note_effects(caller, pool.name, command, args_json, reply)
        return reply

    async def call_stream(self, caller: Caller, bridge: str, command: str, args_json: bytes = b"",
                          attachments: dict[str, bytes] | None = None, call_id: str = "",
                          timeout_s: float | None = None) -> AsyncIterator[Event]:
        pool = self.pool(self.route_bridge(bridge, command))
        req = self._command_request(command, args_json, attachments or {}, call_id)
        worker = await pool.acquire(caller.tenant, max_workers=self._max_workers(caller, pool.name))
        async for ev in self._counted_stream(self.runner.stream(
                caller.tenant, pool, worker, req, self.timeout_for(caller, pool.name, timeout_s))):
            yield ev

    async def cancel(self, caller: Caller, call_id: str) -> bool:
        return await self.runner.cancel(caller.tenant, call_id)

    # -- resources ------------------------------------------------------------------------
    async def create_resource(self, caller: Caller, bridge: str, type_: str, config_json: bytes = b"",
                              attachments: dict[str, bytes] | None = None, resource_id: str = "",
                              call_id: str = "", timeout_s: float | None = None) -> tuple[str, bytes]:
        pool = self.pool(bridge)
        if not type_:
            raise InvalidArgument("CreateResource needs a resource type")
        rid = resource_id or f"res_{uuid.uuid4().hex[:20]}"
        if not _ID.match(rid):
            raise InvalidArgument(f"resource id {rid!r} must match {_ID.pattern}")
        if self.registry.exists(caller.tenant, rid):
            raise AlreadyExists(f"resource {rid!r} already exists")
        self.check_resource_quota(caller)
        worker = await pool.acquire(caller.tenant, max_workers=self._max_workers(caller, pool.name))
        reply = await self._create_on(caller, pool, worker, rid, type_, config_json, attachments or {},
                                      call_id, timeout_s)
        info = json.dumps((_loads(reply.result) or {}).get("info", {})).encode()
        self.registry.add(caller.tenant, rid, pool.name, type_, config_json, info, worker.id)
        return rid, info

    def check_resource_quota(self, caller: Caller) -> None:
        """Overridden by the policy layer."""

    async def _create_on(self, caller: Caller, pool: Pool, worker: Worker, rid: str, type_: str,
                         config_json: bytes, attachments: dict[str, bytes], call_id: str,
                         timeout_s: float | None) -> Reply:
        req = rpb.CallRequest(call_id=call_id or new_call_id(), command="common:create_resource",
                              args_json=config_json, attachments=attachments, resource_id=rid,
                              resource_type=type_)
        return await self._counted(self.runner.unary(
            caller.tenant, pool, worker, req, self.timeout_for(caller, pool.name, timeout_s)))

    async def _holder(self, caller: Caller, rec: ResourceRecord, timeout_s: float | None) -> tuple[Pool, Worker]:
        """The worker holding a resource; re-created from its spec if that worker is gone."""
        pool = self.pool(rec.bridge)
        worker = pool.workers.get(rec.worker_id)
        if worker is not None and worker.state == "ready" and worker.tenant == caller.tenant:
            return pool, worker
        worker = await pool.acquire(caller.tenant, max_workers=self._max_workers(caller, pool.name))
        # Re-create every resource of this tenant and bridge that lived on a worker
        # that is gone, oldest first, so resources that refer to others find them.
        lost = [r for r in self.registry.list(caller.tenant, rec.bridge)
                if r.worker_id not in pool.workers or pool.workers[r.worker_id].state != "ready"]
        for r in lost:
            log.info("re-creating resource %s on worker %s from its spec", r.resource_id, worker.id)
            try:
                await self._create_on(caller, pool, worker, r.resource_id, r.type, r.config, {}, "", timeout_s)
            except MLBridgeError as exc:
                if r is rec:
                    raise
                log.warning("could not re-create resource %s: %s", r.resource_id, exc)
                continue
            r.worker_id = worker.id
        return pool, worker

    def _execute_request(self, rec: ResourceRecord, inputs_json: bytes, attachments: dict[str, bytes] | None,
                         call_id: str) -> rpb.CallRequest:
        return rpb.CallRequest(call_id=call_id or new_call_id(), command="common:execute_resource",
                               args_json=inputs_json, attachments=attachments or {},
                               resource_id=rec.resource_id, resource_type=rec.type)

    async def execute_resource(self, caller: Caller, resource_id: str, inputs_json: bytes = b"",
                               attachments: dict[str, bytes] | None = None, call_id: str = "",
                               timeout_s: float | None = None) -> Reply:
        rec = self._resource(caller, resource_id)
        pool, worker = await self._holder(caller, rec, timeout_s)
        req = self._execute_request(rec, inputs_json, attachments, call_id)
        reply = await self._counted(self.runner.unary(
            caller.tenant, pool, worker, req, self.timeout_for(caller, pool.name, timeout_s)))
        self._adopt_created(caller, pool, reply)
        return reply

    async def execute_resource_stream(self, caller: Caller, resource_id: str, inputs_json: bytes = b"",
                                      attachments: dict[str, bytes] | None = None, call_id: str = "",
                                      timeout_s: float | None = None) -> AsyncIterator[Event]:
        rec = self._resource(caller, resource_id)
        pool, worker = await self._holder(caller, rec, timeout_s)
        req = self._execute_request(rec, inputs_json, attachments, call_id)
        async for kind, payload in self._counted_stream(self.runner.stream(
                caller.tenant, pool, worker, req, self.timeout_for(caller, pool.name, timeout_s))):
            if kind == "final":
                self._adopt_created(caller, pool, payload)
            yield kind, payload

    def _adopt_created(self, caller: Caller, pool: Pool, reply: Reply) -> None:
        for item in created_resources(reply):
            rid = item["resource_id"]
            if _ID.match(rid) and not self.registry.exists(caller.tenant, rid):
                config = json.dumps(item.get("config", {})).encode()
                self.registry.add(caller.tenant, rid, pool.name, str(item.get("type", "")), config,
                                  json.dumps(item.get("info", {})).encode(), reply.worker_id)

    def list_resources(self, caller: Caller, bridge: str = "", type_: str = "") -> list[ResourceRecord]:
        if bridge:
            self.pool(bridge)  # unknown bridge is an error, not an empty list
        return self.registry.list(caller.tenant, bridge, type_)

    async def delete_resource(self, caller: Caller, resource_id: str) -> bool:
        rec = self._resource(caller, resource_id)
        pool = self.pool(rec.bridge)
        worker = pool.workers.get(rec.worker_id)
        if worker is not None and worker.state == "ready" and worker.tenant == caller.tenant:
            req = rpb.CallRequest(call_id=new_call_id(), command="common:delete_resource",
                                  resource_id=rec.resource_id, resource_type=rec.type)
            try:
                await self.runner.unary(caller.tenant, pool, worker, req, self.timeout_for(caller, pool.name, None))
            except NotFound:
                pass  # the worker lost it already; the spec still goes
        return self.registry.remove(caller.tenant, resource_id)

    # -- stats --------------------------------------------------------------------------
    def stats(self, caller: Caller) -> dict[str, Any]:
        workers = [w.snapshot() for p in self.pools.values() for w in p.workers.values()]
        return {
            "orchestrator_id": self.id,
            "backend": self.backend.name,
            "uptime_ms": int((time.time() - self.started) * 1000),
            "calls_total": self.calls_total,
            "errors_total": self.errors_total,
            "in_flight": len(self.runner.inflight),
            "resources": self.registry.total(),
            "workers": workers,
            "bridges": {n: {"ready": p.ready_count, "pool_size": p.cfg.pool_size, "last_error": p.last_error}
                        for n, p in self.pools.items()},
        }

    # -- counting -----------------------------------------------------------------------
    async def _counted(self, coro: Any) -> Reply:
        self.calls_total += 1
        try:
            return await coro
        except MLBridgeError:
            self.errors_total += 1
            raise

    async def _counted_stream(self, gen: AsyncIterator[Event]) -> AsyncIterator[Event]:
        self.calls_total += 1
        try:
            async for ev in gen:
                yield ev
        except MLBridgeError:
            self.errors_total += 1
            raise


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data) if data else {}
    except ValueError:
        return {}
