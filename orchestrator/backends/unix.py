"""The unix-socket control channel both shipped backends use, and where the sockets live.

Each worker gets its own directory under a root this backend creates (a
short path under the system temp dir: a socket path must fit 107 bytes); the
runtime creates ``runtime.sock`` there. With the docker backend that
directory is the only host path bind-mounted into the container, the worker
can write there, and so each such directory is its own tiny tmpfs (a few KiB,
16 inodes, ``noexec,nosuid,nodev``): a worker can neither fill the host's
disk, nor exhaust space or inodes that other workers' sockets need, nor
leave an executable for the host. And a socket is trusted only if it is a
real socket: a worker could replace it with a symlink to another host socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from runtimes.wire.errors import ConfigError, Unavailable

from .base import ControlChannel
from .janitor import start_janitor
from .mountinfo import unmount_tree

__all__ = ["MAX_SOCKET_PATH", "SOCKET_NAME", "SocketRoot", "UnixSocketChannel", "mount_tmpfs", "unmount",
           "worker_tmpfs_options"]

log = logging.getLogger("mlbridge.sockets")

SOCKET_NAME = "runtime.sock"
#: Unix socket paths longer than this cannot be connected to (sun_path is 108 bytes).
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class UnixSocketChannel(ControlChannel):
    """A runtime listening on ``<socket_dir>/runtime.sock``."""

    socket_dir: Path

    @property
    def path(self) -> Path:
        return self.socket_dir / SOCKET_NAME

    @property
    def target(self) -> str:
        return f"unix://{self.path}"

    def present(self) -> bool:
        return os.path.lexists(self.path)

    def check(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return  # not created yet: the readiness probe keeps waiting
        if not stat.S_ISSOCK(st.st_mode):
            raise Unavailable(f"worker socket {self.path} is not a socket (a symlink or file put there by the "
                              f"worker); the worker is not trusted")


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


class SocketRoot:
    """The directory holding one backend's worker socket directories; created on first use.

    Args:
        root: where to put them; a new ``mlb-*`` directory under the system
            temp dir by default (removed again by :meth:`close`).
    """

    def __init__(self, root: Path | None = None) -> None:
        self._given = root
        self._root: Path | None = None
        self._janitor: int | None = None  # the write end of the janitor's pipe (see .janitor)

    @property
    def root(self) -> Path:
        if self._root is None:
            if self._given is None:
                self._root = Path(tempfile.mkdtemp(prefix="mlb-"))
                # Should this process die without close(), the janitor unmounts and removes the root.
                self._janitor = start_janitor(self._root)
            else:
                self._given.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._root = self._given
        return self._root

    def channel(self, worker_id: str) -> UnixSocketChannel:
        """A fresh, empty socket directory for ``worker_id`` (mode 0700) and its channel.

        Raises:
            ConfigError: the socket path would be too long, or the path is not a directory.
        """
        path = (self.root / worker_id).absolute()
        sock = path / SOCKET_NAME
        if len(str(sock)) > MAX_SOCKET_PATH:
            raise ConfigError(f"socket path {sock} is longer than {MAX_SOCKET_PATH} bytes; "
                              "use a shorter socket root (TMPDIR)")
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not stat.S_ISDIR(path.lstat().st_mode):
            raise ConfigError(f"socket dir {path} is not a directory")
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        return UnixSocketChannel(path)

    def release(self, channel: UnixSocketChannel) -> None:
        """Remove a worker's socket directory (unmounting its tmpfs first)."""
        unmount(channel.socket_dir)
        shutil.rmtree(channel.socket_dir, ignore_errors=True)

    def close(self) -> None:
        """Unmount and remove everything under the root, and the root when this object made it."""
        if self._root is None:
            return
        unmount_tree(self._root)
        if self._given is None:
            shutil.rmtree(self._root, ignore_errors=True)
        else:
            for child in self._root.iterdir():
                shutil.rmtree(child, ignore_errors=True)
        self._root = None
        if self._janitor is not None:
            os.close(self._janitor)  # the root is gone: the janitor finds nothing and exits
            self._janitor = None
