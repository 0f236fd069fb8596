"""Usage accounting per tenant: the figures a hosting operator bills on.

:class:`UsageBook` counts, per (tenant, bridge) and per time bucket (an hour by
default): calls, errors, CPU seconds, peak memory, tokens in and out, and
worker claims. Recording is an in-memory dict update (no I/O, no lock: it is
called from the orchestrator's one asyncio thread); :meth:`UsageBook.maybe_flush`
writes the pending figures to SQLite every ``flush_s`` seconds, in one
transaction, so they survive restarts. :meth:`UsageBook.query` sums the stored
and the not-yet-written figures.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from runtimes.wire.errors import ConfigError

__all__ = ["MAX_NAME_CHARS", "SCHEMA_VERSION", "UsageBook"]

SCHEMA_VERSION = 1
MAX_NAME_CHARS = 128

# Indexes into a pending row.
_CALLS, _ERRORS, _CPU, _PEAK, _TOKENS_IN, _TOKENS_OUT, _CLAIMS = range(7)

_TABLES = """
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    tenant TEXT NOT NULL,
    bridge TEXT NOT NULL,
    bucket_start INTEGER NOT NULL,
    calls INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    cpu_seconds REAL NOT NULL DEFAULT 0,
    peak_memory_bytes INTEGER NOT NULL DEFAULT 0,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    worker_claims INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, bridge, bucket_start)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_by_bucket ON usage (bucket_start);
"""

_UPSERT = """
INSERT INTO usage (tenant, bridge, bucket_start, calls, errors, cpu_seconds, peak_memory_bytes,
                   tokens_in, tokens_out, worker_claims)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (tenant, bridge, bucket_start) DO UPDATE SET
    calls = calls + excluded.calls,
    errors = errors + excluded.errors,
    cpu_seconds = cpu_seconds + excluded.cpu_seconds,
    peak_memory_bytes = max(peak_memory_bytes, excluded.peak_memory_bytes),
    tokens_in = tokens_in + excluded.tokens_in,
    tokens_out = tokens_out + excluded.tokens_out,
    worker_claims = worker_claims + excluded.worker_claims
"""

_SELECT = """
SELECT tenant, bridge, sum(calls), sum(errors), sum(cpu_seconds), max(peak_memory_bytes), sum(tokens_in),
       sum(tokens_out), sum(worker_claims), min(bucket_start), max(bucket_start)
