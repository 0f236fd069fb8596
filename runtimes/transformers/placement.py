"""Where a model goes and whether it fits: device choice, dtype, and the memory check before loading.

A model that cannot fit its worker must be refused with figures, not
discovered by the kernel's OOM killer halfway through ``from_pretrained``
(which kills the worker and every resource it held). So before anything is
read in full (and before the grant's files are hashed: cheap checks first)
the weights' size is estimated from the safetensors headers (parameter
counts, times the requested dtype's size) or, for pickled weights, from the
file sizes, and compared with the memory still free under the worker's
cgroup limit (or on the GPU the model is meant for).

Devices: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the first GPU when this
worker was given one, else the CPU). A GPU asked for where torch sees none
is a configuration error naming the fix; nothing here fakes a device.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runtimes.wire.errors import ConfigError, InvalidArgument, QuotaExceeded

from .limits import MiB, memory_figures

__all__ = ["DTYPES", "check_fits", "estimate_bytes", "free_bytes", "resolve_device", "torch_dtype"]

#: The dtypes a model may be loaded in; "auto" keeps the checkpoint's own.
DTYPES = ("auto", "float32", "float16", "bfloat16")
_TARGET_SIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
# Bytes per element of each safetensors dtype.
_ST_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
            "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
_FLOAT = {"F64", "F32", "F16", "BF16"}
_PICKLED = (".bin", ".pt", ".pth", ".ckpt")
# A safetensors header is JSON; a real one is far below this.
_MAX_HEADER = 100 * MiB
#: Headroom over the weights: buffers, the forward pass's activations, allocator slack.
OVERHEAD = 0.10

_NO_GPU = ("no GPU is available to this worker (torch.cuda.is_available() is False): give the transformers "
           "bridge GPUs in the orchestrator config (bridges.transformers.limits.gpus: [<device id>]), or use "
           "device 'cpu' (or 'auto', which falls back to the CPU)")


def resolve_device(spec: Any) -> str:
    """The torch device string for a config's ``device`` ("cpu", "cuda", "cuda:N", "auto" or absent).

    Raises:
        InvalidArgument: not one of those forms.
        ConfigError: a GPU was asked for but this worker has none (or not that many).
    """
    import torch

    value = "auto" if spec is None else spec
    if not isinstance(value, str):
        raise InvalidArgument(f"device must be a string ('cpu', 'cuda', 'cuda:N' or 'auto'), got {value!r}")
    if value == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if value == "cpu":
        return "cpu"
    index = 0
    if value != "cuda":
        head, _, tail = value.partition(":")
        if head != "cuda" or not tail.isdigit():
            raise InvalidArgument(f"device {value[:40]!r} is not 'cpu', 'cuda', 'cuda:N' or 'auto'")
        index = int(tail)
    if not torch.cuda.is_available():
        raise ConfigError(f"device {value!r}: {_NO_GPU}")
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"device {value!r}: this worker has {count} GPU(s) (cuda:0..cuda:{count - 1}); "
                          f"give the bridge more in bridges.transformers.limits.gpus, or pick one it has")
    return f"cuda:{index}"


def torch_dtype(spec: Any) -> Any:
    """The ``dtype`` argument for ``from_pretrained``: a torch dtype, or "auto" (the checkpoint's own).

    Raises:
        InvalidArgument: not one of :data:`DTYPES`.
    """
    import torch

    value = "auto" if spec is None else spec
    if value not in DTYPES:
        raise InvalidArgument(f"dtype {str(value)[:40]!r} is not one of {', '.join(DTYPES)}")
    return "auto" if value == "auto" else getattr(torch, value)


def _safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise InvalidArgument(f"{path.name} is not a safetensors file (shorter than its header)")
        (size,) = struct.unpack("<Q", head)
        if size > _MAX_HEADER:
            raise InvalidArgument(f"{path.name} declares a {size >> 20} MiB header; not a safetensors file")
        try:
            header = json.loads(fh.read(size))
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument(f"{path.name}: its safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise InvalidArgument(f"{path.name}: its safetensors header is not an object")
    return header


def estimate_bytes(model_dir: Path, files: Iterable[str], dtype: str = "auto") -> int:
    """The bytes the model's weights take in memory once loaded in ``dtype``, plus :data:`OVERHEAD`.

    From the safetensors headers when the model has any (a file's floating
    tensors count at the target dtype's size, others as stored), else from the
    sizes of its pickled weight files.

    Raises:
        InvalidArgument: a safetensors file whose header cannot be read.
    """
    names = sorted(files)
    weights = 0
    shards = [n for n in names if n.endswith(".safetensors")]
    if shards:
        for name in shards:
            for key, entry in _safetensors_header(model_dir / name).items():
                if key == "__metadata__" or not isinstance(entry, dict):
                    continue
                numel = 1
                for dim in entry.get("shape") or []:
                    numel *= int(dim)
                stored = str(entry.get("dtype", "F32"))
                size = _TARGET_SIZE.get(dtype, 0) if stored in _FLOAT and dtype != "auto" else 0
                weights += numel * (size or _ST_SIZE.get(stored, 4))
    else:
        weights = sum((model_dir / n).stat().st_size for n in names if n.endswith(_PICKLED))
    return int(weights * (1 + OVERHEAD))


def free_bytes(device: str) -> tuple[int, str]:
    """Bytes a model may still take on ``device``, and the limit in words."""
    if device.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(device))
        return free, f"GPU {device}: {total // MiB} MiB in all"
    figures = memory_figures()
    return figures.free, figures.describe()


def check_fits(name: str, needed: int, free: int, limit_text: str, dtype: str = "auto") -> None:
    """Refuse a model whose estimate exceeds what is free.

    Raises:
        QuotaExceeded: with both figures in MiB and how to make it fit.
    """
    if needed <= free:
        return
    raise QuotaExceeded(
        f"model {name!r} needs about {needed / MiB:.0f} MiB to load (weights in {dtype} plus "
        f"{OVERHEAD:.0%}), but only {free / MiB:.0f} MiB is free in this worker ({limit_text}); raise the "
        f"bridge's memory limit (bridges.transformers.limits.memory), load it in float16 or bfloat16, or "
        f"use a smaller model",
        details={"quota": "memory", "needed_mib": round(needed / MiB, 1), "free_mib": round(free / MiB, 1)})
