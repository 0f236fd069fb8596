"""Append-only, hash-chained audit log in JSON lines.

Each line is one record in canonical JSON (sorted keys, no spaces, ASCII).
``hash`` is SHA-256 (or HMAC-SHA256 when ``MLBRIDGE_AUDIT_KEY`` is set) over
the canonical JSON of the record without ``hash``; that includes
``prev_hash``, the previous record's hash, so editing, deleting, inserting or
reordering any line breaks the chain at that line. Cutting whole records off
the end leaves a valid shorter chain: compare ``head`` with a copy kept
elsewhere (``verify_file(expect_records=..., expect_head=...)``) to catch it.
Never log payloads, arguments or secrets: such fields are refused or redacted.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import hmac
import json
import os
import re
import stat
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runtimes.wire.errors import ConfigError, InternalError, InvalidArgument

__all__ = [
    "EVENTS",
    "AuditLog",
    "VerifyResult",
    "audit_key_from_env",
    "code_digest",
    "verify_file",
]

KEY_ENV = "MLBRIDGE_AUDIT_KEY"
MIN_KEY_CHARS = 16
GENESIS_HASH = "0" * 64
EVENTS = frozenset(
    {
        "call",
        "denial",
        "worker_start",
        "worker_stop",
        "worker_kill",
        "policy_load",
        "auth_failure",
        "egress",
    }
)
FIELDS = frozenset(
    {
        "event",
        "tenant",
        "principal",
        "source",
        "method",
        "command",
        "resource_id",
        "bridge",
        "image_id",
        "decision",
        "rule",
        "outcome",
        "error_code",
        "duration_ms",
        "usage",
        "code_sha256",
        "extra",
        "call_id",
        "worker_id",
        "policy_hash",
    }
)
_CHAIN_FIELDS = ("seq", "event_id", "time", "alg", "prev_hash", "hash")
REDACTED = "[redacted]"
MAX_STRING = 2048
MAX_LINE_BYTES = 64 << 10
# A key is sensitive when any of its words (split at _ - . and case changes) is one of these.
# "tokens" (plural, as in prompt_tokens counts) is deliberately not on the list.
_SENSITIVE_WORDS = frozenset(
    {
        "payload",
        "payloads",
        "args",
        "arguments",
        "inputs",
        "secret",
        "secrets",
        "token",
        "password",
        "passwd",
        "authorization",
        "credential",
        "credentials",
        "cookie",
        "apikey",
        "bearer",
        "attachments",
    }
)
_SENSITIVE_PAIRS = ("api_key", "private_key", "access_key")


def audit_key_from_env() -> bytes | None:
    """The HMAC key from ``MLBRIDGE_AUDIT_KEY``, or ``None`` when unset.

    Raises:
        ConfigError: the variable is set but shorter than 16 characters.
    """
    value = os.environ.get(KEY_ENV, "")
    if not value:
        return None
    if len(value) < MIN_KEY_CHARS:
        raise ConfigError(f"{KEY_ENV} must hold at least {MIN_KEY_CHARS} characters")
    return value.encode("utf-8")


def code_digest(source: str) -> str:
    """SHA-256 hex of user code, for the ``code_sha256`` field (the code itself is never logged)."""
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()


def is_sensitive(key: str) -> bool:
    """Whether a field name looks like it carries a payload, argument or secret."""
    snake = re.sub(r"[-.\s]+", "_", re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key)).lower()
    words = set(snake.split("_"))
    return bool(words & _SENSITIVE_WORDS) or any(pair in snake for pair in _SENSITIVE_PAIRS)


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _hash(record: dict[str, Any], key: bytes | None) -> str:
    body = _canonical({k: v for k, v in record.items() if k != "hash"})
    if key is None:
        return hashlib.sha256(body).hexdigest()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


class _Scrubber:
    def __init__(self) -> None:
        self.values: set[str] = set()

    def __call__(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, dict):
            if depth > 8:
                return REDACTED
            return {
                str(k): REDACTED if is_sensitive(str(k)) else self(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self(v, depth + 1) for v in value[:100]]
        if isinstance(value, str):
            for secret in self.values:
                value = value.replace(secret, REDACTED)
            return value if len(value) <= MAX_STRING else value[:MAX_STRING] + "...[truncated]"
        if value is None or isinstance(value, bool | int | float):
            return value
        raise InvalidArgument(f"audit values must be JSON types, not {type(value).__name__}")


class AuditLog:
    """The orchestrator's audit log: one instance per file, one writer process per file.

    Args:
        path: the JSON-lines file; created with mode 0600 (its directory 0700).
        key: HMAC key; ``None`` reads ``MLBRIDGE_AUDIT_KEY`` (unset: plain SHA-256).
        sync: fsync after every record (the default; turn off only in tests).

    Raises:
        ConfigError: the file cannot be opened, another process holds it, its
            last record does not verify, or it was written with a different
            keying (keyed vs. plain) than now.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, key: bytes | None = None, sync: bool = True
    ) -> None:
        self.path = Path(path)
        self._key = key if key is not None else audit_key_from_env()
        self._alg = "sha256" if self._key is None else "hmac-sha256"
        self._sync = sync
        self._lock = threading.Lock()
        self._scrub = _Scrubber()
        self._broken: str | None = None
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            if not self.path.parent.exists():
                self.path.parent.mkdir(mode=0o700, parents=True)
            self._fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot open audit log {self.path}: {exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(self._fd).st_mode):
                raise ConfigError(f"audit log {self.path} is not a regular file")
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise ConfigError(
                        f"audit log {self.path} is in use by another process"
                    ) from None
                raise
            os.fchmod(self._fd, 0o600)
            self.seq, self.head = self._read_tail()
        except BaseException:
            os.close(self._fd)
            raise

    def _read_tail(self) -> tuple[int, str]:
        size = os.path.getsize(self.path)
        if size == 0:
            return 0, GENESIS_HASH
        with open(self.path, "rb") as handle:
            handle.seek(max(0, size - 2 * MAX_LINE_BYTES))
            tail = handle.read()
        fix = (
            f"run `mlbridge audit verify {self.path}`, then move the file aside to start a new log"
        )
        if not tail.endswith(b"\n"):
            raise ConfigError(f"audit log {self.path} ends in an incomplete record; {fix}")
        line = tail[:-1].rsplit(b"\n", 1)[-1]
        try:
            record = json.loads(line)
            ok = isinstance(record, dict) and record.get("alg") == self._alg
            ok = (
                ok and _hash(record, self._key) == record.get("hash") and _canonical(record) == line
            )
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(
                f"the last record of audit log {self.path} does not verify "
                f"(edited, or written with a different {KEY_ENV}); {fix}"
            )
        return int(record["seq"]), str(record["hash"])

    def redact_values(self, values: Iterable[str]) -> None:
        """Strings (secret values, say) to replace with ``[redacted]`` wherever they appear."""
        with self._lock:
            self._scrub.values.update(v for v in values if len(v) >= 6)

    def record(self, **fields: Any) -> dict[str, Any]:
        """Append one record, flushed and fsynced before returning.

        Args:
            **fields: ``event`` (one of :data:`EVENTS`) and any of the other
                audit fields; ``None`` values are left out. Nested ``usage``
                and ``extra`` are scrubbed: sensitive-looking keys are redacted.

        Returns:
            The record as written, with ``seq``, ``event_id``, ``time``, ``prev_hash``, ``hash``.

        Raises:
            InvalidArgument: an unknown event, an unknown or sensitive field name,
                or a value that is not JSON.
            InternalError: the write failed; the log refuses further records.
        """
        if fields.get("event") not in EVENTS:
            raise InvalidArgument(
                f"unknown audit event {fields.get('event')!r}; expected one of {sorted(EVENTS)}"
            )
        for name in fields:
            if is_sensitive(name):
                raise InvalidArgument(
                    f"audit field {name!r} looks like a payload or secret; never log it"
                )
            if name not in FIELDS:
                raise InvalidArgument(
                    f"unknown audit field {name!r}; expected one of {sorted(FIELDS)}"
                )
        with self._lock:
            if self._broken is not None:
                raise InternalError(f"audit log {self.path} is unusable: {self._broken}")
            record = {
                **{k: self._scrub(v) for k, v in fields.items() if v is not None},
                "seq": self.seq + 1,
                "event_id": str(uuid.uuid4()),
                "time": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
                "alg": self._alg,
                "prev_hash": self.head,
            }
            try:
                record["hash"] = _hash(record, self._key)
                line = _canonical(record) + b"\n"
            except ValueError as exc:  # NaN or infinity
                raise InvalidArgument(f"audit record is not valid JSON: {exc}") from None
            if len(line) > MAX_LINE_BYTES:
                raise InvalidArgument(
                    f"audit record is {len(line)} bytes; the limit is {MAX_LINE_BYTES}"
                )
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(self._fd, view) :]
                if self._sync:
                    os.fsync(self._fd)
            except OSError as exc:
                self._broken = f"an earlier write failed: {exc.strerror or exc}"
                raise InternalError(
                    f"cannot write audit log {self.path}: {exc.strerror or exc}"
                ) from None
            self.seq, self.head = record["seq"], record["hash"]
            return record

    async def arecord(self, **fields: Any) -> dict[str, Any]:
        """:meth:`record` in a worker thread, so the event loop never waits on fsync."""
        return await asyncio.to_thread(self.record, **fields)

    async def note(self, **fields: Any) -> None:
        """:meth:`arecord`, leaving out fields that are None or empty (what every caller in the service wants)."""
        await self.arecord(**{k: v for k, v in fields.items() if v not in (None, "")})

    def close(self) -> None:
        """Release the file; later records raise."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._broken = "it is closed"

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What :func:`verify_file` found.

    Attributes:
        ok: every record verified (and the expectations held).
        records: records that verified before the first bad one.
        first_bad: 1-based line number of the first bad record, or ``None``.
        reason: a sentence; ``""`` when ok.
        head: hash of the last good record (``GENESIS_HASH`` for none).
    """

    ok: bool
    records: int
    first_bad: int | None
    reason: str
    head: str = GENESIS_HASH


