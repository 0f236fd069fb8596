"""``mlbridge usage``: --since parsing, the table and JSON output, the client's request fields."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from orchestrator import cli, usage_cli
from orchestrator.cli import UsageError
from orchestrator.client import _common
from orchestrator.usage_cli import parse_since, print_usage
from runtimes.wire.errors import InvalidArgument

NOW = 1_800_000_000.0


def _utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[arg-type, misc]


@pytest.mark.parametrize(("text", "expected"), [
    ("90m", NOW - 90 * 60),
    ("24h", NOW - 24 * 3600),
    ("7d", NOW - 7 * 86400),
    ("30s", NOW - 30),
    ("2w", NOW - 14 * 86400),
    ("1.5h", NOW - 5400),
    ("2026-11-30", _utc(2026, 11, 30)),
    ("2026-11-30T12:00", _utc(2026, 11, 30, 12, 0)),
    ("2026-11-30T12:00:30", _utc(2026, 11, 30, 12, 0, 30)),
    ("2026-11-30 12:00", _utc(2026, 11, 30, 12, 0)),
    ("2026-11-30T12:00Z", _utc(2026, 11, 30, 12, 0)),
    ("2026-11-30T12:00+02:00", _utc(2026, 11, 30, 10, 0)),
    ("1764460800", 1764460800.0),
    ("1764460800.5", 1764460800.5),
    (" 24h ", NOW - 24 * 3600),
])
def test_parse_since_forms(text: str, expected: float) -> None:
    assert parse_since(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "-5", "-1h", "5x", "h", "2026-13-01", "2026-11-30T25:00",
                                  "1e9", "nan", "inf", "99999999999999999999"])
def test_parse_since_refuses_bad_values(text: str) -> None:
    with pytest.raises(UsageError, match="--since"):
        parse_since(text, now=NOW)


def test_bad_since_exits_2_with_a_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    # fails before connecting: no server needed
    assert cli.main(["--address", "127.0.0.1:1", "usage", "--since", "last tuesday"]) == 2
    err = capsys.readouterr().err
    assert "--since 'last tuesday'" in err and "90m" in err and "2026-11-30" in err


def test_the_cli_registers_usage() -> None:
    args = cli.build_parser().parse_args(["usage", "--tenant", "acme", "--since", "24h", "--json"])
    assert (args.func, args.tenant, args.since, args.json) == (usage_cli.cmd_usage, "acme", "24h", True)


ROWS = [
    {"tenant": "acme", "bridge": "mock", "calls": 12, "errors": 1, "cpu_seconds": 3.5,
     "peak_memory_bytes": 3 * 1024 * 1024, "tokens_in": 100, "tokens_out": 250, "worker_claims": 2,
     "first_unix": 1764460800, "last_unix": 1764468000},
    {"tenant": "bob", "bridge": "transformers", "calls": 1, "errors": 0, "cpu_seconds": 0.125,
     "peak_memory_bytes": 512, "tokens_in": 0, "tokens_out": 0, "worker_claims": 1,
     "first_unix": 1764464400, "last_unix": 1764468000},
]


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    stats = {"usage": {"since_unix": 1764460800.0 + 1800, "bucket_s": 3600, "rows": ROWS}}
    assert print_usage(stats, json_out=False) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("usage since 2025-11-30 00:00 UTC (rounded down to a 1h bucket)")
    assert "2025-11-30 00:00 UTC to 2025-11-30 02:00 UTC" in lines[0]
    assert lines[2].split() == ["TENANT", "BRIDGE", "CALLS", "ERRORS", "CPU-S", "PEAK-MEM", "TOKENS-IN",
                                "TOKENS-OUT", "CLAIMS"]
    assert lines[3].split() == ["acme", "mock", "12", "1", "3.500", "3.0", "MiB", "100", "250", "2"]
    assert lines[4].split() == ["bob", "transformers", "1", "0", "0.125", "512", "B", "0", "0", "1"]


def test_table_since_records_began_and_no_rows(capsys: pytest.CaptureFixture[str]) -> None:
    assert print_usage({"usage": {"since_unix": None, "bucket_s": 3600, "rows": []}}, json_out=False) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage since records began until now\n")
    assert "(no usage recorded in this period)" in out


def test_json_output_is_the_rows(capsys: pytest.CaptureFixture[str]) -> None:
    assert print_usage({"usage": {"since_unix": None, "bucket_s": 3600, "rows": ROWS}}, json_out=True) == 0
    assert json.loads(capsys.readouterr().out) == ROWS


def test_an_older_server_without_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert print_usage({"orchestrator_id": "x", "workers": []}, json_out=False) == 1
    assert "does not keep usage" in capsys.readouterr().err


class FakeClient:
    def __init__(self, stats: dict[str, Any]) -> None:
        self.result = stats
        self.asked: list[tuple[str, float | None]] = []

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def stats(self, usage_tenant: str = "", usage_since: float | None = None) -> dict[str, Any]:
        self.asked.append((usage_tenant, usage_since))
        return self.result


def test_cmd_usage_asks_the_client(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeClient({"usage": {"since_unix": None, "bucket_s": 3600, "rows": ROWS}})
    monkeypatch.setattr(cli, "_client", lambda args: fake)
    args = argparse.Namespace(tenant="acme", since="2026-11-30", json=True)
    assert usage_cli.cmd_usage(args) == 0
    assert fake.asked == [("acme", _utc(2026, 11, 30))]
    assert json.loads(capsys.readouterr().out) == ROWS
    args = argparse.Namespace(tenant="", since=None, json=False)
    assert usage_cli.cmd_usage(args) == 0
    assert fake.asked[-1] == ("", None)


def test_stats_request_fields() -> None:
    req = _common.stats_request()
    assert (req.usage_tenant, req.usage_since_unix_ms) == ("", 0)
    req = _common.stats_request("acme", 1764460800.1234)
    assert (req.usage_tenant, req.usage_since_unix_ms) == ("acme", 1764460800123)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidArgument):
            _common.stats_request("", bad)
