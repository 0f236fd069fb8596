"""The host side of the control channel: where worker sockets live.

Each worker's socket directory is the only host path bind-mounted into its
container, and the worker can write there. With the docker backend each such
directory is its own tiny tmpfs (a few KiB, 16 inodes, ``noexec,nosuid,nodev``),
so a worker can neither fill the host's disk, nor exhaust space or inodes that
other workers' sockets need, nor leave an executable for the host. And a
socket is trusted only if it is a real socket: a worker could replace it with
a symlink to some other host socket.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from pathlib import Path

from runtimes.core.errors import Unavailable

log = logging.getLogger("mlbridge.sockets")

def worker_tmpfs_options(uid: int, gid: int) -> str:
    return f"size=64k,nr_inodes=16,mode=0700,uid={uid},gid={gid},noexec,nosuid,nodev"


def mount_tmpfs(path: Path, options: str) -> bool:
    """Mount a tmpfs on ``path`` (root only); False, with a warning, when that fails."""
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "mlbridge-socket", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        log.warning("could not mount a tmpfs for a worker socket at %s (%s); using the plain directory",
                    path, r.stderr.strip())
        return False
    return True


def unmount(path: Path) -> None:
    """Lazily unmount ``path`` if something is mounted there."""
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def socket_exists(address: str) -> bool:
    """Whether the socket file of a ``unix://`` address exists (always True for TCP)."""
    return not address.startswith("unix://") or os.path.lexists(address[len("unix://"):])


def check_socket(address: str) -> None:
    """Refuse a ``unix://`` address whose path is not a real socket (e.g. a symlink)."""
    if not address.startswith("unix://"):
        return
    path = address[len("unix://"):]
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # not created yet: the readiness probe keeps waiting
    if not stat.S_ISSOCK(st.st_mode):
        raise Unavailable(f"worker socket {path} is not a socket (a symlink or file put there by the worker); "
                          f"the worker is not trusted")


def unmount_all_under(root: Path) -> None:
    """Unmount every mount point at or below ``root`` (deepest first)."""
    prefix = str(root).rstrip("/") + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = [line.split()[4] for line in lines if len(line.split()) > 4]
    for point in sorted((p for p in points if p.startswith(prefix) or p == str(root)), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
