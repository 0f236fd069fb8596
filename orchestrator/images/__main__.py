"""``python -m orchestrator.images {build,list,lock}``: the image commands on their own."""

from __future__ import annotations

import argparse
import sys

from .cli import add_commands


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen image command."""
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.images", description="mlbridge worker images"
    )
    add_commands(parser.add_subparsers(dest="images_command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
