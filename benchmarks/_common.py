"""Shared helpers: percentiles, a raw gRPC echo server, a served orchestrator."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "p50": s[len(s) // 2],
        "p90": s[int(len(s) * 0.90)],
        "p99": s[min(len(s) - 1, int(len(s) * 0.99))],
        "mean": statistics.fmean(s),
    }



def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@contextlib.contextmanager
def raw_echo_server() -> Iterator[str]:
    """A single-hop Python gRPC echo (grpc.aio, same message types) in its own process."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.raw_echo", str(port)], cwd=ROOT)
    try:
        wait_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def served_orchestrator(backend: str = "process", extra_env: dict[str, str] | None = None,
                        state_dir: str | None = None, config: str | None = None) -> Iterator[str]:
    """`mlbridge serve` in its own process (with ``config``, a config file), yielding its address once it serves."""
    port = free_port()
    env = {**os.environ, **(extra_env or {})}
    env.setdefault("MLBRIDGE_LOG_LEVEL", "WARNING")
    extra = ["--state-dir", state_dir] if state_dir else []
    extra += ["--config", config] if config else []
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", "--backend", backend,
                             "--listen", f"127.0.0.1:{port}", *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "serving" in line:
                break
        else:
            raise RuntimeError("mlbridge serve exited before serving")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(60)
