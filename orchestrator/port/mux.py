"""``mlbridge port --protocol mux``: the whole public API over one ``{packet, 4}`` pipe.

The protocol is written down in ``docs/port-protocol.md``; in short, a frame
is ``<<header_len::32, header_json, blobs>>``, where ``header["attachments"]``
(``[[name, size], ...]``) says how ``blobs`` splits into raw attachments.
Requests carry an ``id`` and an ``op``; the port answers each with exactly
one final frame (``ok`` true or false) and, for a ``stream``, event frames
before it. Requests run concurrently on threads, each through the blocking
client; ``cancel`` and ``answer`` run beside them without taking a place, so
a port full of streams waiting on client tools can still be answered.

End of input means the parent is gone or done: the calls in flight are
cancelled, their final frames written where the output still reads, and the
port exits 0.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

from runtimes.wire.errors import (
    AlreadyExists,
    InvalidArgument,
    MLBridgeError,
    PayloadTooLarge,
    public_details,
)
from runtimes.wire.version import __version__

from .frames import (
    HEADER,
    MAX_FRAME_BYTES,
    FrameReader,
    FrameWriter,
    Oversized,
    encode_json,
    message_of,
)

log = logging.getLogger("mlbridge.port")

PROTOCOL = "mlbridge-mux"
VERSION = 1
DEFAULT_CONCURRENCY = 64
_CONTROL_THREADS = 4
_MAX_ID_CHARS = 256

__all__ = ["DEFAULT_CONCURRENCY", "PROTOCOL", "VERSION", "MuxPort", "decode", "encode"]


@dataclass
class _Request:
    id: Any
    op: str
    header: dict[str, Any]
    attachments: dict[str, bytes]
    call_id: str = ""


def encode(header: dict[str, Any], attachments: dict[str, bytes] | None = None) -> list[bytes]:
    """A frame body's parts: header length, header JSON, blobs (``header["attachments"]`` is set from them)."""
    blobs = list((attachments or {}).items())
    if blobs:
        header = {**header, "attachments": [[name, len(data)] for name, data in blobs]}
    data = encode_json(header)
    return [HEADER.pack(len(data)), data, *(b for _, b in blobs)]


