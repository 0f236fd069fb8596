"""What happens when a tenant claims a warm worker: one pipeline, in one order.

A warm spare is tenant-neutral. When a tenant's first call (or a replacement
after a crash) claims it, :meth:`ClaimPipeline.claim` runs these steps, in
this order, before any call of that tenant reaches the worker:

1. **limits**: the tenant's own limits, where lower than the operator's, are
   applied to the running worker (a tenant may lower limits, never raise them);
2. **secrets**: the tenant's secrets for this bridge (only the names the
   bridge's configuration and the bridge itself declare);
3. **egress**: with an allowlist for this tenant and bridge, the worker joins
   the egress network and is registered with the proxy; it gets the proxy's
   address as ``HTTPS_PROXY`` and friends;
4. **models**: for a bridge with ``models: true``, the model-store models the
   tenant may load are mounted into the worker read-only, and described
   (names, hashes, every file's sha256) for step 5;
5. **configure**: the ``Configure`` RPC hands the worker its tenant, secrets,
   proxy environment and models; from now on it serves only that tenant;
6. **replay**: the tenant's replayable calls (registered types, a default LM)
   run again on this worker, under the limits of step 1 and with the secrets
   and network of steps 2 and 3;
7. **naming**: the engine's own tools learn the tenant (a container is
   renamed), in the background a second after the claim, so the engine call
   does not compete with the tenant's first call.

A failure in steps 1 to 5 fails the claim (the pool retires the worker);
a replayed call that fails is logged and the claim goes on; naming failures
are logged. Where the tenant's settings come from (a policy, or nothing) is
the :class:`TenantSettings` given to the pipeline; the pool knows none of it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

from runtimes.wire.proto import runtime_pb2 as rpb

from .backends.base import Backend, WorkerLimits
from .config import BridgeConfig
from .registry import Registry
from .worker import Worker

log = logging.getLogger("mlbridge.claims")

__all__ = ["NO_SETTINGS", "STEPS", "ClaimPipeline", "EgressAttach", "ModelGrants", "NoSettings", "TenantSettings"]

#: The steps of a claim, in the order they run.
STEPS = ("limits", "secrets", "egress", "models", "configure", "replay", "naming")
#: How long after a claim the naming step runs.
NAMING_DELAY_S = 1.0

Background = Callable[[Coroutine[Any, Any, None], str], None]


class TenantSettings(Protocol):
    """Where a claim finds a tenant's settings (:class:`orchestrator.policy.Policy` is one)."""

    def limits_for(self, tenant: str, bridge: str) -> WorkerLimits:
        """The tenant's own worker limits for ``bridge`` (empty when it sets none)."""
        ...

    def secret_names(self, tenant: str, bridge: str) -> list[str]:
        """The names of the secrets the tenant has for ``bridge``."""
        ...

    def secrets_for(self, tenant: str, bridge: str, declared: Iterable[str]) -> dict[str, str]:
        """The tenant's values of the ``declared`` secret names for ``bridge``."""
        ...

    def model_allowed(self, tenant: str, model: str) -> bool:
        """Whether the tenant may load the operator's model ``model``."""
        ...


class NoSettings:
    """Tenants with no settings of their own (no policy): the operator's limits, no secrets."""

    def limits_for(self, tenant: str, bridge: str) -> WorkerLimits:
        return WorkerLimits()

    def secret_names(self, tenant: str, bridge: str) -> list[str]:
        return []

    def secrets_for(self, tenant: str, bridge: str, declared: Iterable[str]) -> dict[str, str]:
        return {}

    def model_allowed(self, tenant: str, model: str) -> bool:
        return True

    def model_shared(self, model: str) -> bool:
        return True


NO_SETTINGS = NoSettings()


class ModelGrants(Protocol):
    """Mounts a tenant's models into a claimed worker (:class:`orchestrator.models.ModelCatalog`)."""

    async def grant(self, tenant: str, worker: Worker) -> tuple[list[rpb.ModelGrant], str]:
        """The grants to configure, and the worker's export directory ("" for none)."""
        ...

    async def preload(self, worker: Worker, names: list[str]) -> list[str]:
        """Mount the operator's models ``names`` into a tenant-neutral spare and have it load them."""
        ...


