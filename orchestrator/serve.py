"""Run the orchestrator and its public server until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable

from .api.server import PublicServer
from .app import App
from .config import Config
from .observe import Tracing

log = logging.getLogger("mlbridge.serve")


async def run(config: Config, *, on_ready: Callable[[PublicServer], None] | None = None,
              stop: asyncio.Event | None = None, tracing: Tracing | None = None) -> None:
    """Start pools, then serve; stop everything cleanly on a signal or ``stop``.

    ``tracing`` replaces the tracer ``config.tracing`` describes (an in-process exporter).
    """
    app = App(config, tracing=tracing)
    await app.start()
    # What start-up imported and built lives as long as the process: out of the collector's view,
    # so no collection on a call's path scans it.
    gc.collect()
    gc.freeze()
    try:
        server = PublicServer(app, config.listen)
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
    finally:
        await app.stop()
