"""After a worker dies, its tenant's resources are re-created once each, however many callers arrive at once."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import pytest

from orchestrator import MLBridge, MLBridgeError
from tests.harness import ServerThread, make_config

RESOURCES = 40
CALLERS = 16


def test_a_storm_of_callers_after_a_worker_dies_re_creates_each_resource_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_config(tmp_path, bridges={"mock": {"runtime": "mock", "pool_size": 2}}, default_bridge="mock")
    with ServerThread(cfg) as srv, MLBridge.connect(srv.target) as mb:
        ids = [mb.create_resource("mock", "counter", {"start": i}) for i in range(RESOURCES)]
        pool = srv.orch.pools["mock"]
        [worker] = pool.claimed("default")
        os.kill(worker.handle.ref.pid, signal.SIGKILL)
        caplog.set_level(logging.INFO, logger="mlbridge.orchestrator")
        errors: list[MLBridgeError] = []
        results: dict[str, list[int]] = {rid: [] for rid in ids}
        lock = threading.Lock()

        def caller(k: int) -> None:
            with MLBridge.connect(srv.target) as c:
                for rid in ids[k % RESOURCES:] + ids[:k % RESOURCES]:  # each starts somewhere else
                    try:
                        value = c.execute_resource(rid, {"add": 0})["value"]
                    except MLBridgeError as err:
                        with lock:
                            errors.append(err)
                        continue
                    with lock:
                        results[rid].append(value)

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(CALLERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        unavailable = [e for e in errors if e.code in ("WORKER_DIED", "UNAVAILABLE")]
        assert [e for e in errors if e not in unavailable] == []  # never ALREADY_EXISTS or another surprise
        print(f"{len(unavailable)} of {CALLERS * RESOURCES} calls met the dead worker")
        recreated = [r for r in caplog.records if "re-creating resource" in r.getMessage()]
        assert len(recreated) == RESOURCES, f"{len(recreated)} re-creations for {RESOURCES} lost resources"
        for i, rid in enumerate(ids):  # every one came back from its spec
            assert results[rid] and set(results[rid]) == {i}
