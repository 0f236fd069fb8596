"""The faults, as each backend's workers take them.

=========  =====================================================  ==========================================
fault      docker backend                                         process backend
=========  =====================================================  ==========================================
kill       ``docker kill`` (SIGKILL to the container)             SIGKILL to the worker process
pause      ``docker pause`` for N s, then ``docker unpause``      SIGSTOP for N s, then SIGCONT
oom        the container's memory limit (and memory+swap) is      refused: the process backend enforces no
           lowered through the engine's update API to its         memory limit
           current usage + 4 MiB, then ``docker exec`` fills its
           ``/tmp`` tmpfs (pages charged to the container's
           memory cgroup that nothing can reclaim) until the
           kernel's OOM killer takes the runtime, the largest
           process; the engine flags the container OOMKilled
=========  =====================================================  ==========================================

``slow``: docker: ``NanoCpus`` lowered to 0.01 CPU for N s, then restored
(``docker update --cpus``); process: the worker runs 10 ms of every 100 ms
(SIGSTOP/SIGCONT duty cycle) for N s.

``cut`` (the control channel): the worker's ``runtime.sock`` is moved aside
(a hard link keeps it; new connections get ENOENT) and the runtime process
alone is SIGSTOPped (open streams get no answer); the container's init and
the engine's view stay as they were (running, not paused). After N s the
socket is put back and the runtime continued.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .targets import ChaosRefused, DockerWorkers, WorkerTarget

__all__ = ["FAULTS", "DockerFaults", "FaultResult", "ProcessFaults"]

FAULTS = ("kill", "pause", "oom", "slow", "cut")
SLOW_CPUS = 0.01
OOM_MARGIN = 4 << 20
OOM_FILL_MB = 256
_HIDDEN = ".runtime.sock.chaos"


@dataclass
class FaultResult:
    """What one injection did: ``effect`` is what was seen ("killed", "oom_killed", "paused 1.0 s", ...),
    ``gone`` when the worker had already ended, ``error`` when the injection failed, ``effective_at``
    the monotonic time the fault took hold (the kill sent, the pause in place, the memory filling)."""

    effect: str = ""
    gone: bool = False
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    effective_at: float = 0.0


_now = time.monotonic


def _sleep(seconds: float, stop: threading.Event | None) -> None:
    if stop is None:
        time.sleep(seconds)
    else:
        stop.wait(seconds)


def _hide_socket(path: str | None) -> bool:
    """Move ``runtime.sock`` aside (a hard link keeps the inode); False when it cannot be done here."""
    if not path:
        return False
    hidden = os.path.join(os.path.dirname(path), _HIDDEN)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(hidden)
        os.link(path, hidden)
        os.unlink(path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(hidden)
        return False
    return True


def _restore_socket(path: str) -> None:
    hidden = os.path.join(os.path.dirname(path), _HIDDEN)
    with contextlib.suppress(OSError):
        os.rename(hidden, path)


def _signal(pid: int, sig: signal.Signals) -> bool:
    """Send ``sig``; False when the process is gone.

    Raises:
        ChaosRefused: this user may not signal it.
    """
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        raise ChaosRefused(f"no permission to signal process {pid} (run as its user or root)") from None
    return True


class _Signals:
    """Faults made of signals to one host process (the process backend, and ``cut`` everywhere)."""

    @staticmethod
    def _pause(pid: int, seconds: float, stop: threading.Event | None) -> tuple[float, bool] | None:
        """SIGSTOP ``pid`` for ``seconds``, then SIGCONT: (when it stopped, whether it was still there to
        continue), or None when it was gone already."""
        if not _signal(pid, signal.SIGSTOP):
            return None
        at = _now()
        try:
            _sleep(seconds, stop)
        finally:
            alive = _signal(pid, signal.SIGCONT)
        return at, alive

    @staticmethod
    def stop_for(pid: int, seconds: float, stop: threading.Event | None) -> FaultResult:
        paused = _Signals._pause(pid, seconds, stop)
        if paused is None:
            return FaultResult(gone=True, effect="already gone")
        at, alive = paused
        return FaultResult(effect=f"stopped {seconds:g} s" + ("" if alive else "; ended meanwhile"), effective_at=at)

    @staticmethod
    def throttle(pid: int, seconds: float, stop: threading.Event | None) -> FaultResult:
        at = _now()
        end = at + seconds
        try:
            while time.monotonic() < end and not (stop is not None and stop.is_set()):
                if not _signal(pid, signal.SIGSTOP):
                    return FaultResult(effect="ended while throttled")
                time.sleep(0.09)
                if not _signal(pid, signal.SIGCONT):
                    return FaultResult(effect="ended while throttled")
                time.sleep(0.01)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)
        return FaultResult(effect=f"ran 10% of the time for {seconds:g} s", effective_at=at)

    @staticmethod
    def cut(pid: int | None, socket_path: str | None, seconds: float, stop: threading.Event | None) -> FaultResult:
        if pid is None:
            raise ChaosRefused("cut needs the runtime's host pid (run on the engine's host, as root)")
        hidden = _hide_socket(socket_path)
        try:
            paused = _Signals._pause(pid, seconds, stop)
        finally:
            if hidden and socket_path:
                _restore_socket(socket_path)
        if paused is None:
            return FaultResult(gone=True, effect="already gone")
        at, alive = paused
        effect = f"runtime stopped {seconds:g} s" + (", socket hidden" if hidden else ", socket not reachable here")
        return FaultResult(effect=effect + ("" if alive else "; ended meanwhile"), effective_at=at)


class ProcessFaults:
    """Faults for the process backend's workers (signals to the worker process)."""

    backend = "process"

    @staticmethod
    def refuses(kind: str) -> str:
        """Why this backend cannot take ``kind`` ("" when it can)."""
        if kind == "oom":
            return ("oom needs a memory limit to exceed; the process backend enforces none "
                    "(use the docker backend)")
        return ""

    def kill(self, t: WorkerTarget) -> FaultResult:
        assert t.pid is not None
        if not _signal(t.pid, signal.SIGKILL):
            return FaultResult(gone=True, effect="already gone")
        return FaultResult(effect="SIGKILL", effective_at=_now())

    def pause(self, t: WorkerTarget, seconds: float, stop: threading.Event | None = None) -> FaultResult:
        assert t.pid is not None
        return _Signals.stop_for(t.pid, seconds, stop)

    def slow(self, t: WorkerTarget, seconds: float, stop: threading.Event | None = None) -> FaultResult:
        assert t.pid is not None
        return _Signals.throttle(t.pid, seconds, stop)

    def cut(self, t: WorkerTarget, seconds: float, stop: threading.Event | None = None) -> FaultResult:
        return _Signals.cut(t.pid, t.socket_path, seconds, stop)

    def oom(self, t: WorkerTarget, wait_s: float = 5.0) -> FaultResult:
        raise ChaosRefused(self.refuses("oom"))


