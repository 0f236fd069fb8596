"""Run the orchestrator and its public server until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from .api.server import PublicServer
from .config import Config
from .service import Orchestrator

log = logging.getLogger("mlbridge.serve")


async def run(config: Config, *, on_ready: Callable[[PublicServer], None] | None = None,
              stop: asyncio.Event | None = None) -> None:
    """Start pools, then serve; stop everything cleanly on a signal or ``stop``."""
    orch = build_orchestrator(config)
    await orch.start()
    server = PublicServer(orch, config.listen, authenticator=getattr(orch, "authenticate", None) or _anon())
    try:
        await server.start()
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        if on_ready:
            on_ready(server)
        await stop.wait()
        log.info("stopping: draining calls")
    finally:
        await server.stop(grace=5.0)
        await orch.stop()


def build_orchestrator(config: Config) -> Orchestrator:
    """The orchestrator for a config (the policy-aware one when a policy is set)."""
    if config.policy is not None or config.audit_log is not None:
        from .policy.guarded import GuardedOrchestrator

        return GuardedOrchestrator(config)
    return Orchestrator(config)


def _anon() -> Callable[..., object]:
    from .api.servicer import anonymous

    return anonymous
