"""mlbridge as the benchmark serves it: a pinned ``mlbridge serve`` with a transformers worker.

The model goes into a model store of the run's own (``ModelStore.add``), the
orchestrator is started by ``benchmarks._common.served_orchestrator`` with a
config whose only bridge is the shipped default's ``transformers`` entry
(``models: true``, its handler threads and limits), and the clients use
``pipeline`` resources on it. Pinning: ``served_orchestrator``
starts the orchestrator from this thread, so the thread's CPU affinity is
set to the server core around that call and the orchestrator (and every
process-backend worker it forks) inherits it. A docker worker is not a
child: it has the container limit ``cpus: 1``, and once it has started its
processes are pinned from the host to the same core (``pin_containers``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks._common import ROOT, served_orchestrator
from benchmarks.peers.load import Answer, MakeCaller, check, mlbridge_grpc
from benchmarks.peers.servers import ONE_THREAD, Batching, children, cpu_seconds, process_tree
from runtimes.wire.version import __version__

MODEL = "tiny-bert"
IMAGE = f"mlbridge/transformers:{__version__}"
TASK = "text-classification"


def docker_image_ready() -> bool:
    """Whether the transformers image is built (``mlbridge images build transformers``)."""
    try:
        return subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def cpu_affinity(cpus: set[int]) -> Iterator[None]:
    """This thread's CPU affinity set to ``cpus`` for the block (children forked meanwhile keep it)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _config(backend: str, tmp: Path, pool_size: int) -> str:
    """The shipped default config's ``transformers`` entry (its thread count, limits), as this run needs it."""
    shipped = yaml.safe_load((ROOT / "orchestrator" / "default_config.yaml").read_text())["bridges"]["transformers"]
    bridge = {**shipped, "pool_size": pool_size, "models": True, "env": {**shipped.get("env", {}), **ONE_THREAD}}
    if backend != "docker":
        bridge["runtime"] = "runtimes.transformers:TransformersBridge"
    return yaml.safe_dump({"default_bridge": "transformers", "backend": backend, "state_dir": str(tmp / "state"),
                           "model_store": str(tmp / "store"), "bridges": {"transformers": bridge}})


def _orchestrator_pid(address: str) -> int:
    """The child of this process serving ``address`` (``served_orchestrator`` keeps its handle to itself)."""
    for child in children(os.getpid()):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"orchestrator.cli" in argv and address.encode() in argv:
                return child
    raise RuntimeError(f"no child process of this one serves {address}")


