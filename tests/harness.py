"""Run a real orchestrator and public gRPC server on a background event loop."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from orchestrator import MLBridgeError
from orchestrator.api.server import PublicServer
from orchestrator.app import App
from orchestrator.config import Config, load_config
from orchestrator.service import Orchestrator
from runtimes.core import Bridge, ModelGrant
from runtimes.core.dispatch import Dispatcher

CI = os.environ.get("CI", "").lower() == "true"


def digest(token: str) -> str:
    """A token as a policy file stores it (``sha256:<hex>``)."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


#: The worker channel docker tests run with: ``unix``, or ``tcp-mtls`` for CI's second pass of the docker tests
#: (``MLBRIDGE_TEST_WORKER_CHANNEL``, scripts/test.sh).
WORKER_CHANNEL = os.environ.get("MLBRIDGE_TEST_WORKER_CHANNEL", "unix")


def make_config(tmp: Path, bridges: dict[str, Any] | None = None, **fields: Any) -> Config:
    """A config over the shipped default, with state in ``tmp`` and a free port (and the docker tests' channel)."""
    base = {"state_dir": str(tmp / "state"), "listen": "127.0.0.1:0", "backend": "process",
            "worker_channel": WORKER_CHANNEL}
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


class InProcessRuntime:
    """A bridge served by a dispatcher in this process, configured for ``tenant-a``; records every reply.

    ``seen`` holds the text of every result and error, for tests that check
    nothing secret leaks; ``metadata`` the last reply's metadata.
    """

    def __init__(self, bridge: Bridge, secrets: dict[str, str] | None = None,
                 models: Iterable[ModelGrant] = (), export_dir: str = "") -> None:
        self.bridge = bridge
        self.bridge.setup()
        self.d = Dispatcher(self.bridge, max_message_bytes=16 * 1024 * 1024)
        self.d.configure("tenant-a", secrets or {}, None, models, export_dir)
        self.seen: list[str] = []
        self.metadata: dict[str, str] = {}

    def call(self, command: str, args: dict[str, Any] | None = None, rid: str = "", rtype: str = "",
             **fields: Any) -> Any:
        """The decoded result, or the MLBridgeError the call ended with."""
        ctx = self.d.make_context(call_id=fields.pop("call_id", uuid.uuid4().hex), command=command,
                                  resource_id=rid, resource_type=rtype, **fields)
        out = asyncio.run(self.d.run(ctx, json.dumps(args or {})))
        self.metadata = out.metadata
        if out.error is not None:
            self.seen.append(out.error.flat() + json.dumps(out.error.details))
            return out.error
        self.seen.append(out.result)
        return json.loads(out.result)

    def ok(self, command: str, args: dict[str, Any] | None = None, rid: str = "", rtype: str = "") -> Any:
        value = self.call(command, args, rid, rtype)
        assert not isinstance(value, MLBridgeError), value.flat()
        return value

    def fail(self, command: str, args: dict[str, Any] | None = None, rid: str = "", rtype: str = "",
             **fields: Any) -> MLBridgeError:
        value = self.call(command, args, rid, rtype, **fields)
        assert isinstance(value, MLBridgeError), f"expected an error, got {value!r}"
        return value

    def create(self, rtype: str, rid: str, config: dict[str, Any]) -> Any:
        return self.ok("common:create_resource", config, rid, rtype)

    def execute(self, rid: str, inputs: dict[str, Any] | None = None) -> Any:
        return self.ok("common:execute_resource", inputs or {}, rid)


class PortChild:
    """``python -m orchestrator.cli --address ADDR port *extra`` as a child, its stdout read by a thread.

    Every frame it writes is passed to ``decode``; what comes out is queued for :meth:`next`. Bytes that are
    not a whole frame, or a frame ``decode`` refuses, are kept in ``garbage`` and end the reading:
    :meth:`finish` fails on them. ``stderr_path`` keeps the child's log.
    """

    WAIT_S = 90

    def __init__(self, address: str, stderr_path: Path, *extra: str, decode: Callable[[bytes], Any]) -> None:
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("wb")
        self._decode = decode
        self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "--address", address, "port", *extra],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self.frames: queue.Queue[Any] = queue.Queue()
        self.garbage: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            header = out.read(4)
            if len(header) < 4:
                if header:
                    self.garbage.append(header)
                break
            body = out.read(struct.unpack(">I", header)[0])
            try:
                self.frames.put(self._decode(body))
            except Exception:  # noqa: BLE001 - recorded, and finish() fails on it
                self.garbage.append(header + body)
                break
        self.frames.put(None)

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def next(self) -> Any:
        """The next decoded frame (fails when the child closed its output)."""
        got = self.frames.get(timeout=self.WAIT_S)
        assert got is not None, f"the port closed its output; stderr: {self.stderr()}"
        return got

    def finish(self, close_stdin: bool = True) -> int:
        """Close its input (unless it ends by itself), wait for it; its exit code."""
        if close_stdin and self.proc.stdin is not None:
            self.proc.stdin.close()
        code = self.proc.wait(self.WAIT_S)
        self._reader.join(self.WAIT_S)
        self._stderr.close()
        assert not self.garbage, f"stdout carried bytes that are not frames: {self.garbage!r}"
        return code

    def rest(self) -> list[Any]:
        """Frames not read yet (after :meth:`finish`)."""
        out = []
        while (item := self.frames.get(timeout=5)) is not None:
            out.append(item)
        return out

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._stderr.closed:
            self._stderr.close()
