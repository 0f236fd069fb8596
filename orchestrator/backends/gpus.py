"""The GPU inventory: which GPU device ids this host has, for the docker backend.

Workers get GPUs by device id (index ``"0"`` or UUID ``"GPU-..."``/``"MIG-..."``)
from this inventory, never "all". The inventory comes from NVML (``pynvml``)
when it imports and initialises, else from parsing ``nvidia-smi -L``, else it
is empty (a host without NVIDIA GPUs or drivers).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from runtimes.wire.errors import ConfigError

__all__ = ["Gpu", "GpuInventory", "detect_gpus", "parse_nvidia_smi_list"]

log = logging.getLogger("mlbridge.backend.gpus")

# "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5c0d...)"
_GPU_LINE = re.compile(r"^GPU\s+(\d+):\s*(.*?)\s*\(UUID:\s*(GPU-[0-9A-Za-z-]+)\)\s*$")
# "  MIG 1g.10gb     Device  0: (UUID: MIG-4b0c...)"
_MIG_LINE = re.compile(r"^\s+MIG\s+(\S+)\s+Device\s+(\d+):\s*\(UUID:\s*(MIG-[0-9A-Za-z/-]+)\)\s*$")


@dataclass(frozen=True)
class Gpu:
    """One GPU (or MIG instance) a worker may be given.

    Attributes:
        index: NVML index as a string (``"0"``); for a MIG instance
            ``"<gpu>:<mig>"``, which docker/nvidia-container-toolkit accept.
        uuid: ``GPU-...`` or ``MIG-...``.
        name: product name, for messages.
    """

    index: str
    uuid: str
    name: str = ""

    @property
    def ids(self) -> tuple[str, ...]:
        return (self.index, self.uuid)


class GpuInventory:
    """The GPUs of this host, and the check that a worker asks only for those."""

    def __init__(self, gpus: Iterable[Gpu] = (), source: str = "none") -> None:
        self.gpus: tuple[Gpu, ...] = tuple(gpus)
        self.source = source

    def __len__(self) -> int:
        return len(self.gpus)

    def __repr__(self) -> str:
        return f"GpuInventory({list(self.gpus)!r}, source={self.source!r})"

    def available(self) -> list[str]:
        """Every id a config may name: indexes and UUIDs."""
        return [i for g in self.gpus for i in g.ids]

    def resolve(self, requested: Iterable[str]) -> list[str]:
        """Check ``requested`` device ids against the inventory; return them in order, deduplicated.

        Raises:
            ConfigError: an id is not in the inventory (or is ``all``); the
                message names it and lists the available ids.
        """
        known = set(self.available())
        out: list[str] = []
        for raw in requested:
            gid = str(raw).strip()
            if gid.lower() == "all":
                raise ConfigError("GPUs are given by device id; 'all' is not allowed "
                                  f"(available: {self._listing()})")
            if gid not in known:
                raise ConfigError(f"GPU {gid!r} is not on this host (available: {self._listing()}, "
                                  f"from {self.source}); fix limits.gpus")
            if gid not in out:
                out.append(gid)
        return out

    def _listing(self) -> str:
        if not self.gpus:
            return "none: no NVIDIA GPU found by NVML or nvidia-smi"
        return ", ".join(f"{g.index} ({g.uuid}{', ' + g.name if g.name else ''})" for g in self.gpus)


def parse_nvidia_smi_list(text: str) -> list[Gpu]:
    """GPUs (and MIG instances) from ``nvidia-smi -L`` output."""
    gpus: list[Gpu] = []
    current: str | None = None
    for line in text.splitlines():
        m = _GPU_LINE.match(line)
        if m:
            current = m.group(1)
            gpus.append(Gpu(index=current, uuid=m.group(3), name=m.group(2)))
            continue
        m = _MIG_LINE.match(line)
        if m and current is not None:
            gpus.append(Gpu(index=f"{current}:{m.group(2)}", uuid=m.group(3), name=f"MIG {m.group(1)}"))
    return gpus


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _from_nvml() -> list[Gpu] | None:
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_* (no driver, no library)
        log.debug("NVML unavailable: %s", exc)
        return None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpus.append(Gpu(index=str(i), uuid=_text(pynvml.nvmlDeviceGetUUID(h)),
                            name=_text(pynvml.nvmlDeviceGetName(h))))
        return gpus
    except Exception as exc:  # noqa: BLE001
        log.warning("NVML failed while listing GPUs: %s", exc)
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _from_nvidia_smi() -> list[Gpu] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("`nvidia-smi -L` failed: %s", exc)
        return None
    return parse_nvidia_smi_list(out.stdout)


@functools.lru_cache(maxsize=1)
def detect_gpus() -> GpuInventory:
    """This host's GPUs: NVML, else ``nvidia-smi -L``, else none. Cached for the process."""
    gpus = _from_nvml()
    if gpus is not None:
        return GpuInventory(gpus, source="NVML")
    gpus = _from_nvidia_smi()
    if gpus is not None:
        return GpuInventory(gpus, source="nvidia-smi -L")
    return GpuInventory((), source="no NVML, no nvidia-smi")
