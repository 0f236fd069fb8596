"""Per-thread capture of ``sys.stdout`` / ``sys.stderr`` with a hard byte cap.

Handlers run concurrently in a thread pool, and ``sys.stdout`` is process-wide,
so :func:`install` replaces both streams once with a :class:`ThreadLocalStream`
proxy. A thread inside :class:`OutputCapture` writes to its own
:class:`CappedBuffer`; every other thread writes through to the original
stream. A buffer stops storing at its cap and only counts what it drops, so
code that prints gigabytes costs no memory.

Writes to file descriptors 1 and 2 (``os.write(1, ...)``, C extensions,
subprocesses, ``sys.__stdout__``) are not captured: ``fileno()`` returns the
worker's real descriptor, so they land in the worker's own log (capped by the
container's log driver) and never break the proxy.
"""

from __future__ import annotations

import io
import sys
import threading
from typing import Any, TextIO

__all__ = ["CappedBuffer", "OutputCapture", "ThreadLocalStream", "install"]

_ENC_ERRORS = "backslashreplace"  # stored bytes are always valid UTF-8
_COUNT_CHUNK = 1 << 20

_local = threading.local()
_lock = threading.Lock()
_originals: dict[str, TextIO | None] = {}
_active = 0  # captures running right now, in any thread


def _utf8_len(text: str, start: int = 0) -> int:
    """UTF-8 length of ``text[start:]``, without copying a huge string whole."""
    if text.isascii():
        return max(len(text) - start, 0)
    return sum(
        len(text[i : i + _COUNT_CHUNK].encode("utf-8", _ENC_ERRORS))
        for i in range(start, len(text), _COUNT_CHUNK)
    )


class CappedBuffer:
    """UTF-8 bytes up to ``limit``; the rest is counted in ``dropped``."""

    __slots__ = ("_data", "dropped", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data = bytearray()
        self.dropped = 0

    def write_text(self, text: str) -> None:
        room = self.limit - len(self._data)
        if room <= 0:
            self.dropped += _utf8_len(text)
            return
        # A character is at least one byte, so ``room`` characters always fill
        # the room; encoding only them bounds the copy for huge strings.
        head = text[:room].encode("utf-8", _ENC_ERRORS)
        self._data += head[:room]
        self.dropped += max(len(head) - room, 0) + _utf8_len(text, room)

    def write_bytes(self, data: bytes | memoryview) -> None:
        room = self.limit - len(self._data)
        if room <= 0:
            self.dropped += len(data)
            return
        head = bytes(data[:room]).decode("utf-8", "replace").encode("utf-8")
        self._data += head[:room]
        self.dropped += max(len(data) - room, 0)

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def getvalue(self) -> str:
        # The cut may split a character; drop the partial tail.
        return self._data.decode("utf-8", "ignore")

    def tail(self, limit: int) -> str:
        """The last ``limit`` bytes (for error details)."""
        return bytes(self._data[-limit:]).decode("utf-8", "ignore")


class _BinaryProxy(io.RawIOBase):
    """``sys.stdout.buffer`` of the proxy: bytes go to the same thread-local buffer."""

    def __init__(self, owner: ThreadLocalStream) -> None:
        self._owner = owner

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        sink = self._owner._sink()
        view = memoryview(data).cast("B")
        if sink is not None:
            sink.write_bytes(view)
            return len(view)
        target = self._owner._fallback
        raw = getattr(target, "buffer", None)
        if target is not None and raw is not None:
            target.flush()  # keep order with text already buffered
            return int(raw.write(data))
        return len(view)

    def fileno(self) -> int:
        return self._owner.fileno()

    def close(self) -> None:  # user code must not close the worker's stream
        pass


class ThreadLocalStream(io.TextIOBase):
    """Stand-in for ``sys.stdout`` / ``sys.stderr`` that captures per thread."""

    def __init__(self, which: str, fallback: TextIO | None) -> None:
        super().__init__()
        self._which = 0 if which == "stdout" else 1
        self._name = which
        self._fallback = fallback
        self._buffer = _BinaryProxy(self)

    def _sink(self) -> CappedBuffer | None:
        sinks = getattr(_local, "sinks", None)
        return None if sinks is None else sinks[self._which]

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        sink = self._sink()
        if sink is not None:
            sink.write_text(text)
        elif self._fallback is not None:
            self._fallback.write(text)
        return len(text)

    def flush(self) -> None:
        if self._sink() is None and self._fallback is not None:
            self._fallback.flush()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def isatty(self) -> bool:
        if self._sink() is not None or self._fallback is None:
            return False
        return self._fallback.isatty()

    def fileno(self) -> int:
        if self._fallback is None:
            raise io.UnsupportedOperation("fileno")
        return self._fallback.fileno()

    def close(self) -> None:  # user code must not close the worker's stream
        pass

    def reconfigure(self, **_: Any) -> None:
        """Accepted and ignored: captured text is always UTF-8."""

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return _ENC_ERRORS

    @property
    def buffer(self) -> _BinaryProxy:
        return self._buffer

    @property
    def name(self) -> str:
        return f"<{self._name}>"


def install() -> None:
    """Put the proxies in place (idempotent); remembers the original streams."""
    with _lock:
        _install_locked()


def _install_locked() -> None:
    for which in ("stdout", "stderr"):
        current = getattr(sys, which)
        if isinstance(current, ThreadLocalStream):
            continue
        if which not in _originals:
            _originals[which] = current
        setattr(sys, which, ThreadLocalStream(which, _originals[which]))


class OutputCapture:
    """Capture this thread's ``sys.stdout`` and ``sys.stderr`` while entered.

    Re-entrant and reusable: a generator may enter it around each step. When
    no capture is active anywhere and user code replaced ``sys.stdout`` for
    good, entering puts the proxies back.
    """

    def __init__(self, limit: int) -> None:
        self.stdout = CappedBuffer(limit)
        self.stderr = CappedBuffer(limit)
        self._saved: list[Any] = []

    def __enter__(self) -> OutputCapture:
        global _active
        with _lock:
            if _active == 0:
                _install_locked()
            _active += 1
        self._saved.append(getattr(_local, "sinks", None))
        _local.sinks = (self.stdout, self.stderr)
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        _local.sinks = self._saved.pop()
        with _lock:
            _active -= 1

    def summary(self) -> dict[str, Any]:
        """The reply fields: text, truncation flags and dropped byte counts."""
        return {
            "stdout": self.stdout.getvalue(),
            "stderr": self.stderr.getvalue(),
            "stdout_truncated": self.stdout.truncated,
            "stderr_truncated": self.stderr.truncated,
            "stdout_dropped_bytes": self.stdout.dropped,
            "stderr_dropped_bytes": self.stderr.dropped,
        }
