"""What a worker container's engine state means: how it ended, what it uses.

OOM detection. Workers run ``docker-init`` (``init=True``) over the image's
``tini``, which runs ``python3 -m runtimes.start`` (then :mod:`runtimes.core`). When the kernel OOM-kills
the Python runtime, tini exits with 128+9 = 137 and so does the container.
The engine records an OOM event of the container's memory cgroup (cgroup v1
``memory.oom_control``, v2 ``memory.events``) whichever process was the
victim, and shows it as ``State.OOMKilled`` once the container has exited
(seen on Docker 20.10, cgroup v1: the flag stays false while the container
runs, even after a ``docker exec`` process was OOM-killed, and is true after
a later clean stop). When the host is busy, containerd can drop the OOM event
altogether (the cgroup is gone before it reads the notice), so a SIGKILL exit
is also checked against the kernel's own log (:mod:`.kmsg`) where the
orchestrator may read it. :meth:`~.backend.DockerBackend.exit_info` reports an OOM death
only when the flag (or the kernel's record) is there *and* the container died
of a SIGKILL (137) that mlbridge did not send; the flag with any other exit is reported as a reason
("an out-of-memory kill happened in the container earlier"). A 137 without
the flag that mlbridge did not send is reported as "killed by SIGKILL from
outside mlbridge". The cgroup is gone once the container has exited, so for
a running worker :meth:`~.backend.DockerBackend.stats` reads the cgroup's ``oom_kill``
counter on the host (``oom_kills``) to see victims the runtime survived.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

from ..base import ExitInfo

__all__ = ["cgroup_oom_kills", "exit_info_from_state", "memory_stats"]

_RUNNING = frozenset({"created", "running", "paused", "restarting"})
_SIGKILL_EXIT = 128 + signal.SIGKILL
_CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")


def exit_info_from_state(state: dict[str, Any], memory_limit: int | None = None,
                         stopped_by_us: str | None = None, kernel_oom: bool = False) -> ExitInfo | None:
    """How a container ended, from ``docker inspect``'s ``State``; None while it runs.

    Args:
        state: the ``State`` object of ``docker inspect``.
        memory_limit: ``HostConfig.Memory`` in bytes (0 or None: no limit).
        stopped_by_us: ``"stop"`` or ``"kill"`` when mlbridge ended it, else None.
        kernel_oom: the kernel logged an OOM kill in the container's memory cgroup
            (:mod:`.kmsg`), which stands for the flag when the engine missed the event.
    """
    status = str(state.get("Status", "")).lower()
    if status in _RUNNING or state.get("Running"):
        return None
    code = state.get("ExitCode")
    limit = memory_limit or None
    flagged = bool(state.get("OOMKilled")) or kernel_oom
    error = str(state.get("Error") or "")
    if error:
        return ExitInfo(exit_code=code, reason=f"could not run: {error}", memory_limit=limit)
    if flagged and code == _SIGKILL_EXIT and stopped_by_us != "kill":
        return ExitInfo(exit_code=code, oom_killed=True, memory_limit=limit)
    reason = ""
    if stopped_by_us:
        reason = f"{'killed' if stopped_by_us == 'kill' else 'stopped'} by mlbridge (exit code {code})"
    elif code == _SIGKILL_EXIT:
        reason = ("killed by SIGKILL from outside mlbridge (docker kill, or an out-of-memory kill "
                  "the engine did not report)")
    elif isinstance(code, int) and code > 128:
        try:
            reason = f"killed by signal {signal.Signals(code - 128).name}"
        except ValueError:
            reason = ""
    if flagged and not reason:
        reason = (f"exited with code {code} after an out-of-memory kill of another process "
                  "in the container")
    elif flagged:
        reason += "; an out-of-memory kill happened in the container earlier"
    return ExitInfo(exit_code=code, reason=reason, memory_limit=limit)


def memory_stats(raw: dict[str, Any]) -> dict[str, Any]:
    mem = raw.get("memory_stats") or {}
    usage = int(mem.get("usage") or 0)
    detail = mem.get("stats") or {}
    # What `docker stats` shows: usage less reclaimable page cache (v1 / v2 key names).
    inactive = int(detail.get("total_inactive_file", detail.get("inactive_file", 0)) or 0)
    cpu = (raw.get("cpu_stats") or {}).get("cpu_usage") or {}
    out: dict[str, Any] = {
        "memory_bytes": max(usage - inactive, 0),
        "memory_usage_bytes": usage,
        "memory_limit": int(mem.get("limit") or 0) or None,
        "cpu_total_ns": int(cpu.get("total_usage") or 0),
        "pids": int((raw.get("pids_stats") or {}).get("current") or 0),
    }
    return out


def cgroup_oom_kills(cid: str, root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """OOM kills in a running container's memory cgroup, read on the host; None if not found.

    Counts every victim (the runtime or any process it spawned); the engine's
    ``OOMKilled`` flag only shows once the container has exited. Knows the
    default cgroup layouts of cgroupfs and systemd drivers on cgroup v1 and v2.
    """
    if not _CONTAINER_ID.match(cid):
        return None
    candidates = (
        root / "memory" / "docker" / cid / "memory.oom_control",  # v1, cgroupfs
        root / "memory" / "system.slice" / f"docker-{cid}.scope" / "memory.oom_control",  # v1, systemd
        root / "system.slice" / f"docker-{cid}.scope" / "memory.events",  # v2, systemd
        root / "docker" / cid / "memory.events",  # v2, cgroupfs
    )
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return None
    return None


def cgroup_usage(cid: str, root: Path = Path("/sys/fs/cgroup")) -> dict[str, int]:
    """Memory (now and peak), its limit, CPU time and pids of a running container, read on the host
    ({} when unknown).

    cgroup v1 (cgroupfs or systemd driver): ``memory.usage_in_bytes``,
    ``memory.max_usage_in_bytes``, ``memory.limit_in_bytes``, ``cpuacct.usage``,
    ``pids.current``; cgroup v2: ``memory.current``, ``memory.peak`` (where the
    kernel has it), ``memory.max``, ``cpu.stat`` ``usage_usec``, ``pids.current``.
    """
    if not _CONTAINER_ID.match(cid):
        return {}
    out: dict[str, int] = {}
    for rel in (Path("docker") / cid, Path("system.slice") / f"docker-{cid}.scope"):
        for key, path in (
            ("memory_bytes", root / "memory" / rel / "memory.usage_in_bytes"),
            ("memory_peak_bytes", root / "memory" / rel / "memory.max_usage_in_bytes"),
            ("memory_limit_bytes", root / "memory" / rel / "memory.limit_in_bytes"),
            ("cpu_ns", root / "cpuacct" / rel / "cpuacct.usage"),
            ("pids", root / "pids" / rel / "pids.current"),
            ("memory_bytes", root / rel / "memory.current"),
            ("memory_peak_bytes", root / rel / "memory.peak"),
            ("memory_limit_bytes", root / rel / "memory.max"),
            ("pids", root / rel / "pids.current"),
        ):
            if key in out:
                continue
            try:
                out[key] = int(path.read_text().strip())
            except (OSError, ValueError):
                pass
        try:
            for line in (root / rel / "cpu.stat").read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == "usage_usec" and "cpu_ns" not in out:
                    out["cpu_ns"] = int(value) * 1000
        except (OSError, ValueError):
            pass
        if out:
            break
    if out.get("memory_limit_bytes", 0) >= 2**62:  # v1's "no limit"
        del out["memory_limit_bytes"]
    return out
