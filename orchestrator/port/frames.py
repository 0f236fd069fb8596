"""The ``{packet, 4}`` framing both port protocols use: reading frames, skipping oversized ones, writing replies.

A frame is a 4-byte big-endian length and then that many bytes. A frame
longer than the cap is read in pieces and thrown away, keeping only its
first and last :data:`KEEP_BYTES` (where a request's id can be found), so one
oversized request costs its sender an error reply, never the port.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
from dataclasses import dataclass
from typing import Any, BinaryIO

from runtimes.wire.errors import MLBridgeError

log = logging.getLogger("mlbridge.port")

HEADER = struct.Struct(">I")
#: The largest request frame accepted by default: the gRPC message cap.
MAX_FRAME_BYTES = 16 * 1024 * 1024
#: How much of an oversized frame's start and end is kept to find its id.
KEEP_BYTES = 64 * 1024
_SKIP_CHUNK = 1024 * 1024

__all__ = ["HEADER", "KEEP_BYTES", "MAX_FRAME_BYTES", "Frame", "FrameReader", "FrameWriter", "Oversized", "encode_json",
           "message_of"]


@dataclass(frozen=True)
class Frame:
    """A whole frame's body."""

    body: bytes


@dataclass(frozen=True)
class Oversized:
    """A frame over the cap, already skipped: its length and the bytes kept from its start and end."""

    length: int
    head: bytes
    tail: bytes


class FrameReader:
    """Reads frames from ``reader``; :meth:`next` returns None at the end of input."""

    def __init__(self, reader: BinaryIO, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.reader = reader
        self.max_frame_bytes = max_frame_bytes

    def next(self) -> Frame | Oversized | None:
        """The next frame; None at the end of input (a frame cut short by it is logged and dropped)."""
        header = self._read_exact(HEADER.size)
        if not header:
            return None
        if len(header) < HEADER.size:
            log.warning("input ended inside a frame header (%d of 4 bytes); dropped", len(header))
            return None
        (length,) = HEADER.unpack(header)
        if length > self.max_frame_bytes:
            return self._skip(length)
        body = self._read_exact(length)
        if len(body) < length:
            log.warning("input ended inside a frame (%d of %d bytes); dropped", len(body), length)
            return None
        return Frame(body)

    def _skip(self, length: int) -> Oversized:
        head = self._read_exact(min(length, KEEP_BYTES))
        left = length - len(head)
        tail = b""
        while left > 0 and len(head) == min(length, KEEP_BYTES):
            chunk = self._read_exact(min(left, _SKIP_CHUNK))
            if not chunk:
                break
            left -= len(chunk)
            tail = (tail + chunk)[-KEEP_BYTES:]
        if left > 0 or len(head) < min(length, KEEP_BYTES):
            # Still answered (the sender may be waiting on it); the next read finds the end of input.
            log.warning("input ended inside an oversized frame of %d bytes", length)
        return Oversized(length, head, tail if length > KEEP_BYTES else head)

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


class FrameWriter:
    """Writes frames to ``writer`` one at a time, from any thread; stops quietly once the reader is gone."""

    def __init__(self, writer: BinaryIO) -> None:
        self.writer = writer
        self._lock = threading.Lock()
        self.broken = threading.Event()  # the reader of our output went away

    def write(self, *parts: bytes) -> None:
        """One frame made of ``parts``, concatenated."""
        length = sum(len(p) for p in parts)
        with self._lock:
            if self.broken.is_set():
                return
            try:
                self.writer.write(HEADER.pack(length) + b"".join(parts))
                self.writer.flush()
            except (BrokenPipeError, ValueError, OSError):
                self.broken.set()
                log.warning("output closed; stopping")


def encode_json(message: dict[str, Any]) -> bytes:
    """UTF-8 JSON; text that UTF-8 cannot carry (a lone surrogate from a ``\\ud800`` escape) is sent escaped."""
    try:
        return json.dumps(message, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(message, ensure_ascii=True).encode("ascii")


def message_of(err: MLBridgeError) -> str:
    """An error's own words: the gRPC form's ``"CODE: "`` prefix is dropped (the code travels beside it)."""
    prefix = f"{err.code}: "
    return err.message[len(prefix):] if err.message.startswith(prefix) else err.message