class EgressAttach(Protocol):
    """Puts a claimed worker behind the egress proxy (:class:`orchestrator.egressctl.EgressControl`)."""

    async def attach(self, tenant: str, worker: Worker) -> dict[str, str]:
        """Connect ``worker`` for ``tenant``; the proxy environment to configure, {} when it has no allowlist."""
        ...


class ClaimPipeline:
    """Runs the claim steps of :data:`STEPS`, in that order, for every pool.

    Args:
        backend: applies limits and names workers.
        registry: where the tenant's replayable calls are kept.
        tenants: the tenants' limits and secrets.
        egress: attaches workers of tenants with an allowlist; None when no allowlist is served.
        models: mounts models into workers of bridges with ``models: true``; None: no model store.
        on_secrets: told every secret value handed out (the audit log redacts them).
    """

    def __init__(self, backend: Backend, registry: Registry, tenants: TenantSettings, *,
                 egress: EgressAttach | None = None, models: ModelGrants | None = None,
                 on_secrets: Callable[[Iterable[str]], None] | None = None) -> None:
        self.backend = backend
        self.registry = registry
        self.tenants = tenants
        self.egress = egress
        self.models = models
        self.on_secrets = on_secrets
        self._declared: dict[str, frozenset[str]] = {}

    async def prepare(self, worker: Worker, cfg: BridgeConfig) -> None:
        """Make a ready, tenant-neutral worker what every spare of its bridge should be: its
        ``preload_models`` loaded. Runs before the worker is offered to anyone.

        Raises:
            MLBridgeError: a model could not be mounted or loaded; the worker must not be used.
        """
        if cfg.preload_models and self.models is not None:
            await self.models.preload(worker, list(cfg.preload_models))

    async def claim(self, worker: Worker, tenant: str, cfg: BridgeConfig, background: Background) -> None:
        """Hand ``worker`` (ready, tenant-neutral) to ``tenant``.

        Raises:
            MLBridgeError: limits, secrets, egress or configure failed; the worker must not be used.
        """
        await self._limits(worker, tenant, cfg)
        secrets = await self._secrets(worker, tenant, cfg)
        env = await self.egress.attach(tenant, worker) if self.egress is not None else {}
        grants: list[rpb.ModelGrant] = []
        export_dir = ""
        if cfg.models and self.models is not None:
            grants, export_dir = await self.models.grant(tenant, worker)
        await worker.configure(tenant, secrets, env, grants, export_dir)
        await self._replay(worker, tenant)
        background(self._name(worker, tenant), f"name {worker.id} after its tenant")

    async def _name(self, worker: Worker, tenant: str) -> None:
        # Not at once: the engine call would compete with the tenant's first call for the CPU.
        await asyncio.sleep(NAMING_DELAY_S)
        if worker.state != "dead":
            await self.backend.mark_tenant(worker.handle, tenant)

    async def _limits(self, worker: Worker, tenant: str, cfg: BridgeConfig) -> None:
        lower = self.tenants.limits_for(tenant, worker.bridge).below(cfg.limits)
        if lower:
            await self.backend.apply_limits(worker.handle, lower)

    async def _secrets(self, worker: Worker, tenant: str, cfg: BridgeConfig) -> dict[str, str]:
        if not self.tenants.secret_names(tenant, worker.bridge):
            return {}  # nothing to hand over: no need to ask the bridge what it declares
        declared = self._declared.get(worker.bridge)
        if declared is None:
            # What the bridge itself declares, asked once per bridge.
            declared = self._declared[worker.bridge] = frozenset((await worker.describe()).required_secrets)
        secrets = self.tenants.secrets_for(tenant, worker.bridge, sorted(declared | set(cfg.secrets)))
        if secrets and self.on_secrets is not None:
            self.on_secrets(secrets.values())
        return secrets

    async def _replay(self, worker: Worker, tenant: str) -> None:
        assert worker.session is not None
        for command, args in self.registry.replays(tenant, worker.bridge):
            reply = await worker.session.request(rpb.CallRequest(call_id=uuid.uuid4().hex, command=command,
                                                                 args_json=args, tenant=tenant))
            if not reply.ok:
                log.warning("replaying %s on worker %s failed: %s", command, worker.id, reply.error.message)
