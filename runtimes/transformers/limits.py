"""The worker's CPU and memory limits, read from its own cgroup (v1 or v2).

Why here and not from the orchestrator's config: a tenant's policy may lower
the limits a spare was started with (the claim applies them with
``docker update``), and only the cgroup knows what holds now. The bridge
reads it at ``setup`` and again at ``configure`` to size torch's thread pool,
before loading a model to refuse one that cannot fit, and when an allocation
fails to name the limit in the error.

Where the files are: with cgroup v2 (a ``cgroup.controllers`` file at the
root) one unified tree; with v1 one tree per controller (``cpu``,
``memory``). Inside a container the tree's root is the container's own
cgroup; on a host the process's cgroup (``/proc/self/cgroup``) is a
subdirectory, used when it exists. Every reader takes the root as an
argument so tests can point it at a directory of their own.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CGROUP_ROOT", "MemoryFigures", "cpu_limit", "memory_figures", "threads_for_limit", "torch_threads"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
MiB = 1 << 20
# cgroup v1 reports "no limit" as a page-rounded huge number; anything above this is unlimited.
_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class MemoryFigures:
    """Memory as the cgroup (or, without a limit, the machine) sees it, in bytes."""

    limit: int | None
    """The cgroup's limit; None when there is none."""
    usage: int
    """What the cgroup uses now, reclaimable file cache left out."""
    available: int
    """What the machine has available (``MemAvailable``), a bound even without a limit."""

    @property
    def free(self) -> int:
        """What a new allocation may still take: under the limit and on the machine."""
        under_limit = self.available if self.limit is None else max(self.limit - self.usage, 0)
        return min(under_limit, self.available)

    def describe(self) -> str:
        """The limit in words, for error messages."""
        if self.limit is None:
            return f"no cgroup memory limit; {self.available // MiB} MiB available on the machine"
        return f"memory limit {self.limit // MiB} MiB, {self.usage // MiB} MiB in use"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _own_paths() -> dict[str, str]:
    """controller -> this process's cgroup path ("" key: the v2 unified path)."""
    out: dict[str, str] = {}
    for line in (_read(Path("/proc/self/cgroup")) or "").splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            out[name] = path
    return out


def _unified(root: Path) -> bool:
    return (root / "cgroup.controllers").exists()


def _dirs(root: Path, controller: str) -> list[Path]:
    """The cgroup directories that bound this process for ``controller``, innermost first."""
    unified = _unified(root)
    base = root if unified else root / controller
    rel = _own_paths().get("" if unified else controller, "/").strip("/")
    own = base / rel if rel and (base / rel).is_dir() else base
    out = [own]
    while own != base and base in own.parents:
        own = own.parent
        out.append(own)
    return out


def _int(text: str | None) -> int | None:
    if text is None or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value < 0 or value >= _UNLIMITED else value


def cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPUs the cgroup's quota allows (1.5 = one and a half cores); None when there is no quota."""
    found: list[float] = []
    for d in _dirs(root, "cpu"):
        text = _read(d / "cpu.max")
        if text is not None:
            quota, _, period = text.partition(" ")
            q, p = _int(quota), _int(period or "100000")
        else:
            q, p = _int(_read(d / "cpu.cfs_quota_us")), _int(_read(d / "cpu.cfs_period_us"))
        if q is not None and p:
            found.append(q / p)
    return min(found) if found else None


def threads_for_limit(limit: float | None, cpus_usable: int) -> int:
    """Torch threads for a CPU quota: the quota rounded up, at most the usable CPUs, at least one."""
    wanted = cpus_usable if limit is None else math.ceil(limit - 1e-9)
    return max(1, min(wanted, cpus_usable))


def torch_threads(root: Path = CGROUP_ROOT) -> int:
    """How many intra-op threads torch should use in this worker now."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return threads_for_limit(cpu_limit(root), usable)


def _meminfo_available() -> int:
    for line in (_read(Path("/proc/meminfo")) or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return _UNLIMITED


def _stat(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.isdigit():
            out[key] = int(value)
    return out


def memory_figures(root: Path = CGROUP_ROOT) -> MemoryFigures:
    """The memory limit and usage that bound this process now."""
    dirs = _dirs(root, "memory")
    own = dirs[0]
    limits: list[int] = []
    if _unified(root):
        limits = [v for d in dirs if (v := _int(_read(d / "memory.max"))) is not None]
        usage = _int(_read(own / "memory.current")) or 0
        cache = _stat(own / "memory.stat").get("inactive_file", 0)
    else:  # v1
        stat = _stat(own / "memory.stat")
        limits = [v for v in (_int(_read(own / "memory.limit_in_bytes")),
                              _int(str(stat.get("hierarchical_memory_limit", -1)))) if v is not None]
        usage = _int(_read(own / "memory.usage_in_bytes")) or 0
        cache = stat.get("total_inactive_file", stat.get("inactive_file", 0))
    return MemoryFigures(limit=min(limits) if limits else None, usage=max(usage - cache, 0),
                         available=_meminfo_available())
