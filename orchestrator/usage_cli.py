"""``mlbridge usage``: per-tenant usage (calls, errors, CPU, memory, tokens, worker claims) from the orchestrator."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

__all__ = ["cmd_usage", "parse_since", "print_usage", "register"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_UNIX = re.compile(r"\d+(?:\.\d+)?")
SINCE_FORMS = ("a duration back from now (90m, 24h, 7d), an ISO date or datetime (2026-11-30, "
               "2026-11-30T12:00; UTC unless it names a zone) or Unix seconds")
HEADER = ["TENANT", "BRIDGE", "CALLS", "ERRORS", "CPU-S", "PEAK-MEM", "TOKENS-IN", "TOKENS-OUT", "CLAIMS"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``usage [--tenant T] [--since SINCE] [--json]`` to the top-level CLI."""
    s = subparsers.add_parser(
        "usage", help="usage per tenant and bridge: calls, errors, CPU, memory, tokens, worker claims",
        description="Usage the orchestrator recorded, per tenant and bridge, summed over whole buckets "
                    "(an hour by default; --since rounds down to the start of its bucket).")
    s.add_argument("--tenant", default="", help="only this tenant (default: every tenant you may see)")
    s.add_argument("--since", metavar="SINCE", help=f"from when: {SINCE_FORMS} (default: since records began)")
    s.add_argument("--json", action="store_true", help="print the rows as JSON")
    s.set_defaults(func=cmd_usage)


def parse_since(text: str, now: float | None = None) -> float:
    """``text`` as Unix seconds: ``90m``/``24h``/``7d`` (before ``now``), an ISO date/datetime, or Unix seconds.

    Raises:
        orchestrator.cli.UsageError: none of those (the command exits with code 2).
    """
    from .cli import UsageError  # imported here: cli loads this module

    value = text.strip()
    result: float | None = None
    if m := _DURATION.fullmatch(value):
        result = (time.time() if now is None else now) - float(m.group(1)) * _UNIT_S[m.group(2)]
    elif _UNIX.fullmatch(value):
        result = float(value)
    else:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            result = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if result is None or not math.isfinite(result) or result < 0:
        raise UsageError(f"--since {text!r}: expected {SINCE_FORMS}")
    try:
        datetime.fromtimestamp(result, UTC)
    except (OverflowError, OSError, ValueError):
        raise UsageError(f"--since {text!r} is out of range") from None
    return result


def cmd_usage(args: argparse.Namespace) -> int:
    """Run ``mlbridge usage``: 0, 1 (the server keeps no usage) or 2 (a bad --since)."""
    from .cli import UsageError, _client

    try:
        since = parse_since(args.since) if args.since else None
    except UsageError as err:  # said here too, so `python -m orchestrator.cli` (another UsageError class) agrees
        print(f"error: {err}", file=sys.stderr)
        return 2
    with _client(args) as mb:
        stats = mb.stats(usage_tenant=args.tenant or "", usage_since=since)
    return print_usage(stats, args.json)


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _bytes(n: Any) -> str:
    size = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _span(seconds: int) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % n == 0:
            return f"{seconds // n}{unit}"
    return f"{seconds}s"


def print_usage(stats: dict[str, Any], json_out: bool) -> int:
    """Print ``stats["usage"]`` as a table (or its rows as JSON); the exit code.

    Returns:
        0, or 1 when the orchestrator keeps no usage (a server from before usage accounting).
    """
    usage = stats.get("usage")
    if not isinstance(usage, dict):
        print("error: this orchestrator does not keep usage (an older server); upgrade it to see usage",
              file=sys.stderr)
        return 1
    rows: list[dict[str, Any]] = list(usage.get("rows") or [])
    if json_out:
        print(json.dumps(rows, indent=2))
        return 0
    from .cli import _table

    bucket_s = int(usage.get("bucket_s") or 3600)
    since = usage.get("since_unix")
    if since is None:
        start = "since records began"
    else:
        start = f"since {_utc(float(since) // bucket_s * bucket_s)} (rounded down to a {_span(bucket_s)} bucket)"
    print(f"usage {start} until now" + (f"; recorded {_utc(min(r['first_unix'] for r in rows))} to "
                                        f"{_utc(max(r['last_unix'] for r in rows))}" if rows else ""))
    print()
    if not rows:
        print("(no usage recorded in this period)")
        return 0
    print(_table([[r.get("tenant", ""), r.get("bridge", ""), r.get("calls", 0), r.get("errors", 0),
                   f"{float(r.get('cpu_seconds') or 0):.3f}", _bytes(r.get("peak_memory_bytes")),
                   r.get("tokens_in", 0), r.get("tokens_out", 0), r.get("worker_claims", 0)] for r in rows],
                 HEADER))
    return 0
