"""Workers do not outlive their orchestrator: a SIGKILLed orchestrator's workers exit by themselves.

The runtime's dead man's switch (``runtimes/core/watchdog.py``): no RPC open
and none received for ``MLBRIDGE_ORPHAN_GRACE_S`` means the orchestrator is
gone. Both backends: process workers (their own sessions, so a SIGKILL of
the orchestrator does not take them along) and hardened docker containers.
While the orchestrator lives, its health probes and session streams keep
every worker, idle or busy, well past the grace. Held workers (started, their
runtime waiting on a FIFO whose only writer is the orchestrator) exit as soon
as the orchestrator dies.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from benchmarks._common import free_port
from orchestrator import MLBridge
from orchestrator.backends.mountinfo import mount_points

ROOT = Path(__file__).resolve().parents[2]
GRACE_S = 3


def _serve(tmp: Path, backend: str) -> tuple[subprocess.Popen[bytes], str]:
    # models: true gives docker workers a models mount point and an export tmpfs as well as their socket tmpfs.
    (tmp / "config.yaml").write_text(f"""default_bridge: mock
backend: {backend}
state_dir: {tmp / 'state'}
bridges:
  mock:
    runtime: mock
    pool_size: 2
    held: 2
    models: true
    env: {{MLBRIDGE_ORPHAN_GRACE_S: "{GRACE_S}"}}
    limits: {{cpus: 0.5, memory: 256m, pids: 64}}
""")
    address = f"127.0.0.1:{free_port()}"
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", "--config", str(tmp / "config.yaml"),
                             "--listen", address], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 120
    while b"serving" not in (tmp / "serve.log").read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("mlbridge serve did not come up:\n" + (tmp / "serve.log").read_text()[-3000:])
        time.sleep(0.2)
    return proc, address


def _socket_roots() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("mlb-*"))


def _wait_until(check: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.2)
    return time.monotonic() - started


def _runtime_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"runtimes.start" in cmd and b"runtimes.mock:MockBridge" in cmd:
                pids.add(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_process_workers_exit_after_their_orchestrator_is_killed(tmp_path: Path) -> None:
    before, roots = _runtime_pids(), _socket_roots()
    proc, address = _serve(tmp_path, "process")
    try:
        with MLBridge.connect(address) as mb:
            assert mb.call("mock", "mock:echo", {"a": 1}) == {"a": 1}
            assert mb.call("mock", "mock:sleep", {"seconds": GRACE_S + 1.5})["slept"] >= GRACE_S  # a long call
        mine = _runtime_pids() - before
        assert len(mine) >= 4  # two spares (one claimed and replaced) and two held
        time.sleep(GRACE_S + 1.5)  # well past the grace with the orchestrator alive: probes keep them
        assert all(_alive(p) for p in mine)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    [root] = _socket_roots() - roots
    took = _wait_until(lambda: not any(_alive(p) for p in mine), GRACE_S + 15)
    print(f"process workers gone {took:.1f} s after the orchestrator's SIGKILL (grace {GRACE_S} s)")
    took = _wait_until(lambda: not root.exists(), 30)
    print(f"its socket folders gone {took:.1f} s after that")


@pytest.mark.docker
@pytest.mark.slow
def test_docker_workers_stop_after_their_orchestrator_is_killed(tmp_path: Path) -> None:
    client = docker.from_env()
    scope = hashlib.sha256(str((tmp_path / "state").resolve()).encode()).hexdigest()[:12]

    def running() -> list[str]:
        return [c.id for c in client.containers.list(filters={"label": f"io.mlbridge.scope={scope}"})]

    roots = _socket_roots()
    proc, address = _serve(tmp_path, "docker")
    [root] = _socket_roots() - roots
    try:
        with MLBridge.connect(address) as mb:
            assert mb.call("mock", "mock:echo", {"a": 1}) == {"a": 1}
        _wait_until(lambda: len(running()) >= 5, 60)  # claimed, two spares, two held
        mounted = mount_points(root)
        assert any(m.endswith(".x") for m in mounted) and any(m.endswith(".m") for m in mounted)
        time.sleep(GRACE_S + 1.5)
        assert len(running()) >= 5  # alive while the orchestrator is
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    try:
        took = _wait_until(lambda: not running(), GRACE_S + 30)
        print(f"docker workers stopped {took:.1f} s after the orchestrator's SIGKILL (grace {GRACE_S} s)")
        took = _wait_until(lambda: not mount_points(root) and not root.exists(), 30)
        print(f"its mounts and folders gone {took:.1f} s after that")
    finally:
        for c in client.containers.list(all=True, filters={"label": f"io.mlbridge.scope={scope}"}):
            c.remove(force=True)
        client.close()
