"""UsageBook: per-tenant usage counters in SQLite (real files in tmp_path)."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest

from orchestrator.usage import SCHEMA_VERSION, UsageBook
from runtimes.wire.errors import ConfigError

T0 = 1_800_000_000.0  # a bucket boundary: 1_800_000_000 % 3600 == 0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def book(path: Path, clock: Clock, **kw: object) -> UsageBook:
    return UsageBook(path / "usage.sqlite", clock=clock, **kw)  # type: ignore[arg-type]


def stored_rows(path: Path) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path / "usage.sqlite")
    try:
        return db.execute("SELECT tenant, bridge, bucket_start, calls FROM usage ORDER BY 1, 2, 3").fetchall()
    finally:
        db.close()


def test_accumulates_every_figure(tmp_path: Path) -> None:
    clock = Clock(T0 + 10)
    with book(tmp_path, clock) as b:
        b.record_call("acme", "mock", ok=True, tokens_in=5, tokens_out=7)
        b.record_call("acme", "mock", ok=False, tokens_in=1)
        b.record_call("acme", "mock", ok=True)
        b.record_cpu("acme", "mock", 1.25)
        b.record_cpu("acme", "mock", 0.0006)
        b.record_memory("acme", "mock", 100)
        b.record_worker("acme", "mock")
        b.record_worker("acme", "mock")
        assert b.query() == [{
            "tenant": "acme", "bridge": "mock", "calls": 3, "errors": 1, "cpu_seconds": 1.251,
            "peak_memory_bytes": 100, "tokens_in": 6, "tokens_out": 7, "worker_claims": 2,
            "first_unix": int(T0), "last_unix": int(T0) + 3600}]


def test_rows_sorted_by_tenant_then_bridge_and_tenant_filter(tmp_path: Path) -> None:
    with book(tmp_path, Clock()) as b:
        for tenant, bridge in [("zed", "a"), ("acme", "mock"), ("acme", "custom"), ("bob", "mock")]:
            b.record_call(tenant, bridge, ok=True)
        assert [(r["tenant"], r["bridge"]) for r in b.query()] == [
            ("acme", "custom"), ("acme", "mock"), ("bob", "mock"), ("zed", "a")]
        b.flush()
        b.record_call("acme", "mock", ok=True)
        assert [(r["tenant"], r["bridge"], r["calls"]) for r in b.query(tenant="acme")] == [
            ("acme", "custom", 1), ("acme", "mock", 2)]
        assert b.query(tenant="nobody") == []


def test_buckets_round_down_and_span_first_to_last(tmp_path: Path) -> None:
    clock = Clock(T0 + 3599.9)
    with book(tmp_path, clock) as b:
        b.record_call("acme", "mock", ok=True)
        clock.t = T0 + 3600  # the next bucket starts exactly here
        b.record_call("acme", "mock", ok=True)
        clock.t = T0 + 5 * 3600 + 1
        b.record_call("acme", "mock", ok=True)
        b.flush()
        assert stored_rows(tmp_path) == [("acme", "mock", int(T0), 1), ("acme", "mock", int(T0) + 3600, 1),
                                         ("acme", "mock", int(T0) + 5 * 3600, 1)]
        row = b.query()[0]
        assert (row["calls"], row["first_unix"], row["last_unix"]) == (3, int(T0), int(T0) + 6 * 3600)


def test_custom_bucket_size(tmp_path: Path) -> None:
    clock = Clock(T0 + 125)
    with book(tmp_path, clock, bucket_s=60) as b:
        b.record_call("acme", "mock", ok=True)
        assert b.bucket_start(T0 + 125) == int(T0) + 120
        row = b.query()[0]
        assert (row["first_unix"], row["last_unix"]) == (int(T0) + 120, int(T0) + 180)


def test_since_is_rounded_down_to_its_bucket(tmp_path: Path) -> None:
    clock = Clock(T0)
    with book(tmp_path, clock) as b:
        b.record_call("acme", "mock", ok=True)  # bucket T0
        clock.t = T0 + 3600 + 30
        b.record_call("acme", "mock", ok=True)  # bucket T0+3600
        b.flush()
        clock.t = T0 + 2 * 3600 + 30
        b.record_call("acme", "mock", ok=False)  # bucket T0+7200, still pending
        assert b.query(since=None)[0]["calls"] == 3
        assert b.query(since=T0 - 1)[0]["calls"] == 3
        # mid-bucket: the whole bucket T0+3600 counts
        row = b.query(since=T0 + 3600 + 3000)[0]
        assert (row["calls"], row["errors"], row["first_unix"]) == (2, 1, int(T0) + 3600)
        row = b.query(since=T0 + 2 * 3600)[0]
        assert (row["calls"], row["first_unix"], row["last_unix"]) == (1, int(T0) + 7200, int(T0) + 3 * 3600)
        assert b.query(since=T0 + 10 * 3600) == []
        assert b.query(tenant="acme", since=T0 + 3600)[0]["calls"] == 2


def test_unflushed_figures_are_visible_and_merge_with_stored_ones(tmp_path: Path) -> None:
    clock = Clock()
    with book(tmp_path, clock, flush_s=5.0) as b:
        b.record_call("acme", "mock", ok=True, tokens_out=3)
        b.record_cpu("acme", "mock", 0.5)
        b.maybe_flush()  # too soon: nothing written
        assert stored_rows(tmp_path) == []
        assert b.query()[0]["calls"] == 1
        clock.t += 5
        b.maybe_flush()
        assert stored_rows(tmp_path) == [("acme", "mock", int(T0), 1)]
        b.record_call("acme", "mock", ok=True, tokens_out=4)
        b.record_cpu("acme", "mock", 0.25)
        row = b.query()[0]
        assert (row["calls"], row["tokens_out"], row["cpu_seconds"]) == (2, 7, 0.75)


def test_flush_adds_counters_and_keeps_the_max_peak_memory(tmp_path: Path) -> None:
    clock = Clock()
    with book(tmp_path, clock) as b:
        b.record_memory("acme", "mock", 500)
        b.record_memory("acme", "mock", 200)  # lower: the bucket keeps 500
        b.record_worker("acme", "mock")
        assert b.query()[0]["peak_memory_bytes"] == 500
        b.flush()
        b.record_memory("acme", "mock", 300)  # pending, lower than stored
        b.record_worker("acme", "mock")
        assert b.query()[0]["peak_memory_bytes"] == 500
        b.flush()
        b.record_memory("acme", "mock", 900)
        assert b.query()[0]["peak_memory_bytes"] == 900
        b.flush()
        clock.t += 3600
        b.record_memory("acme", "mock", 10)  # another bucket: the row's figure is the max over buckets
        row = b.query()[0]
        assert (row["peak_memory_bytes"], row["worker_claims"]) == (900, 2)


def test_figures_survive_close_and_reopen(tmp_path: Path) -> None:
    clock = Clock(T0 + 42)
    b = book(tmp_path, clock)
    b.record_call("acme", "mock", ok=False, tokens_in=10, tokens_out=20)
    b.record_cpu("acme", "mock", 2.5)
    b.record_memory("acme", "mock", 1 << 30)
    b.record_worker("acme", "mock")
    b.close()  # flushes
    b.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        b.query()
    with book(tmp_path, clock) as again:
        again.record_call("acme", "mock", ok=True, tokens_in=1)
        again.record_memory("acme", "mock", 5)
        assert again.query() == [{
            "tenant": "acme", "bridge": "mock", "calls": 2, "errors": 1, "cpu_seconds": 2.5,
            "peak_memory_bytes": 1 << 30, "tokens_in": 11, "tokens_out": 20, "worker_claims": 1,
            "first_unix": int(T0), "last_unix": int(T0) + 3600}]
    with book(tmp_path, clock) as third:
        assert third.query()[0]["calls"] == 2
    db = sqlite3.connect(tmp_path / "usage.sqlite")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        db.close()


def test_creates_the_parent_directory(tmp_path: Path) -> None:
    with UsageBook(tmp_path / "state" / "deeper" / "usage.sqlite") as b:
        b.record_call("acme", "mock", ok=True)
    assert (tmp_path / "state" / "deeper" / "usage.sqlite").exists()


@pytest.mark.parametrize("call", [
    lambda b: b.record_call("acme", "mock", ok=True, tokens_in=-1),
    lambda b: b.record_call("acme", "mock", ok=True, tokens_out=-5),
    lambda b: b.record_cpu("acme", "mock", -0.1),
    lambda b: b.record_cpu("acme", "mock", math.nan),
    lambda b: b.record_cpu("acme", "mock", math.inf),
    lambda b: b.record_memory("acme", "mock", -1),
    lambda b: b.record_call("", "mock", ok=True),
    lambda b: b.record_call("acme", "", ok=True),
    lambda b: b.record_call("t" * 129, "mock", ok=True),
    lambda b: b.record_worker("acme", "b" * 129),
    lambda b: b.query(since=math.nan),
    lambda b: b.query(since=math.inf),
], ids=["tokens_in<0", "tokens_out<0", "cpu<0", "cpu-nan", "cpu-inf", "memory<0", "empty-tenant",
        "empty-bridge", "long-tenant", "long-bridge", "since-nan", "since-inf"])
def test_bad_figures_are_refused_with_value_error(tmp_path: Path, call: object) -> None:
    with book(tmp_path, Clock()) as b:
        with pytest.raises(ValueError):
            call(b)  # type: ignore[operator]
        assert b.query() == []  # nothing half-recorded


@pytest.mark.parametrize("call", [
    lambda b: b.record_call("acme", "mock", ok=True, tokens_in=1.5),
    lambda b: b.record_memory("acme", "mock", 1.0),
    lambda b: b.record_cpu("acme", "mock", "1"),
    lambda b: b.record_call(3, "mock", ok=True),
    lambda b: b.record_worker("acme", None),
])
def test_wrong_types_are_refused_with_type_error(tmp_path: Path, call: object) -> None:
    with book(tmp_path, Clock()) as b:
        with pytest.raises(TypeError):
            call(b)  # type: ignore[operator]
        assert b.query() == []


def test_names_up_to_128_characters_are_fine(tmp_path: Path) -> None:
    with book(tmp_path, Clock()) as b:
        b.record_call("t" * 128, "b" * 128, ok=True)
        assert b.query()[0]["tenant"] == "t" * 128


def test_bad_settings(tmp_path: Path) -> None:
    for kw in ({"bucket_s": 0}, {"bucket_s": -60}, {"bucket_s": 1.5}, {"flush_s": -1.0}, {"flush_s": math.nan}):
        with pytest.raises((ValueError, TypeError)):
            book(tmp_path, Clock(), **kw)


def test_a_file_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    book(tmp_path, Clock()).close()
    db = sqlite3.connect(tmp_path / "usage.sqlite")
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(ConfigError) as err:
        book(tmp_path, Clock())
    message = str(err.value)
    assert str(tmp_path / "usage.sqlite") in message
    assert f"schema version {SCHEMA_VERSION + 1}" in message and "newer" in message
    assert "move the file away" in message


def test_a_different_bucket_size_is_refused(tmp_path: Path) -> None:
    book(tmp_path, Clock()).close()
    with pytest.raises(ConfigError, match="bucket_s=3600, not 60"):
        book(tmp_path, Clock(), bucket_s=60)


def test_a_corrupt_file_names_itself_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "usage.sqlite").write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(ConfigError) as err:
        book(tmp_path, Clock())
    message = str(err.value)
    assert str(tmp_path / "usage.sqlite") in message
    assert "corrupt" in message and "move the file away" in message
