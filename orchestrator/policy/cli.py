"""``mlbridge policy ...``: check a policy file, digest a token."""

from __future__ import annotations

import argparse
import hashlib
import sys

from runtimes.wire.errors import ConfigError

from .engine import MIN_ENV_TOKEN_CHARS, load_policy

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``policy check FILE`` and ``policy hash-token`` to the top-level CLI.

    Args:
        subparsers: what ``parser.add_subparsers()`` returned.
    """
    policy = subparsers.add_parser("policy", help="check policy files and make token digests")
    commands = policy.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        help="validate a policy file",
        description="Validate a policy file; print 'ok', or every problem with file:line:column.",
    )
    check.add_argument("file", metavar="FILE", help="the policy YAML file")
    check.add_argument(
        "--resolve-secrets",
        action="store_true",
        help="also read every {env: ...} and {file: ...} secret, as the orchestrator would",
    )
    check.set_defaults(func=check_handler)
    hash_token = commands.add_parser(
        "hash-token",
        help="print the sha256 digest of a token read from stdin",
        description=(
            "Read one token from stdin (never from the command line, where it would reach "
            "shell history and `ps`) and print the 'sha256:<hex>' line for a policy's tokens."
        ),
    )
    hash_token.set_defaults(func=hash_token_handler)


def check_handler(args: argparse.Namespace) -> int:
    """Run ``policy check``: exit 0 and print ``ok``, or print every problem and exit 1."""
    try:
        policy = load_policy(args.file)
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    if args.resolve_secrets:
        problems = policy.check_secrets()
        if problems:
            for problem in problems:
                print(f"{args.file}: {problem}", file=sys.stderr)
            return 1
    print("ok")
    return 0


def hash_token_handler(args: argparse.Namespace) -> int:
    """Run ``policy hash-token``: print ``sha256:<hex>`` of the first line of stdin."""
    token = sys.stdin.readline().rstrip("\r\n")
    if len(token) < MIN_ENV_TOKEN_CHARS:
        print(
            f"error: give a token of at least {MIN_ENV_TOKEN_CHARS} characters on stdin",
            file=sys.stderr,
        )
        return 2
    print("sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest())
    return 0
