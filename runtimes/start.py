"""``python -m runtimes.start --bridge NAME --socket PATH``: the image's entry point.

Starts :mod:`runtimes.core` at once, or, when the orchestrator started the
container ahead of need (a *held* worker), first waits for its word.

A held container is one whose engine cost (create, start: about 150-200 ms)
is paid before anyone asks for it, at the price of one idle interpreter. The
orchestrator puts a FIFO named ``hold`` in the worker's socket directory
before it starts the container and keeps its own end open. This module,
using nothing but the standard library (the runtime's imports are what a
held worker defers), blocks reading it:

- ``go`` and a newline: go on and serve;
- end of file (the orchestrator closed its end, or died): exit 0 without
  ever importing the runtime, so a held worker never outlives its owner.

No FIFO, no wait: the runtime starts as it always did.
"""

from __future__ import annotations

import os
import stat
import sys

from .wire.hold import GO, HOLD_NAME


def _socket_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--socket" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--socket="):
            return arg.split("=", 1)[1]
    return None


def wait_for_release(socket_path: str | None) -> bool:
    """Block until released; False when the orchestrator went away instead."""
    if not socket_path:
        return True
    hold = os.path.join(os.path.dirname(os.path.abspath(socket_path)), HOLD_NAME)
    try:
        if not stat.S_ISFIFO(os.lstat(hold).st_mode):
            return True
        fd = os.open(hold, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True  # not held
    try:
        got = b""
        while not got.endswith(b"\n"):
            chunk = os.read(fd, 16)
            if not chunk:
                return False
            got += chunk
        return got == GO
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not wait_for_release(_socket_arg(args)):
        return 0
    from .core.__main__ import main as serve

    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
