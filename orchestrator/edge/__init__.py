"""Policy at the API edge, by composition.

Every public call becomes a :class:`Request` (caller, bridge, command or
resource, payload size, deadline) that passes through the steps of an
:class:`Edge` (:mod:`.steps`: resolve the resource, authorise, audit,
quotas, deadline) on its way to the domain service, the way gRPC
interceptors or HTTP middleware wrap a handler. The :class:`Gateway` builds
the requests; the domain service (:mod:`orchestrator.service`) knows nothing
of any of it.
"""

from __future__ import annotations

from ..audit import AuditLog
from ..policy import Policy, QuotaTracker
from ..service import Orchestrator
from .gateway import Gateway
from .pipeline import Edge
from .request import Outcome, Request
from .steps import (
    AuditCall,
    Authenticator,
    Authorize,
    Deadline,
    Quotas,
    ResolveResource,
    Step,
    recorder,
)

__all__ = ["Authenticator", "Edge", "Gateway", "Outcome", "Request", "Step", "build_gateway"]


def build_gateway(service: Orchestrator, policy: Policy | None, audit: AuditLog | None) -> tuple[Gateway, Authenticator]:
    """The public service for ``service`` and the authenticator in front of it.

    With neither a policy nor an audit log every caller is tenant ``default``
    and nothing stands between the API and the service; with either, every
    step runs (a missing policy allows everything, a missing log records nothing).
    """
    if policy is None and audit is None:
        return Gateway(service, Edge()), Authenticator(None, None)
    policy = policy or Policy.permissive()
    record = recorder(audit)
    edge = Edge([
        ResolveResource(service, record),
        Authorize(policy, audit, record),
        AuditCall(service, record),
        Quotas(policy, QuotaTracker(), service),
        Deadline(policy),
    ])
    gateway = Gateway(service, edge, visible_bridges=policy.visible_bridges, scoped_stats=not policy.is_permissive)
    return gateway, Authenticator(policy, audit)
