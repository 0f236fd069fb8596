"""``mlbridge port``: an orchestrator's API on stdin/stdout, in the ``{packet, 4}`` framing of an Erlang port.

Two protocols (``docs/port-protocol.md``):

- ``--protocol dspex`` (default): DSPex's JSON frames, so existing DSPex code
  keeps working (:class:`~orchestrator.port.dspex.DSPexPort`);
- ``--protocol mux``: the whole public API multiplexed, with streams, cancel,
  client tools and raw binary attachments (:class:`~orchestrator.port.mux.MuxPort`),
  which the Elixir client uses.

stdout carries frames only: file descriptor 1 is kept for them and everything
else (logs, stray prints) goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from typing import Any

from .dspex import DEFAULT_CONCURRENCY, MODES, DSPexPort
from .frames import MAX_FRAME_BYTES
from .mux import DEFAULT_CONCURRENCY as MUX_CONCURRENCY
from .mux import MuxPort

__all__ = ["MAX_FRAME_BYTES", "DSPexPort", "MuxPort", "register"]


def cmd_port(args: argparse.Namespace) -> int:
    from ..client import MLBridge

    logging.basicConfig(level=os.environ.get("MLBRIDGE_LOG_LEVEL", "WARNING"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Legacy replies carry their deprecation in the reply frame and the log; no Python warnings here.
    warnings.filterwarnings("ignore", message=r".* is deprecated; use ", category=DeprecationWarning)
    if args.concurrency is not None and args.concurrency < 1 or args.max_frame_bytes < 1:
        print("error: --concurrency and --max-frame-bytes must be positive", file=sys.stderr)
        return 2
    if args.protocol == "mux" and (args.mode != "standalone" or args.worker_id is not None):
        print("error: --mode and --worker-id are DSPex's; they go with --protocol dspex", file=sys.stderr)
        return 2
    # Keep fd 1 for frames: whatever else writes to stdout (a library, C code) lands on stderr.
    sys.stdout.flush()
    frames = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    client = MLBridge.connect(args.address, token=args.token, timeout=args.timeout, tls_ca=args.tls_ca,
                              tls_cert=args.tls_cert, tls_key=args.tls_key)
    try:
        if args.protocol == "mux":
            return MuxPort(client, sys.stdin.buffer, frames, max_frame_bytes=args.max_frame_bytes,
                           concurrency=args.concurrency or MUX_CONCURRENCY).run()
        return DSPexPort(client, sys.stdin.buffer, frames, max_frame_bytes=args.max_frame_bytes,
                         concurrency=args.concurrency or DEFAULT_CONCURRENCY, mode=args.mode,
                         worker_id=args.worker_id).run()
    finally:
        client.close()
        with contextlib.suppress(OSError):  # the parent closed our output too (Erlang's Port.close)
            frames.close()


def register(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "port", help="serve the API on stdin/stdout in Erlang port framing (DSPex's protocol, or multiplexed)",
        description="Forward {packet,4} frames from stdin to an orchestrator; replies go to stdout. "
                    "See docs/port-protocol.md.")
    # Also accepted after `port` (SUPPRESS keeps the global option's value when not given here).
    s.add_argument("--address", default=argparse.SUPPRESS, help="orchestrator address (as the global option)")
    s.add_argument("--token", default=argparse.SUPPRESS, help="bearer token (as the global option)")
    s.add_argument("--protocol", choices=("dspex", "mux"), default="dspex",
                   help="dspex: DSPex's JSON frames (default); mux: the whole API, multiplexed")
    s.add_argument("--mode", choices=MODES, default="standalone",
                   help="DSPex's bridge mode, answered in ping and shutdown (pool-worker: programs per session)")
    s.add_argument("--worker-id", help="DSPex's pool worker id, answered in ping and shutdown")
    s.add_argument("--max-frame-bytes", type=int, default=MAX_FRAME_BYTES,
                   help=f"largest request frame accepted; a larger one is skipped and answered with an error "
                        f"(default {MAX_FRAME_BYTES})")
    s.add_argument("--concurrency", type=int, default=None,
                   help=f"requests run at once; replies may come out of order (default {DEFAULT_CONCURRENCY}, "
                        f"mux {MUX_CONCURRENCY})")
    s.set_defaults(func=cmd_port)
