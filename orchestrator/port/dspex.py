"""``mlbridge port --protocol dspex``: DSPex's Erlang-port protocol, forwarded over gRPC.

DSPex opened ``dspy_bridge.py [--mode standalone|pool-worker] [--worker-id
ID]`` with ``Port.open({:spawn_executable, ...}, [{:packet, 4}, :binary])``.
Pointing that at ``mlbridge port`` with the same options keeps the Elixir
side unchanged: every request is forwarded to an orchestrator with
``Call(bridge="", command, args)``, so DSPex's un-namespaced commands
(``create_program`` ...) and namespaced ones (``dspy:stats``) both work.

Frames are UTF-8 JSON. Requests are ``{"id", "command", "args"}``; replies
are ``{"id", "success": true, "result", "timestamp"}`` or ``{"id", "success":
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
- A frame over ``--max-frame-bytes`` (default 16 MiB, the gRPC message cap)
  is skipped without being held in memory and answered with
  ``PAYLOAD_TOO_LARGE`` for its id, found at the start or the end of the
  frame (Elixir's JSON encoders put ``id`` after ``args`` and ``command``);
  the port goes on with the next frame.
- ``ping`` and ``shutdown`` answer with the ``--worker-id`` and ``--mode``
  given, as DSPex's bridge did. ``shutdown`` stops reading, lets the requests
  read before it finish, cleans up the sessions this port used (DSPex's
  bridge dropped every session it held), answers last, and exits 0.
- End of input exits 0 once the requests in flight are answered; a frame cut
  short by end of input is logged and dropped.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from runtimes.wire.errors import MLBridgeError
from runtimes.wire.metadata import DEPRECATED

from .frames import MAX_FRAME_BYTES, FrameReader, FrameWriter, Oversized, encode_json, message_of

log = logging.getLogger("mlbridge.port")

DEFAULT_CONCURRENCY = 8
EXIT_OK = 0
MODES = ("standalone", "pool-worker")

# The id of an oversized frame: the first key of the object, or the last (jiffy and Jason sort a small map's
# keys, which puts "id" after "args" and "command").
_ID = r'"id"\s*:\s*(-?\d{1,18}|"(?:[^"\\]|\\.){0,256}")'
_ID_FIRST = re.compile(rb"^\s*\{\s*" + _ID.encode())
_ID_LAST = re.compile(rb"[,{]\s*" + _ID.encode() + rb"\s*\}\s*$")

__all__ = ["DEFAULT_CONCURRENCY", "MODES", "DSPexPort"]


class _Bad(Exception):
    """A request frame that cannot be run; answered with an error reply."""

    def __init__(self, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class DSPexPort:
    """Reads DSPex request frames from ``reader``, forwards them with ``client``, writes replies to ``writer``.

    Args:
        client: a blocking :class:`~orchestrator.client.MLBridge`.
        mode: DSPex's ``--mode``; answered in ``ping`` and ``shutdown``.
        worker_id: DSPex's ``--worker-id``; answered in ``ping`` and ``shutdown`` (the worker that ran a
            ``ping`` is then ``mlbridge_worker_id``).
    """

    def __init__(self, client: Any, reader: BinaryIO, writer: BinaryIO, *, max_frame_bytes: int = MAX_FRAME_BYTES,
                 concurrency: int = DEFAULT_CONCURRENCY, mode: str = "standalone",
                 worker_id: str | None = None) -> None:
        self.client = client
        self.frames = FrameReader(reader, max_frame_bytes)
        self.out = FrameWriter(writer)
        self.mode = mode
        self.worker_id = worker_id
        self._slots = threading.BoundedSemaphore(concurrency)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="mlbridge-port")
        self._deprecated_seen: set[str] = set()
        self._sessions: set[str] = set()  # session ids this port's requests named, for shutdown
        self._lock = threading.Lock()

    def run(self) -> int:
        """Serve until end of input or ``shutdown``; 0."""
        try:
            return self._serve()
        finally:
            self._pool.shutdown(wait=True)  # answer what is in flight before exiting

    def _serve(self) -> int:
        while not self.out.broken.is_set():
            frame = self.frames.next()
            if frame is None:
                return EXIT_OK
            if isinstance(frame, Oversized):
                self._oversized(frame)
                continue
            try:
                request_id, command, args = _parse(frame.body)
            except _Bad as bad:
                log.warning("bad frame: %s", bad)
                self._reply_error(bad.request_id, str(bad), "INVALID_ARGUMENT")
                continue
            session = args.get("session_id")
            if isinstance(session, str) and session:
                with self._lock:
                    self._sessions.add(session)
            if command == "shutdown":
                self._pool.shutdown(wait=True)  # the requests read before it are answered first
                self._slots.acquire()
                self._run(request_id, command, args)
                return EXIT_OK
            self._slots.acquire()
            self._pool.submit(self._run, request_id, command, args)
        return EXIT_OK

    def _oversized(self, frame: Oversized) -> None:
        request_id = _find_id(frame)
        cap = self.frames.max_frame_bytes
        log.error("frame of %d bytes over the cap of %d skipped (request id %r)", frame.length, cap, request_id)
        self._reply_error(request_id, f"frame of {frame.length} bytes is over the port's cap of {cap} bytes; "
                                      f"it was skipped", "PAYLOAD_TOO_LARGE")

    def _run(self, request_id: Any, command: str, args: dict[str, Any]) -> None:
        try:
            if command == "shutdown":
                self._reply(request_id, command, self._do_shutdown(), None)
                return
            res = self.client.call_detailed("", command, args)
            result = res.result
            if command == "ping" and isinstance(result, dict):
                result = self._as_dspex_worker(result)
            self._reply(request_id, command, result, res.metadata.get(DEPRECATED))
        except MLBridgeError as err:
            self._reply_error(request_id, message_of(err), err.code)
        except Exception as exc:  # noqa: BLE001 - one request must never stop the port
            log.exception("request %r failed unexpectedly", request_id)
            self._reply_error(request_id, f"{type(exc).__name__}: {exc}", "INTERNAL")
        finally:
            self._slots.release()

    def _as_dspex_worker(self, pong: dict[str, Any]) -> dict[str, Any]:
        pong = {**pong, "mode": self.mode}
        if self.worker_id is not None:
            pong["mlbridge_worker_id"] = pong.get("worker_id", "")
            pong["worker_id"] = self.worker_id
        return pong

    def _do_shutdown(self) -> dict[str, Any]:
        """DSPex's shutdown: clean up the sessions this port used; then the port stops reading."""
        with self._lock:
            sessions = sorted(self._sessions)
        cleaned = 0
        for session in sessions:
            try:
                res = self.client.call_detailed("", "cleanup_session", {"session_id": session})
            except MLBridgeError as err:
                log.warning("shutdown: cleaning up session %r failed: %s", session, err)
                continue
            cleaned += isinstance(res.result, dict) and res.result.get("status") == "cleaned"
        return {"status": "shutting_down", "worker_id": self.worker_id, "mode": self.mode,
                "sessions_cleaned": cleaned}

    # -- replies ------------------------------------------------------------------
    def _reply(self, request_id: Any, command: str, result: Any, notice: str | None) -> None:
        reply: dict[str, Any] = {"id": request_id, "success": True, "result": result, "timestamp": time.time()}
        if notice:
            reply["deprecated"] = notice
            with self._lock:
                first = command not in self._deprecated_seen
                self._deprecated_seen.add(command)
            if first:  # once per command, for the operator
                log.warning("%s", notice)
        self.out.write(encode_json(reply))

    def _reply_error(self, request_id: Any, message: str, code: str) -> None:
        self.out.write(encode_json({"id": request_id, "success": False, "error": message, "error_code": code,
                                    "timestamp": time.time()}))


def _find_id(frame: Oversized) -> Any:
    """The request id of a skipped frame, from its start or its end; None when neither has one."""
    for pattern, data in ((_ID_FIRST, frame.head), (_ID_LAST, frame.tail)):
        found = pattern.search(data)
        if found:
            try:
                return json.loads(found.group(1))
            except ValueError:
                continue
    return None


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


