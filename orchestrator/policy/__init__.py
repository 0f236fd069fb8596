"""Tenants, authentication, authorization, quotas and limits from a policy file.

Load a file with :func:`load_policy` (or use :meth:`Policy.permissive` when
there is none), then per request: ``authenticate`` -> ``check`` ->
``QuotaTracker.acquire_call`` -> ``deadline_s``. See ``docs/policies.md``.
"""

from .engine import Decision, NetworkPolicy, Policy, Principal, load_policy, parse_policy
from .model import ACTIONS
from .quotas import CallSlot, Quotas, QuotaTracker

__all__ = [
    "ACTIONS",
    "CallSlot",
    "Decision",
    "NetworkPolicy",
    "Policy",
    "Principal",
    "QuotaTracker",
    "Quotas",
    "load_policy",
    "parse_policy",
]
