"""Hardened docker workers: start-up, claiming, idle memory; each beside a baseline.

In one run, with the mock bridge's image and the hardened defaults:
  - a pool of 4 workers from nothing to ready (target < 1.5 s), beside the
    same pool with the process backend;
  - one worker cold-started to its first answered call (target p50 < 500 ms),
    beside a bare `docker run` of the same image that only exits (the engine's
    own floor) and a process-backend worker;
  - claiming a warm spare for a new tenant (target p50 < 5 ms);
  - idle memory of one worker (target < 40 MB), beside an idle python3 in the
    same image under the same limits.

    python -m benchmarks.docker_startup [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time
import uuid

from benchmarks._common import machine, percentiles
from orchestrator.backends.base import Backend
from orchestrator.backends.docker import DockerBackend
from orchestrator.backends.process import ProcessBackend
from orchestrator.claims import NO_SETTINGS, ClaimPipeline
from orchestrator.config import BridgeConfig, Config
from orchestrator.pool import Pool
from orchestrator.registry import Registry
from orchestrator.worker import Worker
from runtimes.wire.proto import runtime_pb2 as rpb

IMAGE = "mlbridge/mock:0.1.0"
# From nothing, as before held workers and start-up CPU existed: benchmarks.startup measures those.
CFG = BridgeConfig(runtime="mock", pool_size=4, max_workers=64, held=0, startup_cpus=0, max_spares=4,
                   limits={"cpus": 0.5, "memory": "256m", "pids": 128})


def _pool(backend: Backend, size: int) -> Pool:
    cfg = CFG.model_copy(update={"pool_size": size})
    claims = ClaimPipeline(backend, Registry(":memory:"), NO_SETTINGS)
    return Pool("mock", cfg, backend, orchestrator_id=f"bench-{uuid.uuid4().hex[:6]}", max_message_bytes=16 << 20,
                claims=claims)


async def pool_ready(backend: Backend, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        pool = _pool(backend, 4)
        t = time.perf_counter()
        await pool.start()
        out.append((time.perf_counter() - t) * 1000)
        assert pool.ready_count == 4
        await pool.stop()
    return out


async def cold_start(backend: Backend, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        pool = _pool(backend, 0)
        t = time.perf_counter()
        worker = await pool._start_worker()
        assert worker.session is not None
        reply = await worker.session.request(rpb.CallRequest(call_id="1", command="common:ping"))
        out.append((time.perf_counter() - t) * 1000)
        assert reply.ok
        await pool.stop()
    return out


async def claim(backend: Backend, runs: int) -> list[float]:
    pool = _pool(backend, 2)
    await pool.start()
    out = []
    for i in range(runs):
        while not pool._spares or pool._starting or pool._spare_starts:  # a pool at rest, outside the timing
            await asyncio.sleep(0.01)
        t = time.perf_counter()
        w = await pool.acquire(f"tenant-{i}")
        out.append((time.perf_counter() - t) * 1000)
        assert w.tenant == f"tenant-{i}"
    await pool.stop()
    return out


async def idle_memory(backend: DockerBackend) -> float:
    pool = _pool(backend, 0)
    worker: Worker = await pool._start_worker()
    assert worker.session is not None
    await worker.session.request(rpb.CallRequest(call_id="1", command="mock:echo", args_json="{}"))
    await asyncio.sleep(2)
    stats = await backend.stats(worker.handle, max_age_s=0)
    await pool.stop()
    return stats["memory_bytes"] / 1e6


def docker_floor(runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "true", IMAGE],
                       check=True, capture_output=True)
        out.append((time.perf_counter() - t) * 1000)
    return out


def idle_python_baseline() -> float:
    name = f"mlbridge-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "run", "-d", "--rm", "--name", name, "--network", "none", "--memory", "256m",
                    "--user", "10001", "--entrypoint", "python3", IMAGE, "-c", "import time; time.sleep(60)"],
                   check=True, capture_output=True)
    try:
        time.sleep(2)
        raw = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", name],
                             check=True, capture_output=True, text=True).stdout.split("/")[0].strip()
        num = float("".join(c for c in raw if c.isdigit() or c == "."))
        return num * {"KiB": 1024 / 1e6, "MiB": 1.048576, "GiB": 1073.741824}[raw.lstrip("0123456789.")]
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def line(name: str, samples: list[float], target: str = "") -> str:
    p = percentiles(samples)
    return f"{name:<52} p50 {p['p50']:8.1f}  p90 {p['p90']:8.1f}  min {min(samples):8.1f}  {target}"


async def main(runs: int) -> None:
    docker_backend = DockerBackend()
    await docker_backend.prepare(Config(bridges={"mock": CFG}))
    process_backend = ProcessBackend()
    print(f"machine: {machine()}")
    print(f"runs: {runs}; image {IMAGE}; limits cpus 0.5, memory 256m, pids 128; times in ms")
    d_pool = await pool_ready(docker_backend, max(3, runs // 2))
    p_pool = await pool_ready(process_backend, max(3, runs // 2))
    print(line("pool of 4 hardened workers, nothing to ready", d_pool, "(target < 1500)"))
    print(line("  baseline: pool of 4 process workers", p_pool))
    d_cold = await cold_start(docker_backend, runs)
    floor = docker_floor(runs)
    p_cold = await cold_start(process_backend, runs)
    print(line("one hardened worker, cold start to first answer", d_cold, "(target p50 < 500)"))
    print(line("  baseline: bare `docker run --rm IMAGE true`", floor))
    print(line("  baseline: one process worker to first answer", p_cold))
    print(line("claim a warm spare for a new tenant", await claim(docker_backend, runs), "(target p50 < 5)"))
    mem = await idle_memory(docker_backend)
    base = idle_python_baseline()
    print(f"{'idle memory of one hardened worker (cgroup)':<52} {mem:8.1f} MB  (target < 40)")
    print(f"{'  baseline: idle python3 in the same image':<52} {base:8.1f} MB  ratio {mem / base:.2f}x")
    print(f"pool ratio docker/process p50: {statistics.median(d_pool) / statistics.median(p_pool):.2f}x")
    await docker_backend.close()
    await process_backend.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    asyncio.run(main(ap.parse_args().runs))
