"""Run a real orchestrator and public gRPC server on a background event loop."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from orchestrator.api.server import PublicServer
from orchestrator.app import App
from orchestrator.config import Config, load_config
from orchestrator.service import Orchestrator

CI = os.environ.get("CI", "").lower() == "true"


def make_config(tmp: Path, bridges: dict[str, Any] | None = None, **fields: Any) -> Config:
    """A config over the shipped default, with state in ``tmp`` and a free port."""
    base = {"state_dir": str(tmp / "state"), "listen": "127.0.0.1:0", "backend": "process"}
    if bridges is not None:
        base["bridges"] = bridges
    base.update(fields)
    return load_config(None, env={}, **base)


class ServerThread:
    """``with ServerThread(cfg) as srv: MLBridge.connect(srv.target)``.

    ``srv.app`` is the whole orchestrator; ``srv.orch`` its domain service (pools, registry, backend).
    """

    def __init__(self, config: Config, app: App | None = None) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="mlbridge-test-loop")
        self.app = app or App(config)
        self.orch: Orchestrator = self.app.service
        self.server: PublicServer | None = None

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def target(self) -> str:
        assert self.server is not None
        return self.server.target

    def __enter__(self) -> ServerThread:
        self.thread.start()
        try:
            self.run(self._start())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        await self.app.start()
        self.server = PublicServer(self.app, self.config.listen)
        await self.server.start()

    async def _stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=1.0)
        await self.app.stop()

    def __exit__(self, *exc: object) -> None:
        try:
            if self.thread.is_alive():
                self.run(self._stop(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class Background:
    """Run a blocking client call in a thread; ``.error()`` joins it and returns what it raised.

    ``with Background(lambda: mb.call(...)) as call: ...; assert isinstance(call.error(), Cancelled)``
    """

    def __init__(self, fn: Any) -> None:
        self._fn = fn
        self._exc: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self._exc = exc

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(30)

    def error(self, timeout: float = 20) -> BaseException | None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the background call did not finish"
        return self._exc
