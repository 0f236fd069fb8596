"""Start the peer servers pinned to one core, wait until they answer, pause the idle ones.

Every server process runs under ``taskset -c CPU`` (everything it starts
inherits the affinity) with one torch/OpenMP thread, listening on 127.0.0.1
only. Each runs in a process group of its own so it can be paused
(``SIGSTOP``) while another server is measured: an idle LitServe polls its
queues and would otherwise take about a sixth of the shared core from
whoever is being measured. Logs go to a file in the run's temporary
directory; a server that dies while starting fails with the log's tail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import free_port
from benchmarks.peers import venvs

HERE = Path(__file__).resolve().parent
MLSERVER_MODEL = "tiny-bert"

#: One compute thread for every server, whatever library reads which variable.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
              "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


@dataclass(frozen=True)
class Batching:
    """A server's adaptive-batching knobs: at most ``max_size`` requests, waiting at most ``max_time_ms``."""

    max_size: int = 32
    max_time_ms: float = 2.0


@dataclass
class Pinned:
    """A server's process group on its core."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def pause(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGCONT)

    def tail(self, n: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (from /proc)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return parent


def process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant it has now."""
    parent = _parents()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return out


def children(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    return [c for c, pp in _parents().items() if pp == pid]


def cpu_seconds(pid: int, *, tree: bool = True) -> float:
    """User + system CPU seconds of ``pid`` (with ``tree``, of it and every descendant it has now)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in process_tree(pid) if tree else [pid]:
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def core_busy(cpu: int) -> float:
    """Busy seconds of core ``cpu`` so far (every field of /proc/stat but idle and iowait), whoever used it."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            ticks = [int(x) for x in line.split()[1:]]
            return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    raise ValueError(f"no cpu{cpu} in /proc/stat")


def tree_cpu(pid: int) -> dict[str, float]:
    """A server's CPU seconds as one part (it and everything it started)."""
    return {"server": cpu_seconds(pid)}


@contextlib.contextmanager
def pinned(name: str, cmd: list[str], cpu: int, logdir: Path, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> Iterator[Pinned]:
    """Run ``cmd`` under ``taskset -c cpu`` in its own process group; the group is ended on exit."""
    log = logdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["taskset", "-c", str(cpu), *cmd], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **ONE_THREAD, **(env or {})},
                                cwd=cwd or logdir, start_new_session=True)
    server = Pinned(name, proc, log)
    try:
        yield server
    finally:
        server.resume()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        time.sleep(0.2)  # children that outlived their parent get the TERM too (same group)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def wait_http(server: Pinned, url: str, timeout: float = 180) -> None:
    """Until GET ``url`` answers 200; fails early with the log's tail if the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited ({server.proc.returncode}) while starting:\n{server.tail()}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(url, timeout=2) as reply:  # noqa: S310 - a loopback URL we built
                if reply.status == 200:
                    return
        time.sleep(0.2)
    raise TimeoutError(f"{server.name} not ready at {url} after {timeout:.0f} s:\n{server.tail()}")


@contextlib.contextmanager
def mlserver(model_dir: Path, cpu: int, logdir: Path, batching: Batching) -> Iterator[tuple[Pinned, int]]:
    """MLServer 1.7 (HF runtime, adaptive batching, ``parallel_workers: 0``); yields it and its REST port.

    The settings in ``mlserver/`` are copied with the batching knobs written
    in; the model directory is given by MLServer's own setting variable. Its
    best settings on one core: inference in the server process
    (``parallel_workers: 0``), metrics off, the batching runtime subclass.
    """
    repo = logdir / "mlserver-repo"
    shutil.copytree(HERE / "mlserver", repo, ignore=shutil.ignore_patterns("__pycache__"))
    settings = json.loads((repo / "model-settings.json").read_text())
    settings.update(max_batch_size=batching.max_size, max_batch_time=batching.max_time_ms / 1000)
    (repo / "model-settings.json").write_text(json.dumps(settings, indent=2))
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = {"MLSERVER_HTTP_PORT": str(http), "MLSERVER_GRPC_PORT": str(grpc), "MLSERVER_METRICS_PORT": str(metrics),
           "MLSERVER_MODEL_HUGGINGFACE_PRETRAINED_MODEL": str(model_dir),
           # The HF runtime imports tensorflow (it is a dependency); transformers is told to use torch only.
           "USE_TF": "0", "USE_TORCH": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    python = venvs.python("mlserver")
    cmd = [str(python.parent / "mlserver"), "start", str(repo)]
    with pinned("mlserver", cmd, cpu, logdir, env) as server:
        wait_http(server, f"http://127.0.0.1:{http}/v2/models/{MLSERVER_MODEL}/ready")
        yield server, http


@contextlib.contextmanager
def litserve(model_dir: Path, cpu: int, logdir: Path, batching: Batching,
             fast_queue: bool = False) -> Iterator[tuple[Pinned, int]]:
    """LitServe with ``litserve_api.py`` (batching on, one inference worker, one API server); yields its port."""
    port = free_port()
    cmd = [str(venvs.python("litserve")), str(HERE / "litserve_api.py"), str(model_dir), str(port),
           str(batching.max_size), str(batching.max_time_ms / 1000), "1" if fast_queue else "0"]
    with pinned("litserve", cmd, cpu, logdir) as server:
        wait_http(server, f"http://127.0.0.1:{port}/health")
        yield server, port
