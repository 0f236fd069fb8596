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

from collections.abc import Mapping

from ..audit import AuditLog
from ..policy import Policy, QuotaTracker
from ..service import Orchestrator
from .gateway import Gateway, UsageQuery
from .pipeline import Edge
from .request import Outcome, Request
from .steps import (
    AuditCall,
    Authenticator,
    Authorize,
    Deadline,
    Quotas,
    RefuseSkipped,
    ResolveResource,
    Step,
    recorder,
)

__all__ = ["Authenticator", "Edge", "Gateway", "Outcome", "Request", "Step", "build_gateway"]


def build_gateway(service: Orchestrator, policy: Policy | None, audit: AuditLog | None, *,
                  observe: tuple[Step, Step] | None = None, usage: UsageQuery | None = None,
                  skipped: Mapping[str, str] | None = None) -> tuple[Gateway, Authenticator]:
    """The public service for ``service`` and the authenticator in front of it.

    With neither a policy nor an audit log every caller is tenant ``default``
    and nothing stands between the API and the service but ``observe``; with
    either, every step runs (a missing policy allows everything, a missing log
    records nothing). ``observe`` (metrics and traces) are the first and the
    last step, so they see every request, the refused ones too. ``skipped``
    (bridges left out at start, filled later) adds a step refusing calls that
    name one; without it, no step is on the call path for that.
    """
    first, last = observe or (None, None)
    refuse = RefuseSkipped(skipped) if skipped is not None else None
    if policy is None and audit is None:  # no policy steps: nothing for the last step to mark
        return (Gateway(service, Edge([s for s in (first, refuse) if s is not None]), usage=usage),
                Authenticator(None, None))
    policy = policy or Policy.permissive()
    record = recorder(audit)
    edge = Edge([s for s in (
        first,
        refuse,
        ResolveResource(service, record),
        Authorize(policy, audit, record),
        AuditCall(service, record),
        Quotas(policy, QuotaTracker(), service),
        Deadline(policy),
        last,
    ) if s is not None])
    gateway = Gateway(service, edge, visible_bridges=policy.visible_bridges, scoped_stats=not policy.is_permissive,
                      usage=usage)
    return gateway, Authenticator(policy, audit)
