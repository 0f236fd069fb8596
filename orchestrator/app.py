"""One running orchestrator, assembled: the one place that knows every part.

Built from a :class:`~orchestrator.config.Config`, in dependency order:

- the backend (by entry point), the registry (SQLite under ``state_dir``);
- the policy (or none) and the audit log (or none);
- egress control, when the policy grants allowlists;
- the model catalog over the model store, when a bridge loads models;
- the claim pipeline (tenant limits, secrets, egress, models, Configure, replay, naming);
- the domain service with its pools, whose worker events the audit log and
  egress control hear;
- observability (usage accounting; metrics and traces when configured),
  which the service reports to and the edge's first and last steps are;
- the edge and the gateway in front of the service, the authenticator in
  front of the edge, and the DSPex facade over the gateway.

The public server (:mod:`orchestrator.api`) serves :attr:`App.gateway`,
:attr:`App.authenticate` and :attr:`App.dspex`.

At start, unless ``strict_bridges`` is set, a bridge whose framework
packages are missing where the backend needs them (the process backend runs
workers from this Python) is skipped rather than refusing to start: the
backend is asked about that bridge alone, with and without its missing
packages, and a bridge it refuses only for them is left out, logged, listed
in :attr:`App.skipped`, and calls naming it fail with ``UNKNOWN_BRIDGE`` and
the reason.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from runtimes.wire.errors import ConfigError

from .audit import AuditLog
from .backends import make_backend
from .backends.base import Backend
from .claims import NO_SETTINGS, ClaimPipeline
from .compat.dspex import DSPexFacade
from .config import Config, missing_packages, skip_reason
from .edge import Authenticator, Gateway, build_gateway
from .egressctl import EgressControl
from .models import ModelCatalog, ModelStore
from .observe import Observability, Tracing
from .policy import Policy, load_policy
from .registry import Registry
from .service import Orchestrator
from .worker import Worker

__all__ = ["App"]

log = logging.getLogger("mlbridge.app")


class App:
    """The orchestrator's parts, wired.

    Args:
        config: the configuration.
        backend: a backend to use instead of the one ``config.backend`` names.
        policy: a policy instead of ``config.policy``'s file.
        audit: an audit log instead of ``config.audit_log``'s.
        tracing: a tracer instead of the one ``config.tracing`` describes.
    """

    def __init__(self, config: Config, *, backend: Backend | None = None, policy: Policy | None = None,
                 audit: AuditLog | None = None, tracing: Tracing | None = None) -> None:
        self.config = config
        self.backend = backend or make_backend(config)
        self.policy = policy or (load_policy(config.policy) if config.policy else None)
        self.audit = audit or (AuditLog(config.audit_log) if config.audit_log else None)
        registry = Registry(Path(config.state_dir) / "registry.sqlite")
        self.egress = EgressControl(config, self.policy, self.backend, self.audit) if self.policy else None
        tenants = self.policy or NO_SETTINGS
        self.models = (ModelCatalog(ModelStore(config.model_store_path), tenants, self.backend)
                       if any(b.models for b in config.bridges.values()) else None)
        claims = ClaimPipeline(self.backend, registry, tenants, egress=self.egress, models=self.models,
                               on_secrets=self.audit.redact_values if self.audit else None)
        self.observability = Observability(config, self.backend, tracing=tracing)
        observer = self.observability.observer
        #: Bridges left out at start (name -> why); filled by :meth:`start`.
        self.skipped: dict[str, str] = {}
        if self.egress is not None and self.observability.metrics is not None:
            self.egress.on_count = self.observability.metrics.egress_decision
        listeners: list[Any] = [observer.on_worker_event]
        if self.audit is not None:
            listeners.append(self._audit_worker_event)
        if self.egress is not None:
            listeners.append(self.egress.on_worker_event)
        self.service = Orchestrator(config, self.backend, registry, claims, listeners=listeners, exports=self.models,
                                    probe=observer)
        self.gateway: Gateway
        self.authenticate: Authenticator
        self.gateway, self.authenticate = build_gateway(self.service, self.policy, self.audit,
                                                        observe=observer.edge_steps(),
                                                        usage=self.observability.usage,
                                                        skipped=self._skippable())
        self.authenticate.on_failure = observer.auth_failed
        self.dspex = DSPexFacade(self.gateway)

    async def start(self) -> None:
        """Record the policy load, open egress, start the pools.

        Raises:
            ConfigError: what is missing or wrong, and how to fix it.
        """
        if not self.config.strict_bridges:
            await self._skip_unservable()
        if self.audit is not None:
            p = self.policy or Policy.permissive()
            await self._record(event="policy_load", outcome="ok", policy_hash=p.source_hash,
                               extra={"source": str(p.source), "tenants": list(p.tenants)})
        if self.models is not None:
            self.models.check_preloads(self.config.bridges)
        if self.egress is not None:
            await self.egress.start()
        try:
            await self.service.start()
        except BaseException:
            await self._close_edges()
            raise
        try:
            await self.observability.start(self.service)
        except BaseException:
            await self.service.stop()
            await self._close_edges()
            raise

    def _skippable(self) -> dict[str, str] | None:
        """:attr:`skipped`, when :meth:`start` may skip some bridge (else no step refuses skipped bridges)."""
        if self.config.strict_bridges or not any(missing_packages(b) for b in self.config.bridges.values()):
            return None
        return self.skipped

    async def _skip_unservable(self) -> None:
        """Leave out the bridges the backend refuses only because their framework is not installed."""
        for name, bcfg in sorted(self.config.bridges.items()):
            missing = missing_packages(bcfg)
            if not missing:
                continue
            alone = self.config.model_copy(update={"bridges": {name: bcfg}})
            try:
                await self.backend.prepare(alone)
                continue  # this backend does not need them here (docker: they are in the image)
            except ConfigError:
                pass
            rest = [p for p in bcfg.required_packages if p not in missing]
            try:
                await self.backend.prepare(alone.model_copy(update={
                    "bridges": {name: bcfg.model_copy(update={"required_packages": rest})}}))
            except ConfigError:
                continue  # refused for something else too: start-up says what, as always
            self.skipped[name] = skip_reason(missing)
            log.warning("skipping bridge %s: %s", name, self.skipped[name])
        if not self.skipped:
            return
        if self.config.default_bridge in self.skipped:
            raise ConfigError(
                f"mlbridge cannot start: the default bridge {self.config.default_bridge!r} cannot be served: "
                f"{self.skipped[self.config.default_bridge]}; or set default_bridge to another bridge")
        served = {n: b for n, b in self.config.bridges.items() if n not in self.skipped}
        self.config = self.config.model_copy(update={"bridges": served})
        self.service.config = self.config
        self.service.skipped.update(self.skipped)

    async def stop(self) -> None:
        """Drain and stop the workers, then the proxy and the audit log."""
        await self.service.stop()
        await self._close_edges()

    async def _close_edges(self) -> None:
        await self.observability.stop(self.service)
        if self.egress is not None:
            await self.egress.close()
        if self.audit is not None:
            self.audit.close()

    async def _audit_worker_event(self, event: str, worker: Worker, extra: dict[str, Any]) -> None:
        if event == "worker_claim":
            return  # the calls that follow are audited; a claim has no outcome of its own
        extra = dict(extra)
        usage = extra.pop("usage", None) or None
        await self._record(event=event, bridge=worker.bridge, worker_id=worker.id, tenant=worker.tenant or None,
                           image_id=worker.handle.image_id, outcome="ok", usage=usage, extra=extra)

    async def _record(self, **fields: Any) -> None:
        if self.audit is not None:
            await self.audit.note(**fields)