class DockerFaults:
    """Faults for the docker backend's worker containers, through the engine's API."""

    backend = "docker"

    @staticmethod
    def refuses(kind: str) -> str:
        """Why this backend cannot take ``kind`` ("" when it can)."""
        return ""

    def __init__(self, workers: DockerWorkers) -> None:
        self.workers = workers
        self.api = workers.client.api

    def _gone(self, exc: BaseException) -> bool:
        from docker import errors as derr

        return isinstance(exc, derr.NotFound) or (isinstance(exc, derr.APIError) and exc.status_code == 409)

    def _inspect(self, cid: str) -> dict[str, Any] | None:
        from docker import errors as derr

        try:
            return dict(self.api.inspect_container(cid))
        except derr.NotFound:
            return None

    def _update(self, cid: str, body: dict[str, Any]) -> None:
        """``POST /containers/{id}/update`` (docker-py's update_container cannot set every field)."""
        resp = self.api.post(f"{self.api.base_url}/v{self.api.api_version}/containers/{cid}/update", json=body)
        if resp.status_code >= 400:
            try:
                message = resp.json().get("message", resp.text)
            except ValueError:
                message = resp.text
            raise RuntimeError(f"engine refused the update ({resp.status_code}): {message}")

    def _guard(self, what: str, fn: Any) -> FaultResult:
        from docker import errors as derr

        try:
            result: FaultResult = fn()
            return result
        except (derr.DockerException, OSError, RuntimeError) as exc:
            if self._gone(exc):
                return FaultResult(gone=True, effect="already gone")
            return FaultResult(error=f"{what}: {exc}")

    def kill(self, t: WorkerTarget) -> FaultResult:
        def run() -> FaultResult:
            self.api.kill(t.ref)
            return FaultResult(effect="docker kill (SIGKILL)", effective_at=_now())

        return self._guard("docker kill", run)

    def pause(self, t: WorkerTarget, seconds: float, stop: threading.Event | None = None) -> FaultResult:
        def run() -> FaultResult:
            self.api.pause(t.ref)
            at = _now()
            try:
                _sleep(seconds, stop)
            finally:
                try:
                    self.api.unpause(t.ref)
                except Exception as exc:  # noqa: BLE001 - removed meanwhile is fine
                    if not self._gone(exc):
                        raise
                    return FaultResult(effect=f"paused {seconds:g} s; removed meanwhile", effective_at=at)
            return FaultResult(effect=f"paused {seconds:g} s", effective_at=at)

        return self._guard("docker pause", run)

    def slow(self, t: WorkerTarget, seconds: float, stop: threading.Event | None = None) -> FaultResult:
        def run() -> FaultResult:
            attrs = self._inspect(t.ref)
            if attrs is None:
                return FaultResult(gone=True, effect="already gone")
            before = int((attrs.get("HostConfig") or {}).get("NanoCpus") or 0)
            self._update(t.ref, {"NanoCpus": int(SLOW_CPUS * 1e9)})
            at = _now()
            try:
                _sleep(seconds, stop)
            finally:
                with contextlib.suppress(Exception):
                    self._update(t.ref, {"NanoCpus": before})
            return FaultResult(effect=f"cpus {before / 1e9:g} -> {SLOW_CPUS:g} for {seconds:g} s",
                               details={"nano_cpus": before}, effective_at=at)

        return self._guard("docker update --cpus", run)

    def cut(self, t: WorkerTarget, seconds: float, stop: threading.Event | None = None) -> FaultResult:
        pid = t.pid or self.workers.runtime_pid(t)
        return _Signals.cut(pid, t.socket_path, seconds, stop)

    def _usage(self, cid: str) -> int:
        for rel in (f"memory/docker/{cid}/memory.usage_in_bytes", f"docker/{cid}/memory.current",
                    f"memory/system.slice/docker-{cid}.scope/memory.usage_in_bytes",
                    f"system.slice/docker-{cid}.scope/memory.current"):
            try:
                with open(f"/sys/fs/cgroup/{rel}") as fh:
                    return int(fh.read().strip())
            except (OSError, ValueError):
                continue
        stats = self.api.stats(cid, stream=False, one_shot=True)
        return int((stats.get("memory_stats") or {}).get("usage") or 0)

    def oom(self, t: WorkerTarget, wait_s: float = 5.0) -> FaultResult:
        """Lower the limit to usage + 4 MiB, fill ``/tmp`` from inside, wait for the kernel's OOM kill.

        If the container still runs after ``wait_s`` its limit is put back and
        the result says the OOM was not triggered.
        """

        def run() -> FaultResult:
            attrs = self._inspect(t.ref)
            if attrs is None:
                return FaultResult(gone=True, effect="already gone")
            host = attrs.get("HostConfig") or {}
            before, before_swap = int(host.get("Memory") or 0), int(host.get("MemorySwap") or 0)
            limit = self._usage(t.ref) + OOM_MARGIN
            if before and limit >= before:
                limit = before
            else:
                self._update(t.ref, {"Memory": limit, "MemorySwap": limit})
            user = str((attrs.get("Config") or {}).get("User") or "")
            exec_id = self.api.exec_create(t.ref, ["dd", "if=/dev/zero", "of=/tmp/.mlbridge-chaos-oom", "bs=1M",
                                                   f"count={OOM_FILL_MB}"], user=user or None)["Id"]
            started = time.monotonic()
            with contextlib.suppress(Exception):  # the exec ends with the container
                self.api.exec_start(exec_id)
            deadline = started + wait_s
            while time.monotonic() < deadline:
                state = (self._inspect(t.ref) or {}).get("State")
                if state is None:
                    return FaultResult(effect="limit lowered, container ended and was removed",
                                       details={"limit": limit, "limit_before": before}, effective_at=started)
                if not state.get("Running"):
                    oom = bool(state.get("OOMKilled"))
                    return FaultResult(effect="oom_killed" if oom else f"exited {state.get('ExitCode')}",
                                       details={"limit": limit, "limit_before": before, "oom_killed": oom,
                                                "exit_code": state.get("ExitCode")}, effective_at=started)
                time.sleep(0.05)
            with contextlib.suppress(Exception):
                self._update(t.ref, {"Memory": before, "MemorySwap": before_swap or before})
            with contextlib.suppress(Exception):
                exec_rm = self.api.exec_create(t.ref, ["rm", "-f", "/tmp/.mlbridge-chaos-oom"], user=user or None)
                self.api.exec_start(exec_rm["Id"])
            return FaultResult(error=f"no OOM kill within {wait_s:g} s; limit restored",
                               details={"limit": limit, "limit_before": before})

        return self._guard("oom", run)