FROM usage WHERE {where}
GROUP BY tenant, bridge
"""


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}")
    if not 0 < len(value) <= MAX_NAME_CHARS:
        raise ValueError(f"{what} must be 1 to {MAX_NAME_CHARS} characters, got {len(value)}")


def _check_count(what: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value}")
    return value


def _check_seconds(what: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value}")
    return float(value)


class UsageBook:
    """Per-tenant usage counters in hourly (``bucket_s``) buckets, kept in SQLite at ``path``.

    Not thread-safe by design: every method is meant for the orchestrator's
    asyncio thread. ``record_*`` never touch the disk; ``maybe_flush`` (call it
    often) writes at most every ``flush_s`` seconds; ``close`` writes the rest.

    Raises (constructor):
        ConfigError: the file is not a usage database (corrupt), was written by
            a newer mlbridge, or with another ``bucket_s``; the message names
            the file and says how to fix it.
        ValueError: ``bucket_s`` or ``flush_s`` out of range.
    """

    def __init__(self, path: Path | str, *, bucket_s: int = 3600, flush_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        if not isinstance(bucket_s, int) or isinstance(bucket_s, bool) or bucket_s <= 0:
            raise ValueError(f"bucket_s must be a positive int, got {bucket_s!r}")
        _check_seconds("flush_s", flush_s)
        self.path = Path(path)
        self.bucket_s = bucket_s
        self.flush_s = float(flush_s)
        self._clock = clock
        # (tenant, bridge, bucket_start) -> [calls, errors, cpu_s, peak_bytes, tokens_in, tokens_out, claims]
        self._pending: dict[tuple[str, str, int], list[Any]] = {}
        self._db: sqlite3.Connection | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            self._open(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        self._last_flush = clock()

    # -- opening ------------------------------------------------------------------------
    def _open(self, db: sqlite3.Connection) -> None:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as exc:
            raise self._db_error(exc) from None
        with self._transaction(db):
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT max(version) FROM schema_version").fetchone()
            version = row[0] if row else None
            if version is not None and (not isinstance(version, int) or version > SCHEMA_VERSION):
                raise ConfigError(
                    f"usage database {self.path} has schema version {version}, newer than this mlbridge "
                    f"understands ({SCHEMA_VERSION}); run the mlbridge that wrote it, or move the file "
                    "away to start a new one")
            self._create(db)
            if version is None:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            row = db.execute("SELECT value FROM settings WHERE key = 'bucket_s'").fetchone()
            if row is None:
                db.execute("INSERT INTO settings (key, value) VALUES ('bucket_s', ?)", (str(self.bucket_s),))
            elif row[0] != str(self.bucket_s):
                raise ConfigError(
                    f"usage database {self.path} was written with bucket_s={row[0]}, not {self.bucket_s}; "
                    f"open it with bucket_s={row[0]}, or move the file away to start a new one")

    @contextlib.contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[None]:
        """One write transaction: committed, or rolled back on any error; a database error names the file."""
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            raise self._db_error(exc) from None

    @staticmethod
    def _create(db: sqlite3.Connection) -> None:
        # executescript would COMMIT the open transaction first; run the statements one by one.
        for statement in _TABLES.split(";"):
            if statement.strip():
                db.execute(statement)

    def _db_error(self, exc: sqlite3.DatabaseError) -> ConfigError:
        if isinstance(exc, sqlite3.OperationalError):
            return ConfigError(f"usage database {self.path} cannot be used: {exc}; check its permissions and "
                               "free disk space, or move the file away to start a new one")
        return ConfigError(f"usage database {self.path} is corrupt ({exc}); move the file away (the "
                           "orchestrator starts a new one) and keep it if its figures are still needed")

    # -- recording (hot path: no I/O) -----------------------------------------------------
    def _row(self, tenant: str, bridge: str) -> list[Any]:
        bucket_s = self.bucket_s
        key = (tenant, bridge, int(self._clock() // bucket_s) * bucket_s)
        row = self._pending.get(key)
        if row is None:  # first figure of this key since the last flush: check the names once
            _check_name("tenant", tenant)
            _check_name("bridge", bridge)
            row = self._pending[key] = [0, 0, 0.0, 0, 0, 0, 0]
        return row

    def record_call(self, tenant: str, bridge: str, *, ok: bool, tokens_in: int = 0, tokens_out: int = 0) -> None:
        """Count one call (and an error when not ``ok``) with the tokens it took in and gave out.

        Raises:
            TypeError, ValueError: a name that is not a 1-128 character string, or a negative
                or non-int token count; nothing is recorded then.
        """
        if tokens_in or tokens_out:
            _check_count("tokens_in", tokens_in)
            _check_count("tokens_out", tokens_out)
        row = self._row(tenant, bridge)
        row[_CALLS] += 1
        if not ok:
            row[_ERRORS] += 1
        if tokens_in:
            row[_TOKENS_IN] += tokens_in
        if tokens_out:
            row[_TOKENS_OUT] += tokens_out

    def record_cpu(self, tenant: str, bridge: str, seconds: float) -> None:
        """Add ``seconds`` of CPU time (a delta, finite and >= 0)."""
        value = _check_seconds("seconds", seconds)
        self._row(tenant, bridge)[_CPU] += value

    def record_memory(self, tenant: str, bridge: str, peak_bytes: int) -> None:
        """Note a peak memory figure; the bucket keeps the largest."""
        value = _check_count("peak_bytes", peak_bytes)
        row = self._row(tenant, bridge)
        if value > row[_PEAK]:
            row[_PEAK] = value

    def record_worker(self, tenant: str, bridge: str) -> None:
        """Count a worker claimed for the tenant."""
        self._row(tenant, bridge)[_CLAIMS] += 1

    # -- writing --------------------------------------------------------------------------
    def maybe_flush(self) -> None:
        """Write the pending figures when ``flush_s`` has passed since the last write; cheap otherwise."""
        if self._clock() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Write the pending figures now, in one transaction (kept in memory if it fails).

        Raises:
            ConfigError: the database cannot be written (corrupt, read-only, disk full).
            RuntimeError: the book is closed.
        """
        db = self._connection()
        self._last_flush = self._clock()
        if not self._pending:
            return
        rows = [(t, b, start, *figures) for (t, b, start), figures in self._pending.items()]
        with self._transaction(db):
            db.executemany(_UPSERT, rows)
        self._pending.clear()

    def close(self) -> None:
        """Flush and close; closing twice is harmless."""
        if self._db is None:
            return
        try:
            self.flush()
        finally:
            self._db.close()
            self._db = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"usage book {self.path} is closed")
        return self._db

    # -- reading --------------------------------------------------------------------------
    def query(self, tenant: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """Usage per (tenant, bridge), written and pending figures together, sorted by tenant then bridge.

        Args:
            tenant: only this tenant's rows (None: every tenant).
            since: Unix seconds; rounded *down* to the start of its bucket, so the
                rows cover whole buckets from that one on (None: since records began).

        Returns:
            Dicts with keys tenant, bridge, calls, errors, cpu_seconds (3 decimals),
            peak_memory_bytes, tokens_in, tokens_out, worker_claims, first_unix (start
            of the first bucket) and last_unix (end of the last bucket).
        """
        if tenant is not None:
            _check_name("tenant", tenant)
        floor = None if since is None else self.bucket_start(_check_since(since))
        db = self._connection()
        where: list[str] = ["1"]
        params: list[Any] = []
        if floor is not None:
            where.append("bucket_start >= ?")
            params.append(floor)
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        try:
            stored = db.execute(_SELECT.format(where=" AND ".join(where)), params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._db_error(exc) from None
        totals: dict[tuple[str, str], list[Any]] = {}
        for t, b, *figures in stored:
            totals[(t, b)] = [int(figures[0]), int(figures[1]), float(figures[2]), int(figures[3]),
                              int(figures[4]), int(figures[5]), int(figures[6]), int(figures[7]), int(figures[8])]
        for (t, b, start), row in self._pending.items():
            if (floor is not None and start < floor) or (tenant is not None and t != tenant):
                continue
            acc = totals.get((t, b))
            if acc is None:
                totals[(t, b)] = [*row, start, start]
                continue
            for i in (_CALLS, _ERRORS, _CPU, _TOKENS_IN, _TOKENS_OUT, _CLAIMS):
                acc[i] += row[i]
            acc[_PEAK] = max(acc[_PEAK], row[_PEAK])
            acc[7] = min(acc[7], start)
            acc[8] = max(acc[8], start)
        return [_row_dict(t, b, acc, self.bucket_s) for (t, b), acc in sorted(totals.items())]

    def bucket_start(self, t: float) -> int:
        """The start of the bucket holding Unix time ``t``."""
        return int(t // self.bucket_s) * self.bucket_s

    def __enter__(self) -> UsageBook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_since(since: object) -> float:
    if not isinstance(since, int | float) or isinstance(since, bool):
        raise TypeError(f"since must be a number (Unix seconds), got {type(since).__name__}")
    if not math.isfinite(since):
        raise ValueError(f"since must be finite, got {since}")
    return float(since)


def _row_dict(tenant: str, bridge: str, acc: Iterable[Any], bucket_s: int) -> dict[str, Any]:
    calls, errors, cpu, peak, tokens_in, tokens_out, claims, first, last = acc
    return {"tenant": tenant, "bridge": bridge, "calls": calls, "errors": errors,
            "cpu_seconds": round(cpu, 3), "peak_memory_bytes": peak, "tokens_in": tokens_in,
            "tokens_out": tokens_out, "worker_claims": claims, "first_unix": first, "last_unix": last + bucket_s}
