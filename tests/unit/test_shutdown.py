"""SIGTERM stops `mlbridge serve` gracefully: no new calls, calls in flight finish, then every worker stops."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import free_port
from orchestrator import MLBridge

ROOT = Path(__file__).resolve().parents[2]


def _runtime_pids(parent: int) -> set[int]:
    """Live runtime processes started by ``parent`` (the process backend's workers)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if b"runtimes.start" in cmd and fields[0] != "Z" and int(fields[1]) == parent:
                pids.add(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_finishes_calls_in_flight_then_stops_every_worker(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (tmp_path / "config.yaml").write_text(f"""default_bridge: mock
backend: process
state_dir: {state}
bridges:
  mock: {{runtime: mock, pool_size: 2, held: 1}}
""")
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", "--config", str(tmp_path / "config.yaml"),
                             "--listen", address], stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while b"serving" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        results: list[Any] = []
        with MLBridge.connect(address) as mb:
            assert mb.call("mock", "mock:echo", {"x": 1}) == {"x": 1}
            workers = _runtime_pids(proc.pid)
            assert len(workers) >= 3  # the claimed worker, a spare, a held one

            def long_call() -> None:
                try:
                    results.append(mb.call("mock", "mock:sleep", {"seconds": 2.0}))
                except BaseException as exc:  # noqa: BLE001
                    results.append(exc)

            caller = threading.Thread(target=long_call)
            caller.start()
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            caller.join(30)
        assert results and isinstance(results[0], dict) and results[0]["slept"] >= 2.0, results
        assert proc.wait(30) == 0
        assert not [p for p in workers if _alive(p)]  # nothing is left running
        assert "stopping: draining calls" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
