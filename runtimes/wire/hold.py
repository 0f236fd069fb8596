"""The hold handshake of a worker started ahead of need (see :mod:`runtimes.start`).

The orchestrator puts a FIFO named :data:`HOLD_NAME` in the worker's socket
directory and keeps it open; the runtime waits on it and starts once it reads
:data:`GO`, or exits at end of file.
"""

HOLD_NAME = "hold"
GO = b"go\n"
