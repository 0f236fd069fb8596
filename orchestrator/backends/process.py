"""The ``process`` backend: each runtime is a local subprocess. Isolates nothing.

For development, unit tests and benchmarks: the same control channels as the
docker backend (a unix socket, or ``worker_channel: tcp-mtls`` on loopback),
none of its sandboxing. It says so loudly at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from orchestrator.config import Config
from runtimes.wire.errors import ConfigError

from .base import Backend, ControlChannel, ExitInfo, SupportsHold, WorkerHandle, WorkerSpec
from .hold import Holds
from .tls import TcpMtlsChannel, WorkerCA, write_worker_files
from .unix import SocketRoot, UnixSocketChannel

log = logging.getLogger("mlbridge.backend.process")

WARNING = (
    "process backend: workers are plain subprocesses of the orchestrator with NO isolation "
    "(no container, no cgroup limits, no network policy, same user). Use it for development "
    "and tests only; use --backend docker for anything untrusted."
)


class ProcessBackend(Backend, SupportsHold):
    """Runs each worker as a subprocess serving on a unix socket in its own directory.

    Args:
        socket_root: where the workers' socket directories go (a new temp dir by default).
        worker_channel: ``unix`` or ``tcp-mtls`` (on 127.0.0.1, with the CAs kept in ``ca_dir``).
        ca_dir: where the tcp-mtls CAs live (``<state_dir>/ca``).
    """

    name = "process"

    def __init__(self, socket_root: Path | None = None, *, worker_channel: str = "unix",
                 ca_dir: Path | None = None) -> None:
        self._warned = False
        self.sockets = SocketRoot(socket_root)
        self._holds = Holds()
        self._ca: WorkerCA | None = None
        self._mounts: dict[str, UnixSocketChannel] = {}  # worker id -> its directory
        self.use_channel(worker_channel, ca_dir)

    @classmethod
    def from_config(cls, config: Config) -> ProcessBackend:
        backend = cls()  # subclasses keep their own constructor
        backend.use_channel(config.worker_channel, Path(config.state_dir) / "ca")
        return backend

    def use_channel(self, worker_channel: str, ca_dir: Path | None = None) -> None:
        """Serve workers over ``unix`` or ``tcp-mtls`` (with the CAs kept in ``ca_dir``)."""
        if worker_channel not in ("unix", "tcp-mtls"):
            raise ConfigError(f"worker_channel {worker_channel!r}: the process backend has unix and tcp-mtls")
        self.worker_channel = worker_channel
        self._ca_dir = ca_dir or self.sockets.root / "ca"
        self._ca = None

    def _dir(self, handle: WorkerHandle) -> UnixSocketChannel:
        mount = self._mounts.get(handle.worker_id, handle.channel)
        assert isinstance(mount, UnixSocketChannel)
        return mount

    async def prepare(self, config: Config) -> None:
        """Check that every bridge's required packages are installed here (workers import them from this Python).

        Raises:
            ConfigError: naming each missing package and how to install it.
        """
        if not self._warned:
            log.warning(WARNING)
            self._warned = True
        problems = []
        for name, b in sorted(config.bridges.items()):
            for pkg in b.required_packages:
                try:
                    metadata.version(pkg)
                except metadata.PackageNotFoundError:
                    problems.append(f"bridge {name!r} needs package {pkg!r}, which is not installed: "
                                    f"pip install {pkg} (or use --backend docker with its image)")
        if problems:
            raise ConfigError("mlbridge cannot start:\n  " + "\n  ".join(problems))

    async def start(self, spec: WorkerSpec) -> WorkerHandle:
        channel = self.sockets.channel(spec.worker_id)
        env = dict(os.environ)
        env.update(spec.config.env)
        env["MLBRIDGE_MAX_MESSAGE_BYTES"] = str(spec.max_message_bytes)
        # Let import-string bridges resolve the same way they do in the orchestrator.
        paths = [p for p in (env.get("PYTHONPATH", ""), os.getcwd()) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        for k, v in spec.labels.items():
            env["MLBRIDGE_LABEL_" + k.rsplit(".", 1)[-1].upper()] = v
        control: ControlChannel = channel
        if self.worker_channel == "tcp-mtls":
            if self._ca is None:
                self._ca = WorkerCA(self._ca_dir)
            creds = self._ca.issue(spec.worker_id)
            port = _free_port()
            env["MLBRIDGE_LISTEN"] = f"127.0.0.1:{port}"
            env["MLBRIDGE_TLS_DIR"] = str(write_worker_files(channel.socket_dir, creds))
            control = TcpMtlsChannel("127.0.0.1", port, creds.server_name, self._ca.client_credentials())
        else:
            for key in ("MLBRIDGE_LISTEN", "MLBRIDGE_TLS_DIR"):
                env.pop(key, None)
        if spec.hold:
            self._holds.hold(spec.worker_id, channel.socket_dir)
        logfile = open(channel.socket_dir / "worker.log", "ab")  # noqa: SIM115 - owned by the process
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runtimes.start", "--bridge", spec.runtime, "--socket", str(channel.path),
                stdin=asyncio.subprocess.DEVNULL, stdout=logfile, stderr=logfile, env=env,
                start_new_session=True,
            )
        except BaseException:
            self._holds.drop(spec.worker_id)
            raise
        finally:
            logfile.close()
        self._mounts[spec.worker_id] = channel
        return WorkerHandle(worker_id=spec.worker_id, bridge=spec.bridge, channel=control, ref=proc,
                            backend=self.name, held=spec.hold)

    async def release(self, handle: WorkerHandle) -> None:
        """Let a held worker's runtime start (see :mod:`runtimes.start`)."""
        self._holds.release(handle.worker_id)
        handle.held = False

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
        self._holds.drop(handle.worker_id)
        mount = self._dir(handle)
        self._mounts.pop(handle.worker_id, None)
        with contextlib.suppress(FileNotFoundError):
            mount.path.unlink()

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
            elif line.startswith("VmRSS:"):
                out["memory_bytes"] = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                out["pids"] = int(line.split()[1])
        ticks = os.sysconf("SC_CLK_TCK")
        out["cpu_ns"] = (int(fields[11]) + int(fields[12])) * 1_000_000_000 // ticks  # utime + stime
        return out

    def log_tail(self, handle: WorkerHandle, lines: int = 20) -> str:
        try:
            text = (self._dir(handle).socket_dir / "worker.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def grant_models(self, handle: WorkerHandle, objects: Path, hashes: list[str]) -> dict[str, str]:
        """The store's own directories: a subprocess reads the host's files (nothing is isolated here)."""
        return {h: str(objects / h) for h in hashes}

    def export_dir(self, handle: WorkerHandle) -> tuple[str, Path] | None:
        path = self._dir(handle).socket_dir / "export"
        path.mkdir(mode=0o700, exist_ok=True)
        return str(path), path

    async def close(self) -> None:
        self._holds.close()
        self.sockets.close()


def _free_port() -> int:
    """A loopback port free now (the runtime binds it a moment later; a clash fails its start, visibly)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
