"""Cleans a dead orchestrator's socket root: its mounts and folders go even after a SIGKILL.

Each worker's socket directory is its own tmpfs, and a worker that loads
models has a models mount point and an export tmpfs beside it
(:mod:`.mounts`). An orchestrator that stops cleanly unmounts and removes
them (:meth:`.unix.SocketRoot.close`); one that is SIGKILLed cannot. So the
first time a backend creates its socket root it starts this janitor: a small
process in a session of its own, holding the read end of a pipe whose write
end only the orchestrator holds. When the orchestrator dies, however it
dies, the kernel closes that end; the janitor reads EOF, waits ``grace``
seconds for the workers' own dead man's switch (their containers exit and
release what they mounted), then unmounts everything under the root and
removes it. After a clean close there is nothing left, and the janitor
exits at once.

Run as ``python -m orchestrator.backends.janitor ROOT GRACE_S`` with the pipe
on stdin.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .mountinfo import unmount_tree

__all__ = ["start_janitor"]


def start_janitor(root: Path, grace_s: float = 5.0) -> int:
    """Start the janitor for ``root``; return the pipe's write end, which the caller keeps open for life."""
    read_end, write_end = os.pipe()
    os.set_inheritable(read_end, True)
    subprocess.Popen([sys.executable, "-m", "orchestrator.backends.janitor", str(root), str(grace_s)],
                     stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)
    os.close(read_end)
    os.set_inheritable(write_end, False)  # workers started later must not hold it open
    return write_end


def clean(root: Path) -> None:
    """Unmount everything at or below ``root`` (deepest first), then remove it."""
    unmount_tree(root)
    shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str]) -> int:
    root, grace = Path(argv[0]), float(argv[1])
    while os.read(0, 4096):  # blocks until the orchestrator's end of the pipe closes
        pass
    if not root.exists():
        return 0  # closed cleanly: nothing left
    time.sleep(grace)
    clean(root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
