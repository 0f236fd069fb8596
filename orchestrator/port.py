"""``mlbridge port``: the DSPex Erlang-port protocol on stdin/stdout, forwarded over gRPC.

DSPex opened ``dspy_bridge.py`` with ``Port.open({:spawn_executable, ...},
[{:packet, 4}, :binary])``. Pointing that at ``mlbridge port --address ADDR``
keeps the Elixir side unchanged: every request is forwarded to an
orchestrator with ``Call(bridge="", command, args)``, so DSPex's
un-namespaced commands (``create_program`` ...) and namespaced ones
(``dspy:stats``) both work.

Framing, both directions: a 4-byte big-endian length, then that many bytes of
UTF-8 JSON. Requests are ``{"id", "command", "args"}``; replies are
``{"id", "success": true, "result", "timestamp"}`` or ``{"id", "success":
false, "error", "error_code", "timestamp"}`` (as DSPex's, plus
``error_code``, and ``deprecated`` naming the replacement of a legacy
command). ``id`` is an integer or a string.

Behaviour:

- Requests run concurrently on a pool of ``--concurrency`` threads (default
  8) and replies are written as each finishes, so they may come out of order:
  the ``id`` correlates them, as DSPex's Elixir side did. When every thread
  is busy the port stops reading, which pushes back on the Erlang side.
- A frame that is not JSON, not an object, or lacks a usable ``id`` or
  ``command`` gets an error reply (``id`` null when it cannot be read) and
  the port goes on with the next frame.
- A length prefix over ``--max-frame-bytes`` (default 16 MiB, the gRPC
  message cap) gets one error reply with ``id`` null; the port cannot find
  the next frame boundary without reading the whole body, so it stops
  reading, finishes the requests in flight, and exits with status 2.
- End of input exits 0 once the requests in flight are answered; a frame cut
  short by end of input is logged and dropped.
- stdout carries frames only: file descriptor 1 is kept for them and
  everything else (logs, stray prints) goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import struct
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from runtimes.wire.errors import MLBridgeError

log = logging.getLogger("mlbridge.port")

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 16 * 1024 * 1024
DEFAULT_CONCURRENCY = 8
EXIT_OK = 0
EXIT_OVERSIZED = 2

__all__ = ["MAX_FRAME_BYTES", "Port", "register"]


class _Bad(Exception):
    """A request frame that cannot be run; answered with an error reply."""

    def __init__(self, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class Port:
    """Reads request frames from ``reader``, forwards them with ``client``, writes reply frames to ``writer``."""

    def __init__(self, client: Any, reader: BinaryIO, writer: BinaryIO, *, max_frame_bytes: int = MAX_FRAME_BYTES,
                 concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.client = client
        self.reader = reader
        self.writer = writer
        self.max_frame_bytes = max_frame_bytes
        self._slots = threading.BoundedSemaphore(concurrency)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="mlbridge-port")
        self._write_lock = threading.Lock()
        self._broken = threading.Event()  # the reader of our stdout went away
        self._deprecated_seen: set[str] = set()

    def run(self) -> int:
        """Serve until end of input (0) or an oversized frame (2)."""
        try:
            return self._serve()
        finally:
            self._pool.shutdown(wait=True)  # answer what is in flight before exiting

    def _serve(self) -> int:
        while not self._broken.is_set():
            header = self._read_exact(HEADER.size)
            if not header:
                return EXIT_OK
            if len(header) < HEADER.size:
                log.warning("input ended inside a frame header (%d of 4 bytes); dropped", len(header))
                return EXIT_OK
            (length,) = HEADER.unpack(header)
            if length > self.max_frame_bytes:
                self._reply_error(None, f"frame of {length} bytes is over the port's cap of {self.max_frame_bytes} "
                                        f"bytes; the port cannot find the next frame and closes", "PAYLOAD_TOO_LARGE")
                log.error("closing: frame of %d bytes over the cap of %d", length, self.max_frame_bytes)
                return EXIT_OVERSIZED
            body = self._read_exact(length)
            if len(body) < length:
                log.warning("input ended inside a frame (%d of %d bytes); dropped", len(body), length)
                return EXIT_OK
            try:
                request_id, command, args = _parse(body)
            except _Bad as bad:
                log.warning("bad frame: %s", bad)
                self._reply_error(bad.request_id, str(bad), "INVALID_ARGUMENT")
                continue
            self._slots.acquire()
            self._pool.submit(self._forward, request_id, command, args)
        return EXIT_OK

    def _forward(self, request_id: Any, command: str, args: dict[str, Any]) -> None:
        try:
            res = self.client.call_detailed("", command, args)
        except MLBridgeError as err:
            self._reply_error(request_id, err.message, err.code)
        except Exception as exc:  # noqa: BLE001 - one request must never stop the port
            log.exception("request %r failed unexpectedly", request_id)
            self._reply_error(request_id, f"{type(exc).__name__}: {exc}", "INTERNAL")
        else:
            reply: dict[str, Any] = {"id": request_id, "success": True, "result": res.result,
                                     "timestamp": time.time()}
            notice = res.metadata.get("mlbridge-deprecated")
            if notice:
                reply["deprecated"] = notice
                if command not in self._deprecated_seen:  # once per command, for the operator
                    self._deprecated_seen.add(command)
                    log.warning("%s", notice)
            self._write(reply)
        finally:
            self._slots.release()

    # -- frames -------------------------------------------------------------------
    def _read_exact(self, n: int) -> bytes:
        chunks: list[bytes] = []
        got = 0
        while got < n:
            chunk = self.reader.read(n - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _reply_error(self, request_id: Any, message: str, code: str) -> None:
        self._write({"id": request_id, "success": False, "error": message, "error_code": code,
                     "timestamp": time.time()})

    def _write(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, ensure_ascii=False).encode("utf-8")
        with self._write_lock:
            if self._broken.is_set():
                return
            try:
                self.writer.write(HEADER.pack(len(data)) + data)
                self.writer.flush()
            except (BrokenPipeError, ValueError, OSError):
                self._broken.set()
                log.warning("stdout closed; stopping")


def _parse(body: bytes) -> tuple[Any, str, dict[str, Any]]:
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Bad(f"frame is not UTF-8 JSON: {exc}") from None
    if not isinstance(message, dict):
        raise _Bad(f"frame must be a JSON object {{id, command, args}}, got {type(message).__name__}")
    request_id = message.get("id")
    if request_id is None or isinstance(request_id, bool) or not isinstance(request_id, (int, str)):
        raise _Bad("frame needs an 'id' (an integer or a string)")
    command = message.get("command")
    if not isinstance(command, str) or not command:
        raise _Bad("frame needs a 'command' (a non-empty string)", request_id)
    args = message.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise _Bad("'args' must be a JSON object", request_id)
    return request_id, command, args


def cmd_port(args: argparse.Namespace) -> int:
    from .client import MLBridge

    logging.basicConfig(level=os.environ.get("MLBRIDGE_LOG_LEVEL", "WARNING"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Legacy replies carry their deprecation in the reply frame and the log; no Python warnings here.
    warnings.filterwarnings("ignore", message=r".* is deprecated; use ", category=DeprecationWarning)
    # Keep fd 1 for frames: whatever else writes to stdout (a library, C code) lands on stderr.
    sys.stdout.flush()
    frames = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if args.concurrency < 1 or args.max_frame_bytes < 1:
        log.error("--concurrency and --max-frame-bytes must be positive")
        return 2
    client = MLBridge.connect(args.address, token=args.token, timeout=args.timeout)
    try:
        return Port(client, sys.stdin.buffer, frames, max_frame_bytes=args.max_frame_bytes,
                    concurrency=args.concurrency).run()
    finally:
        client.close()
        frames.close()


def register(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "port", help="speak the DSPex Erlang port protocol (4-byte length + JSON) on stdin/stdout",
        description="Forward DSPex port frames from stdin to an orchestrator; replies go to stdout.")
    # Also accepted after `port` (SUPPRESS keeps the global option's value when not given here).
    s.add_argument("--address", default=argparse.SUPPRESS, help="orchestrator address (as the global option)")
    s.add_argument("--token", default=argparse.SUPPRESS, help="bearer token (as the global option)")
    s.add_argument("--max-frame-bytes", type=int, default=MAX_FRAME_BYTES,
                   help=f"largest request frame accepted (default {MAX_FRAME_BYTES})")
    s.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                   help=f"requests run at once; replies may come out of order (default {DEFAULT_CONCURRENCY})")
    s.set_defaults(func=cmd_port)
