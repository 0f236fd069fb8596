"""``mlbridge audit ...``: check an audit log's hash chain."""

from __future__ import annotations

import argparse
import sys

from runtimes.wire.errors import ConfigError

from .audit import verify_file

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit verify FILE`` to the top-level CLI.

    Args:
        subparsers: what ``parser.add_subparsers()`` returned.
    """
    audit = subparsers.add_parser("audit", help="inspect the audit log")
    commands = audit.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    verify = commands.add_parser(
        "verify",
        help="check every record's hash chain",
        description=(
            "Check every record of an audit log. Exit 0: intact; 1: broken (the first bad "
            "line is named); 2: the file cannot be read. Uses MLBRIDGE_AUDIT_KEY when set. "
            "Records cut off the end leave a valid chain: pass --expect-records/--expect-head "
            "from a copy of an earlier head kept elsewhere to catch that."
        ),
    )
    verify.add_argument("file", metavar="FILE", help="the audit log (JSON lines)")
    verify.add_argument(
        "--expect-records", type=int, metavar="N", help="at least N records must be present"
    )
    verify.add_argument("--expect-head", metavar="HASH", help="record N must carry this hash")
    verify.set_defaults(func=verify_handler)


def verify_handler(args: argparse.Namespace) -> int:
    """Run ``audit verify``; prints ``ok: N records`` or ``broken at record K (line K): reason``."""
    if args.expect_head is not None and args.expect_records is None:
        print("error: --expect-head needs --expect-records", file=sys.stderr)
        return 2
    try:
        result = verify_file(
            args.file, expect_records=args.expect_records, expect_head=args.expect_head
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.ok:
        print(f"ok: {result.records} records")
        if result.records:
            print(f"head: {result.head}")
        return 0
    print(f"broken at record {result.first_bad} (line {result.first_bad}): {result.reason}")
    return 1
