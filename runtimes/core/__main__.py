"""``python -m runtimes.core --bridge NAME (--socket PATH | --listen HOST:PORT [--tls-dir DIR])``: serve one bridge.

``--tls-dir`` (or ``MLBRIDGE_TLS_DIR``) holds ``worker.crt``, ``worker.key`` and
``client-ca.crt``, as the orchestrator's tcp-mtls channel hands them over: the
runtime then serves TLS and takes only clients with a certificate from that CA.
"""

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
    p.add_argument("--socket", help="unix socket path to serve on (its directory is the worker's mount)")
    p.add_argument("--listen", default=os.environ.get("MLBRIDGE_LISTEN"),
                   help="host:port to serve on instead of --socket (env MLBRIDGE_LISTEN, set by a backend using "
                        "the tcp-mtls channel): with --tls-dir, that channel; without, debugging only")
    p.add_argument("--tls-dir", default=os.environ.get("MLBRIDGE_TLS_DIR"),
                   help="serve TLS with this directory's worker.crt and worker.key, requiring clients from "
                        "client-ca.crt")
    args = p.parse_args(argv)
    if not args.bridge:
        p.error("--bridge (or MLBRIDGE_BRIDGE) is required")
    # The image's entry point always names the socket (its directory is where a held worker waits); the
    # backend's MLBRIDGE_LISTEN, when set, is the channel it chose.
    address = args.listen or (f"unix://{os.path.abspath(args.socket)}" if args.socket else None)
    if not address:
        p.error("--socket or --listen is required")
    if args.tls_dir and not args.listen:
        p.error("--tls-dir goes with --listen")
    if os.environ.get("MLBRIDGE_LISTEN") and args.listen == os.environ["MLBRIDGE_LISTEN"] and not args.tls_dir:
        p.error("MLBRIDGE_LISTEN (the tcp-mtls channel) needs MLBRIDGE_TLS_DIR: a worker never serves plaintext TCP")
    logging.basicConfig(level=os.environ.get("MLBRIDGE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_loop(serve(args.bridge, address, tls_dir=args.tls_dir))
    except MLBridgeError as err:
        print(f"mlbridge runtime: {err.flat()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
