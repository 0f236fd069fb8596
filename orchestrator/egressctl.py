"""Egress allowlists, put to work: the proxy, the backend's egress network, and claimed workers on it.

When some tenant's policy grants a bridge an allowlist, :meth:`EgressControl.start`
has the backend open its egress network (a backend that can, one declaring
:class:`~orchestrator.backends.base.SupportsEgress`) and starts the egress
proxy (:mod:`orchestrator.egress`) on its gateway. A worker claimed by a
tenant with an allowlist for its bridge is moved onto that network, its
address is registered with the proxy under the tenant's allowlist, and it is
configured with ``HTTPS_PROXY`` / ``HTTP_PROXY`` pointing at the proxy
(:meth:`attach`, the claim pipeline's egress step); the address is revoked
when the worker is destroyed (:meth:`on_worker_event`). Every proxy decision
is audited (``event="egress"``). Other workers stay on network ``none``.

A backend without the capability cannot enforce allowlists; that is said
loudly once, and its workers reach whatever the host reaches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from runtimes.wire.errors import ConfigError

from .audit import AuditLog
from .backends.base import Backend, SupportsEgress
from .config import Config
from .egress import RULE as EGRESS_RULE
from .egress import EgressDecision, EgressProxy
from .policy import Policy
from .worker import Worker

__all__ = ["NO_PROXY_ENV", "PROXY_ENV", "EgressControl"]

log = logging.getLogger("mlbridge.policy")
# Set in a worker by Configure when its tenant has an allowlist.
PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
NO_PROXY_ENV = ("NO_PROXY", "no_proxy")


class EgressControl:
    """The egress proxy and the workers registered with it.

    Args:
        config: which bridges are served, and their networks.
        policy: the tenants' allowlists.
        backend: the backend whose workers are put behind the proxy.
        audit: where proxy decisions are recorded.
    """

    def __init__(self, config: Config, policy: Policy, backend: Backend, audit: AuditLog | None = None) -> None:
        self.config = config
        self.policy = policy
        self.backend = backend
        self.audit = audit
        self.proxy: EgressProxy | None = None
        self.addresses: dict[str, str] = {}  # worker id -> its address on the egress network
        self._warned = False
        #: Told (allowed, tenant, bridge) of every proxy decision (metrics); set before :meth:`start`.
        self.on_count: Callable[[bool, str, str], None] | None = None

    def bridges(self) -> dict[str, list[str]]:
        """Configured bridges for which some tenant has an allowlist -> those tenants."""
        out: dict[str, list[str]] = {}
        for bridge in self.config.bridges:
            tenants = [t for t in self.policy.tenants if self.policy.network_for(t, bridge).mode == "allowlist"]
            if tenants:
                out[bridge] = tenants
        return out

    async def start(self) -> None:
        """Open the egress network and proxy when the policy has allowlists and the backend can confine them.

        Raises:
            ConfigError: a bridge with allowlists starts its workers on another network than
                ``none``, or the backend cannot confine the network (no iptables).
        """
        wanted = self.bridges()
        if not wanted:
            return
        what = "; ".join(f"bridge {b}: tenants {', '.join(ts)}" for b, ts in sorted(wanted.items()))
        backend = self.backend
        if not isinstance(backend, SupportsEgress):
            if not self._warned:
                log.warning("EGRESS ALLOWLISTS ARE NOT ENFORCED (%s): the %s backend isolates nothing, so its "
                            "workers reach any network the host reaches. Use the docker backend to enforce "
                            "them.", what, self.backend.name)
                self._warned = True
            return
        bad = sorted(b for b in wanted if self.config.bridges[b].network.strip() != "none")
        if bad:
            raise ConfigError(f"egress allowlists need bridges whose workers start on network none; "
                              f"{', '.join(bad)} set(s) another network in the configuration")
        try:
            gateway = await backend.open_egress()
            self.proxy = EgressProxy(gateway, 0, on_decision=self._decision, on_count=self.on_count)
            port = await self.proxy.start()
            await backend.guard_egress(port)
        except BaseException:
            if self.proxy is not None:
                await self.proxy.close()
                self.proxy = None
            await backend.close_egress()
            raise
        log.info("egress proxy on %s for %s", self.proxy.url, what)

    async def attach(self, tenant: str, worker: Worker) -> dict[str, str]:
        """Put ``worker`` behind the proxy for ``tenant``; the proxy environment, {} without an allowlist."""
        net = self.policy.network_for(tenant, worker.bridge)
        if net.mode != "allowlist":
            return {}
        if self.proxy is None or not isinstance(self.backend, SupportsEgress):
            if isinstance(self.backend, SupportsEgress):
                log.warning("tenant %s has an egress allowlist for bridge %s but no egress proxy runs (the "
                            "policy had none at start); its worker stays on network none", tenant, worker.bridge)
            return {}
        ip = await self.backend.connect_egress(worker.handle)
        self.addresses[worker.id] = ip
        self.proxy.allow(ip, net.allowlist, tenant=tenant, bridge=worker.bridge, worker_id=worker.id)
        url = self.proxy.url
        return {**dict.fromkeys(PROXY_ENV, url), **dict.fromkeys(NO_PROXY_ENV, "")}

    def on_worker_event(self, event: str, worker: Worker, extra: dict[str, Any]) -> None:
        """A destroyed worker's address leaves the proxy's grants."""
        if event in ("worker_stop", "worker_kill") and worker.id in self.addresses:
            ip = self.addresses.pop(worker.id)
            if self.proxy is not None:
                self.proxy.revoke(ip, worker_id=worker.id)

    async def _decision(self, d: EgressDecision) -> None:
        if self.audit is None:
            return
        extra: dict[str, Any] = {"target": d.target, "reason": d.reason, "via": d.method}
        if d.suppressed:
            extra["suppressed"] = d.suppressed
        await self.audit.note(event="egress", tenant=d.tenant, bridge=d.bridge, worker_id=d.worker_id,
                              source=d.source, decision="allow" if d.allowed else "deny", rule=EGRESS_RULE,
                              outcome="ok" if d.allowed else "denied", extra=extra)

    async def close(self) -> None:
        """Stop the proxy (the backend removes its network when it closes)."""
        if self.proxy is not None:
            await self.proxy.close()
            self.proxy = None
        self.addresses.clear()
