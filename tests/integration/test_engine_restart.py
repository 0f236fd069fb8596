"""A Docker engine restart under a running orchestrator is survived.

The engine goes down (its containers with it): the call in flight fails with
WORKER_DIED, calls meanwhile fail with a clear UNAVAILABLE; once the engine
answers again, workers are replaced and calls succeed, resources and their
kept state included. Restarts the engine `scripts/docker-engine.sh` started
(as CI's does); an engine started otherwise is left alone.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator import MLBridge
from runtimes.wire.errors import MLBridgeError, Unavailable, WorkerDied
from tests.harness import CI, ServerThread, make_config

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ENGINE = str(ROOT / "scripts" / "docker-engine.sh")


def _ours() -> bool:
    """Whether the running engine is one scripts/docker-engine.sh started (and can restart)."""
    out = subprocess.run([ENGINE, "status"], capture_output=True, text=True)
    return out.returncode == 0 and "started by" in (out.stdout + out.stderr)


def test_an_engine_restart_is_survived(tmp_path: Path) -> None:
    if not _ours():
        message = "the Docker engine was not started by scripts/docker-engine.sh, so this test will not restart it"
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    cfg = make_config(tmp_path, backend="docker", bridges={"mock": {
        "runtime": "mock", "pool_size": 1, "held": 1, "limits": {"cpus": 0.5, "memory": "256m", "pids": 64}}})
    with ServerThread(cfg) as srv, MLBridge.connect(srv.target) as mb:
        assert mb.call("mock", "mock:echo", {"a": 1}) == {"a": 1}
        rid = mb.create_resource("mock", "journal", {})
        mb.execute_resource(rid, {"entry": "before"})
        out: list[Any] = []

        def long_call() -> None:
            try:
                out.append(mb.call("mock", "mock:spin", {"seconds": 8}))
            except MLBridgeError as exc:
                out.append(exc)

        caller = threading.Thread(target=long_call)
        caller.start()
        time.sleep(0.5)
        try:
            subprocess.run([ENGINE, "down"], check=True, capture_output=True, timeout=60)
            caller.join(30)
            assert isinstance(out[0], WorkerDied), out  # the call in flight: its worker went with the engine
            with pytest.raises(Unavailable):
                mb.call("mock", "mock:echo", {"during": 1})
        finally:
            subprocess.run([ENGINE, "up"], check=True, capture_output=True, timeout=120)
        started = time.monotonic()
        while True:
            try:
                assert mb.call("mock", "mock:echo", {"after": 1}) == {"after": 1}
                break
            except Unavailable:
                assert time.monotonic() - started < 60, "no call succeeded within 60 s of the engine's return"
                time.sleep(0.5)
        print(f"calls succeed again {time.monotonic() - started:.1f} s after the engine answers")
        assert mb.execute_resource(rid, {"entry": "after"}) == {"entries": ["before", "after"]}