def decode(body: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A frame body's header and attachments.

    Raises:
        InvalidArgument: the body is not a header followed by the attachments it lists.
    """
    if len(body) < HEADER.size:
        raise InvalidArgument(f"frame of {len(body)} bytes is too short for a header length")
    (hlen,) = HEADER.unpack_from(body)
    if hlen > len(body) - HEADER.size:
        raise InvalidArgument(f"header length {hlen} is over the {len(body) - HEADER.size} bytes that follow it")
    try:
        header = json.loads(body[HEADER.size:HEADER.size + hlen].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(f"header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidArgument(f"header must be a JSON object, got {type(header).__name__}")
    rest = memoryview(body)[HEADER.size + hlen:]
    listed = header.get("attachments", [])
    if not isinstance(listed, list) or not all(
            isinstance(a, list) and len(a) == 2 and isinstance(a[0], str) and isinstance(a[1], int)
            and not isinstance(a[1], bool) and a[1] >= 0 for a in listed):
        raise InvalidArgument("'attachments' must be a list of [name, size] pairs", details=_id_of(header))
    if sum(a[1] for a in listed) != len(rest):
        raise InvalidArgument(f"attachment sizes add up to {sum(a[1] for a in listed)} bytes but "
                              f"{len(rest)} bytes follow the header", details=_id_of(header))
    attachments: dict[str, bytes] = {}
    at = 0
    for name, size in listed:
        if name in attachments:
            raise InvalidArgument(f"attachment {name!r} is listed twice", details=_id_of(header))
        attachments[name] = bytes(rest[at:at + size])
        at += size
    return header, attachments


def _id_of(header: dict[str, Any]) -> dict[str, Any]:
    rid = header.get("id")
    return {"_id": rid} if _usable_id(rid) else {}


def _usable_id(rid: Any) -> bool:
    return (isinstance(rid, int) and not isinstance(rid, bool)) or (isinstance(rid, str) and len(rid) <= _MAX_ID_CHARS)


class MuxPort:
    """Serves mux frames from ``reader`` with the blocking ``client``; replies go to ``writer``."""

    def __init__(self, client: Any, reader: BinaryIO, writer: BinaryIO, *, max_frame_bytes: int = MAX_FRAME_BYTES,
                 concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.client = client
        self.frames = FrameReader(reader, max_frame_bytes)
        self.out = FrameWriter(writer)
        self._slots = threading.BoundedSemaphore(concurrency)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="mlbridge-mux")
        self._control = ThreadPoolExecutor(_CONTROL_THREADS, thread_name_prefix="mlbridge-mux-control")
        self._lock = threading.Lock()
        self._inflight: dict[Any, _Request] = {}
        self._ops: dict[str, Callable[[_Request], None]] = {
            "call": self._call, "create_resource": self._create_resource, "execute_resource": self._execute,
            "list_resources": self._list_resources, "delete_resource": self._delete_resource,
            "list_bridges": self._list_bridges, "describe": self._describe, "stats": self._stats,
            "stream": self._stream,
        }
        self._control_ops: dict[str, Callable[[_Request], None]] = {"cancel": self._cancel, "answer": self._answer}

    def run(self) -> int:
        """Greet, serve until end of input, cancel what is still running; 0."""
        self._send({"hello": {"protocol": PROTOCOL, "version": VERSION, "mlbridge": __version__,
                              "max_frame_bytes": self.frames.max_frame_bytes}})
        try:
            while not self.out.broken.is_set():
                frame = self.frames.next()
                if frame is None:
                    break
                if isinstance(frame, Oversized):
                    self._oversized(frame)
                    continue
                self._dispatch(frame.body)
        finally:
            self._cancel_all()
            self._control.shutdown(wait=True)
            self._pool.shutdown(wait=True)
        return 0

    # -- reading ------------------------------------------------------------------------
    def _dispatch(self, body: bytes) -> None:
        try:
            header, attachments = decode(body)
        except InvalidArgument as err:
            self._fail(err.details.get("_id"), err)
            return
        rid, op = header.get("id"), header.get("op")
        if not _usable_id(rid):
            self._fail(None, InvalidArgument(f"a request needs an 'id': an integer or a string of at most "
                                             f"{_MAX_ID_CHARS} characters"))
            return
        control = self._control_ops.get(op) if isinstance(op, str) else None
        run = self._ops.get(op) if isinstance(op, str) else None
        if control is None and run is None:
            ops = ", ".join(sorted([*self._ops, *self._control_ops]))
            self._fail(rid, InvalidArgument(f"unknown op {op!r}; ops: {ops}"))
            return
        req = _Request(rid, str(op), header, attachments)
        if control is not None:
            self._control.submit(self._guarded, control, req)
            return
        with self._lock:
            if rid in self._inflight:
                self._fail(rid, AlreadyExists(f"request id {rid!r} is still in flight; ids must be unique "
                                              f"among a port's requests in flight"))
                return
            self._inflight[rid] = req
        assert run is not None
        self._slots.acquire()
        self._pool.submit(self._guarded, run, req, True)

    def _oversized(self, frame: Oversized) -> None:
        rid = None
        if len(frame.head) >= HEADER.size:
            (hlen,) = HEADER.unpack_from(frame.head)
            try:
                header = json.loads(frame.head[HEADER.size:HEADER.size + hlen])
                rid = header.get("id") if isinstance(header, dict) and _usable_id(header.get("id")) else None
            except ValueError:
                rid = None
        cap = self.frames.max_frame_bytes
        log.error("frame of %d bytes over the cap of %d skipped (request id %r)", frame.length, cap, rid)
        self._fail(rid, PayloadTooLarge(f"frame of {frame.length} bytes is over the port's cap of {cap} bytes; "
                                        f"it was skipped", details={"max_frame_bytes": cap}))

    def _guarded(self, run: Callable[[_Request], None], req: _Request, slot: bool = False) -> None:
        try:
            run(req)
        except MLBridgeError as err:
            self._done(req)
            self._fail(req.id, err)
        except Exception as exc:  # noqa: BLE001 - one request must never stop the port
            log.exception("request %r (%s) failed unexpectedly", req.id, req.op)
            self._done(req)
            self._fail(req.id, MLBridgeError(f"{type(exc).__name__}: {exc}"))
        finally:
            if slot:
                self._done(req)
                self._slots.release()

    def _done(self, req: _Request) -> None:
        with self._lock:
            if self._inflight.get(req.id) is req:
                del self._inflight[req.id]

    def _cancel_all(self) -> None:
        with self._lock:
            running = [r.call_id for r in self._inflight.values() if r.call_id]
        for call_id in running:
            try:
                self.client.cancel(call_id)
            except MLBridgeError as err:
                log.warning("cancelling call %s at end of input failed: %s", call_id, err)

    # -- writing ------------------------------------------------------------------------
    def _send(self, header: dict[str, Any], attachments: dict[str, bytes] | None = None) -> None:
        self.out.write(*encode(header, attachments))

    def _ok(self, req: _Request, result: Any, *, attachments: dict[str, bytes] | None = None,
            metadata: dict[str, str] | None = None) -> None:
        reply: dict[str, Any] = {"id": req.id, "ok": True, "result": result}
        if req.call_id:
            reply["call_id"] = req.call_id
        if metadata:
            reply["metadata"] = metadata
        self._done(req)  # before the reply: the parent may reuse the id as soon as it has it
        self._send(reply, attachments)

    def _fail(self, rid: Any, err: MLBridgeError) -> None:
        self._send({"id": rid, "ok": False,
                    "error": {"code": err.code, "message": message_of(err), "details": public_details(err)}})

    # -- ops ------------------------------------------------------------------------------
    def _with_call_id(self, req: _Request) -> str:
        given = _opt_str(req.header, "call_id")
        req.call_id = given or uuid.uuid4().hex
        return req.call_id

    def _call(self, req: _Request) -> None:
        h = req.header
        res = self.client.call_detailed(_str(h, "bridge", allow_empty=True), _str(h, "command"), _obj(h, "args"),
                                        attachments=req.attachments, call_id=self._with_call_id(req),
                                        timeout=_timeout(h))
        self._ok(req, res.result, attachments=res.attachments, metadata=res.metadata)

    def _create_resource(self, req: _Request) -> None:
        h = req.header
        rid = self.client.create_resource(_str(h, "bridge"), _str(h, "type"), _obj(h, "config"),
                                          resource_id=_opt_str(h, "resource_id") or None,
                                          attachments=req.attachments, timeout=_timeout(h))
        self._ok(req, {"resource_id": rid})

    def _execute(self, req: _Request) -> None:
        h = req.header
        res = self.client.execute_resource_detailed(_str(h, "resource_id"), _obj(h, "inputs"),
                                                    attachments=req.attachments, call_id=self._with_call_id(req),
                                                    timeout=_timeout(h))
        self._ok(req, res.result, attachments=res.attachments, metadata=res.metadata)

    def _list_resources(self, req: _Request) -> None:
        h = req.header
        self._ok(req, self.client.list_resources(_opt_str(h, "bridge") or None, _opt_str(h, "type") or None))

    def _delete_resource(self, req: _Request) -> None:
        self._ok(req, {"deleted": self.client.delete_resource(_str(req.header, "resource_id"))})

    def _list_bridges(self, req: _Request) -> None:
        self._ok(req, self.client.list_bridges())

    def _describe(self, req: _Request) -> None:
        self._ok(req, self.client.describe(_opt_str(req.header, "bridge")))

    def _stats(self, req: _Request) -> None:
        h = req.header
        since = h.get("usage_since")
        if since is not None and (isinstance(since, bool) or not isinstance(since, int | float)):
            raise InvalidArgument("'usage_since' must be Unix seconds (a number)")
        self._ok(req, self.client.stats(_opt_str(h, "usage_tenant"), since))

    def _stream(self, req: _Request) -> None:
        h = req.header
        call_id = self._with_call_id(req)
        events: Iterator[Any]
        if h.get("resource_id") is not None:
            events = self.client.stream_resource(_str(h, "resource_id"), _obj(h, "inputs"),
                                                 attachments=req.attachments, call_id=call_id, timeout=_timeout(h))
        else:
            events = self.client.call_stream(_str(h, "bridge", allow_empty=True), _str(h, "command"),
                                             _obj(h, "args"), attachments=req.attachments, call_id=call_id,
                                             timeout=_timeout(h))
        for ev in events:
            if ev.kind == "result":
                self._ok(req, ev.data, attachments=ev.attachments, metadata=ev.metadata)
                return
            event: dict[str, Any] = {"id": req.id, "event": ev.kind, "call_id": call_id}
            if ev.kind == "progress":
                event.update(step=ev.step, total=ev.total, message=ev.message)
            elif ev.kind == "request":
                event.update(ev.data)
            else:
                event["data"] = ev.data
            self._send(event)
        raise MLBridgeError("the stream ended without a result")

    def _target(self, req: _Request) -> str:
        """The call id a cancel or answer is about: its ``target`` request's, or the ``call_id`` given."""
        h = req.header
        if "target" in h:
            target = h["target"]
            with self._lock:
                running = self._inflight.get(target) if _usable_id(target) else None
            return running.call_id if running is not None else ""
        return _str(h, "call_id")

    def _cancel(self, req: _Request) -> None:
        call_id = self._target(req)
        self._ok(req, {"found": bool(call_id) and self.client.cancel(call_id)})

    def _answer(self, req: _Request) -> None:
        h = req.header
        call_id = self._target(req)
        error = h.get("error")
        if error is not None and not isinstance(error, str):
            raise InvalidArgument("'error' must be a string: why the request cannot be answered")
        request_id = _str(h, "request_id")
        found = bool(call_id) and self.client.answer(call_id, request_id, h.get("result"), error=error)
        self._ok(req, {"found": found})


# -- fields -------------------------------------------------------------------------------
def _str(h: dict[str, Any], key: str, *, allow_empty: bool = False) -> str:
    value = h.get(key, "" if allow_empty else None)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise InvalidArgument(f"{h.get('op')}: {key!r} is required (a non-empty string)")
    return value


def _opt_str(h: dict[str, Any], key: str) -> str:
    value = h.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{h.get('op')}: {key!r} must be a string")
    return value


def _obj(h: dict[str, Any], key: str) -> dict[str, Any]:
    value = h.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{h.get('op')}: {key!r} must be a JSON object")
    return value


def _timeout(h: dict[str, Any]) -> float | None:
    value = h.get("timeout_s")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"{h.get('op')}: 'timeout_s' must be a positive number of seconds")
    return float(value)