def _check_line(
    raw: bytes, seq: int, prev: str, key: bytes | None
) -> tuple[dict[str, Any] | None, str]:
    if not raw.endswith(b"\n"):
        return None, "incomplete last line (no newline): truncated"
    line = raw[:-1]
    try:
        record = json.loads(line)
    except ValueError:
        return None, "not valid JSON"
    if not isinstance(record, dict) or any(f not in record for f in _CHAIN_FIELDS):
        return None, "not an audit record (chain fields missing)"
    if type(record["seq"]) is not int or record["seq"] != seq:
        return (
            None,
            f"expected seq {seq}, found {record['seq']!r} (a record was deleted, inserted or moved)",
        )
    if record["prev_hash"] != prev:
        return None, "prev_hash does not match the previous record's hash"
    wanted = "sha256" if key is None else "hmac-sha256"
    if record["alg"] != wanted:
        return None, f"record uses {record['alg']!r}; verifying {wanted!r} (set or unset {KEY_ENV})"
    if not hmac.compare_digest(_hash(record, key), str(record["hash"])):
        return None, "hash does not match the record's contents (edited)"
    if _canonical(record) != line:
        return None, "record is not in canonical form (edited)"
    return record, ""


def verify_file(
    path: str | os.PathLike[str],
    *,
    key: bytes | None = None,
    expect_records: int | None = None,
    expect_head: str | None = None,
) -> VerifyResult:
    """Check a whole audit log.

    Args:
        path: the log file.
        key: HMAC key; ``None`` reads ``MLBRIDGE_AUDIT_KEY``.
        expect_records: at least this many records must be present (catches
            records cut off the end); take it from a copy kept elsewhere.
        expect_head: the hash record ``expect_records`` must carry.

    Returns:
        A :class:`VerifyResult`; ``first_bad`` is the 1-based line number.

    Raises:
        ConfigError: the file cannot be read.
    """
    if expect_head is not None and expect_records is None:
        raise InvalidArgument("expect_head needs expect_records: the record number that carries it")
    key = key if key is not None else audit_key_from_env()
    seq, prev = 0, GENESIS_HASH
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ConfigError(f"cannot read audit log {os.fspath(path)}: {exc.strerror}") from None
    with handle:
        for raw in handle:
            record, reason = _check_line(raw, seq + 1, prev, key)
            if record is None:
                return VerifyResult(False, seq, seq + 1, reason, prev)
            seq, prev = seq + 1, str(record["hash"])
            if seq == expect_records and expect_head is not None and prev != expect_head:
                return VerifyResult(
                    False, seq - 1, seq, "hash differs from the expected head", prev
                )
    if expect_records is not None and seq < expect_records:
        reason = f"log ends after {seq} records; {expect_records} expected (truncated)"
        return VerifyResult(False, seq, seq + 1, reason, prev)
    return VerifyResult(True, seq, None, "", prev)
