"""The mounts under a directory, read from ``/proc/self/mountinfo``, and unmounting them all.

A bind mount of a directory on the same filesystem is a mount point that
``os.path.ismount`` cannot see (same device, different inode), so the
kernel's own list is the source: the worker socket tmpfs, the model bind
mounts and the export tmpfs all go through here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["mount_points", "unmount_tree"]


def mount_points(path: Path | str) -> list[str]:
    """Every mount at ``path`` or below it (a mount stacked twice is listed twice)."""
    root = str(path).rstrip("/")
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = [parts[4] for parts in (line.split() for line in lines) if len(parts) > 4]
    return [p for p in points if p == root or p.startswith(root + "/")]


def unmount_tree(path: Path | str) -> None:
    """Lazily unmount every mount at or below ``path``, deepest first."""
    for point in sorted(mount_points(path), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
