"""``python -m runtimes.core --bridge NAME --socket PATH``: serve one bridge."""

from __future__ import annotations

import argparse
import logging
import os
import sys

# grpc's fork support makes os.fork() in user code hang (retrying thread creation)
# when the pids limit is reached; without it the code sees EAGAIN. Must be set
# before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from ..wire.aio import run as run_loop  # noqa: E402
from ..wire.errors import MLBridgeError  # noqa: E402
from .server import serve  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtimes.core", description=__doc__)
    p.add_argument("--bridge", default=os.environ.get("MLBRIDGE_BRIDGE"),
                   help="entry point name (mock) or import string (pkg.mod:Class)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", help="unix socket path to serve on")
    where.add_argument("--listen", help="host:port to serve on (debugging only)")
    args = p.parse_args(argv)
    if not args.bridge:
        p.error("--bridge (or MLBRIDGE_BRIDGE) is required")
    address = f"unix://{os.path.abspath(args.socket)}" if args.socket else args.listen
    if not address:
        p.error("--socket or --listen is required")
    logging.basicConfig(level=os.environ.get("MLBRIDGE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_loop(serve(args.bridge, address))
    except MLBridgeError as err:
        print(f"mlbridge runtime: {err.flat()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