@dataclass
class MLBridgeSide:
    """A served orchestrator: its address and its process tree (for pausing while peers are measured)."""

    address: str
    backend: str
    pid: int
    cpu_core: int
    containers: tuple[int, ...] = ()  # host pids of the docker workers' init processes
    paused: tuple[int, ...] = ()

    def _worker_roots(self) -> list[int]:
        return list(self.containers) if self.backend == "docker" else children(self.pid)

    def pin_containers(self) -> None:
        """Docker: pin every process and thread of this orchestrator's worker containers to the server core.

        The backend gives a container a CPU quota (``cpus: 1``), not a core;
        pinning it from the host puts it on the same core as everything else
        measured, so the comparison stays one core against one core.
        """
        from orchestrator import MLBridge

        with MLBridge.connect(self.address) as mb:
            oid = mb.stats()["orchestrator_id"]
        ids = subprocess.run(["docker", "ps", "-q", "--filter", f"label=io.mlbridge.orchestrator={oid}"],
                             capture_output=True, text=True, check=True).stdout.split()
        pids = [int(subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", cid], capture_output=True,
                                   text=True, check=True).stdout) for cid in ids]
        for root in pids:
            for pid in process_tree(root):
                subprocess.run(["taskset", "-a", "-p", "-c", str(self.cpu_core), str(pid)], capture_output=True,
                               check=True)
        self.containers = tuple(pids)

    def pause(self) -> None:
        """SIGSTOP the orchestrator and its workers (processes or containers' processes), as they are now."""
        self.paused = tuple(p for root in [self.pid, *self.containers] for p in process_tree(root))
        for pid in self.paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self.paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.paused = ()

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of the orchestrator, and of its workers (child processes or containers)."""
        return {"orchestrator": cpu_seconds(self.pid, tree=False),
                "worker": sum(cpu_seconds(root) for root in self._worker_roots())}

    def pipelines(self, batching: Batching) -> tuple[str, str]:
        """Two ``pipeline`` resources on the model: batching off, and on with ``batching``."""
        from orchestrator import MLBridge

        with MLBridge.connect(self.address, timeout=300) as mb:
            off = mb.create_resource("transformers", "pipeline", {"task": TASK, "model": MODEL})
            on = mb.create_resource("transformers", "pipeline", {
                "task": TASK, "model": MODEL,
                "batching": {"max_batch_size": batching.max_size, "max_batch_time_ms": batching.max_time_ms}})
        if self.backend == "docker":
            self.pin_containers()
        return off, on

    def caller(self, resource_id: str) -> MakeCaller:
        return mlbridge_grpc(self.address, resource_id)


@contextlib.contextmanager
def served_mlbridge(model_dir: Path, backend: str, cpu: int, tmp: Path, pool_size: int = 0) -> Iterator[MLBridgeSide]:
    """``mlbridge serve`` on ``cpu`` with ``model_dir`` in its store as ``tiny-bert``.

    No warm spare by default: the first resource claims a worker started for
    it, and no spare is left importing torch on the measured core meanwhile
    (a spare refilled after the claim would compete with the first rounds).
    """
    from orchestrator.models.store import ModelStore

    run = tmp / f"mlbridge-{backend}-{time.monotonic_ns()}"
    run.mkdir()
    ModelStore(run / "store").add(model_dir, name=MODEL)
    cfg = run / "config.yaml"
    cfg.write_text(_config(backend, run, pool_size))
    env = {"PYTHONPATH": str(ROOT), **ONE_THREAD}
    with contextlib.ExitStack() as stack:
        with cpu_affinity({cpu}):
            address = stack.enter_context(served_orchestrator(backend, env, config=str(cfg)))
        side = MLBridgeSide(address, backend, _orchestrator_pid(address), cpu)
        try:
            yield side
        finally:
            side.resume()  # a paused orchestrator cannot stop


def cold_starts(model_dir: Path, backend: str, cpu: int, tmp: Path, runs: int, text: str, want: Answer) -> str:
    """Cold start of a transformers worker (no warm spare) to its first answer, ``runs`` times."""
    from orchestrator import MLBridge

    create: list[float] = []
    first: list[float] = []
    for _ in range(runs):
        with served_mlbridge(model_dir, backend, cpu, tmp, pool_size=0) as side, \
                MLBridge.connect(side.address, timeout=300) as mb:
            t0 = time.perf_counter()
            rid = mb.create_resource("transformers", "pipeline", {"task": TASK, "model": MODEL})
            t1 = time.perf_counter()
            out: Any = mb.execute_resource(rid, {"inputs": text})["output"][0]
            t2 = time.perf_counter()
            why = check(text, Answer(out["label"], float(out["score"])), want)
            if why is not None:
                raise AssertionError(f"cold-started worker answered wrong: {why}")
            create.append((t1 - t0) * 1000)
            first.append((t2 - t0) * 1000)
    label = f"{backend} backend" + (" (hardened container, cpus 1 quota)" if backend == "docker" else " (pinned)")
    return (f"cold start of a transformers worker, {label}, no warm spare, {runs} run(s), median: "
            f"first answer {sorted(first)[len(first) // 2]:.0f} ms after the first request "
            f"(worker start + imports + pipeline load {sorted(create)[len(create) // 2]:.0f} ms; "
            f"min {min(first):.0f} ms)")
