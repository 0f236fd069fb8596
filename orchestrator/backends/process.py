"""The ``process`` backend: each runtime is a local subprocess. Isolates nothing.

For development, unit tests and benchmarks: same unix-socket gRPC as the
docker backend, none of its sandboxing. It says so loudly at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .base import SOCKET_NAME, Backend, ExitInfo, WorkerHandle, WorkerSpec

log = logging.getLogger("mlbridge.backend.process")

WARNING = (
    "process backend: workers are plain subprocesses of the orchestrator with NO isolation "
    "(no container, no cgroup limits, no network policy, same user). Use it for development "
    "and tests only; use --backend docker for anything untrusted."
)


class ProcessBackend(Backend):
    name = "process"

    def __init__(self) -> None:
        self._warned = False

    async def prepare(self, bridges: Any) -> None:
        if not self._warned:
            log.warning(WARNING)
            self._warned = True

    async def start(self, spec: WorkerSpec) -> WorkerHandle:
        spec.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        sock = spec.socket_dir / SOCKET_NAME
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        env = dict(os.environ)
        env.update(spec.config.env)
        env.update(spec.env)
        env["MLBRIDGE_MAX_MESSAGE_BYTES"] = str(spec.max_message_bytes)
        # Let import-string bridges resolve the same way they do in the orchestrator.
        paths = [p for p in (env.get("PYTHONPATH", ""), os.getcwd()) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        for k, v in spec.labels.items():
            env["MLBRIDGE_LABEL_" + k.rsplit(".", 1)[-1].upper()] = v
        logfile = open(spec.socket_dir / "worker.log", "ab")  # noqa: SIM115 - owned by the process
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runtimes.core", "--bridge", spec.runtime, "--socket", str(sock),
                stdin=asyncio.subprocess.DEVNULL, stdout=logfile, stderr=logfile, env=env,
                start_new_session=True,
            )
        finally:
            logfile.close()
        return WorkerHandle(worker_id=spec.worker_id, bridge=spec.bridge, address=f"unix://{sock}",
                            socket_dir=spec.socket_dir, ref=proc, backend=self.name)

    async def stop(self, handle: WorkerHandle, *, kill: bool = False, timeout: float = 5.0) -> None:
        proc: asyncio.subprocess.Process = handle.ref
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        with contextlib.suppress(FileNotFoundError):
            (handle.socket_dir / SOCKET_NAME).unlink()

    async def exit_info(self, handle: WorkerHandle) -> ExitInfo | None:
        proc: asyncio.subprocess.Process = handle.ref
        if proc.returncode is None:
            return None
        code = proc.returncode
        reason = f"killed by signal {signal.Signals(-code).name}" if code < 0 else ""
        return ExitInfo(exit_code=code, reason=reason)

    async def stats(self, handle: WorkerHandle) -> dict[str, Any]:
        proc: asyncio.subprocess.Process = handle.ref
        try:
            pages = int(Path(f"/proc/{proc.pid}/statm").read_text().split()[1])
            return {"memory_bytes": pages * os.sysconf("SC_PAGE_SIZE"), "pid": proc.pid}
        except (OSError, ValueError, IndexError):
            return {}

    def usage(self, handle: WorkerHandle) -> dict[str, int]:
        proc: asyncio.subprocess.Process = handle.ref
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return {}
        out: dict[str, int] = {}
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                out["memory_peak_bytes"] = int(line.split()[1]) * 1024
        ticks = os.sysconf("SC_CLK_TCK")
        out["cpu_ns"] = (int(fields[11]) + int(fields[12])) * 1_000_000_000 // ticks  # utime + stime
        return out

    def log_tail(self, handle: WorkerHandle, lines: int = 20) -> str:
        try:
            text = (handle.socket_dir / "worker.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
