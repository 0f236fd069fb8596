"""The orchestrator's end of held workers (see :mod:`runtimes.start`).

A held worker's socket directory holds a FIFO named ``hold``. The
orchestrator creates it before the worker starts and keeps it open for
reading and writing (so opening it never blocks, and the runtime's end sees a
writer at once). Releasing writes ``go``, and the descriptor stays open until
the worker stops: a pipe with no open end loses what was written, and the
runtime may not have opened its end yet. Dropping a hold that was never
released closes it, and the waiting runtime, seeing end of file, exits
without starting. The
descriptor is close-on-exec: no child process of the orchestrator keeps a
held worker alive after the orchestrator is gone.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from runtimes.wire.errors import Unavailable
from runtimes.wire.hold import GO, HOLD_NAME

__all__ = ["Holds"]


class Holds:
    """Open hold FIFOs, by worker id."""

    def __init__(self) -> None:
        self._fds: dict[str, tuple[int, Path]] = {}
        self._released: set[str] = set()
        self._lock = threading.Lock()

    def hold(self, worker_id: str, socket_dir: Path, owner: tuple[int, int] | None = None) -> None:
        """Create the FIFO in ``socket_dir`` (readable by ``owner``, a uid and gid) and keep it open."""
        path = Path(socket_dir) / HOLD_NAME
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.mkfifo(path, 0o600)
        if owner is not None and os.geteuid() == 0:
            os.chown(path, *owner)
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        with self._lock:
            old = self._fds.pop(worker_id, None)
            self._fds[worker_id] = (fd, path)
        if old is not None:
            os.close(old[0])

    def held(self, worker_id: str) -> bool:
        """Whether the worker is waiting to be released."""
        with self._lock:
            return worker_id in self._fds and worker_id not in self._released

    def release(self, worker_id: str) -> None:
        """Tell the held runtime to start.

        Raises:
            Unavailable: the worker is not held (never was, was released, or was dropped).
        """
        with self._lock:
            entry = self._fds.get(worker_id)
            if entry is None or worker_id in self._released:
                raise Unavailable(f"worker {worker_id} is not held")
            self._released.add(worker_id)
        os.write(entry[0], GO)

    def drop(self, worker_id: str) -> None:
        """Close the hold (the worker stopped, or a runtime still waiting on it is to exit)."""
        with self._lock:
            entry = self._fds.pop(worker_id, None)
            self._released.discard(worker_id)
        if entry is not None:
            os.close(entry[0])
            with contextlib.suppress(OSError):
                entry[1].unlink()

    def close(self) -> None:
        with self._lock:
            ids = list(self._fds)
        for wid in ids:
            self.drop(wid)
