"""``mlbridge images ...``: build, list, lock, and roll back worker images.

:func:`register` adds the ``images`` command to the main ``mlbridge`` parser;
``python -m orchestrator.images`` offers the same sub-commands on their own.
Every handler takes the parsed ``args`` and returns an exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from runtimes.wire.errors import MLBridgeError

from ._build import build_images
from ._docker import docker_client
from ._inventory import list_images
from ._lock import write_lock
from ._paths import check_bridge, known_bridges, recipe_dir, source_dir, tag_for
from ._record import HistoryEntry, image_history, keep_history, keep_tag, rollback_image


def register(subparsers: Any) -> None:
    """Add ``images`` with ``build``, ``list``, ``lock``, ``history`` and ``rollback`` to a subparsers object.

    Args:
        subparsers: the result of ``ArgumentParser.add_subparsers()``.
    """
    parser = subparsers.add_parser(
        "images", help="build and list mlbridge worker images", description=__doc__
    )
    add_commands(parser.add_subparsers(dest="images_command", required=True, metavar="COMMAND"))


def add_commands(subparsers: Any) -> None:
    """Add the ``build``, ``list``, ``lock``, ``history`` and ``rollback`` sub-commands to ``subparsers``."""
    build = subparsers.add_parser(
        "build",
        help="build images (all bridges by default)",
        description="Build the root filesystem, the base image and bridge images "
        "without network; reuse what is unchanged.",
    )
    build.add_argument("bridges", nargs="*", metavar="BRIDGE", help="bridges to build")
    build.add_argument(
        "--rebuild", action="store_true", help="rebuild the root filesystem and skip all caches"
    )
    build.add_argument(
        "--offline",
        action="store_true",
        help="use only the cached root filesystem and wheelhouse; fail instead of downloading",
    )
    build.set_defaults(func=cmd_build)

    listing = subparsers.add_parser("list", help="list images and whether they match the record")
    listing.set_defaults(func=cmd_list)

    lock = subparsers.add_parser(
        "lock",
        help="regenerate images/<bridge>/requirements.lock (needs PyPI access)",
        description="Resolve images/<BRIDGE>/requirements.in to wheels for this "
        "interpreter and write a hash-locked requirements.lock next to it.",
    )
    lock.add_argument("bridges", nargs="+", metavar="BRIDGE", help="'base' or a bridge name")
    lock.set_defaults(func=cmd_lock)

    history = subparsers.add_parser(
        "history",
        help="image ids a bridge's tag has held, newest first",
        description="List the builds (and rollbacks) recorded for a bridge's image, newest "
        "first; * marks the current one.",
    )
    history.add_argument("bridge", metavar="BRIDGE", help="bridge name or full tag")
    history.set_defaults(func=cmd_history)

    rollback = subparsers.add_parser(
        "rollback",
        help="point a bridge's tag back at an earlier build",
        description="Retag a bridge's image to an earlier build's image id (by default the "
        "previous one) and record it, so workers start from it.",
    )
    rollback.add_argument("bridge", metavar="BRIDGE", help="bridge name or full tag")
    rollback.add_argument(
        "--to", metavar="ID", help="image id (or a unique prefix) from `images history`"
    )
    rollback.set_defaults(func=cmd_rollback)


def _fail(exc: MLBridgeError) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def cmd_build(args: argparse.Namespace) -> int:
    """``images build [BRIDGE...] [--rebuild]``."""
    try:
        client = docker_client()
        built = build_images(
            args.bridges or None,
            progress=_say,
            rebuild=args.rebuild,
            offline=args.offline,
            client=client,
        )
        keep_history(client)
    except MLBridgeError as exc:
        return _fail(exc)
    for image in built.values():
        state = "cached" if image.cached else f"built in {image.seconds:.1f}s"
        report = json.loads(image.vuln_report_path.read_text(encoding="utf-8"))
        if report["status"] == "checked":
            vulns = f"{len(report['vulnerabilities'])} known"
        else:
            vulns = "not checked, see report"
        _say(f"{image.tag} {image.image_id[:19]} ({state})")
        _say(f"  sbom: {image.sbom_path}")
        _say(f"  vulnerabilities ({vulns}): {image.vuln_report_path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``images list``: one row per tag."""
    try:
        rows = list_images()
    except MLBridgeError as exc:
        return _fail(exc)
    table = [("TAG", "IMAGE ID", "BRIDGE", "FRAMEWORK", "PYTHON", "LOCK", "MATCHES RECORD")]
    for row in rows:
        if not row.image_id:
            match = "missing"
        elif row.recorded_id is None:
            match = "unrecorded"
        else:
            match = "yes" if row.matches else "NO"
        framework = f"{row.framework} {row.framework_version}".strip()
        table.append(
            (
                row.tag,
                row.image_id.removeprefix("sha256:")[:12] or "-",
                row.bridge,
                framework or "-",
                row.python_version or "-",
                row.lock_sha256[:12] or "-",
                match,
            )
        )
    _print_table(table)
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    """``images lock BRIDGE...``: regenerate lock files."""
    try:
        for name in args.bridges:
            if name not in ("base", "orchestrator") and name not in known_bridges():
                check_bridge(name)
            path = write_lock(
                recipe_dir(name), command=f"python -m orchestrator.images lock {name}"
            )
            _say(f"wrote {path.relative_to(source_dir())}")
    except MLBridgeError as exc:
        return _fail(exc)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """``images history BRIDGE``: one row per recorded id, newest first."""
    tag = tag_for(args.bridge)
    try:
        entries = image_history(tag)
        present = _present_ids(entries)
    except MLBridgeError as exc:
        return _fail(exc)
    if not entries:
        print(f"error: no build of {tag} on record", file=sys.stderr)
        return 1
    table = [("", "IMAGE ID", "RECORDED", "ACTION", "RECIPE", "LOCK", "IN ENGINE AS")]
    for e in entries:
        where = (tag if e.current else keep_tag(tag, e.image_id)) if e.image_id in present else "gone"
        table.append(
            (
                "*" if e.current else "",
                e.image_id.removeprefix("sha256:")[:12],
                e.recorded_at,
                e.action,
                e.recipe_sha256[:12] or "-",
                e.lock_sha256[:12] or "-",
                where,
            )
        )
    _print_table(table)
    return 0


def _present_ids(entries: list[HistoryEntry]) -> set[str]:
    import docker.errors

    client = docker_client()
    present = set()
    for e in entries:
        try:
            client.images.get(e.image_id)
        except docker.errors.ImageNotFound:
            continue
        present.add(e.image_id)
    return present


def cmd_rollback(args: argparse.Namespace) -> int:
    """``images rollback BRIDGE [--to ID]``: retag to an earlier build and record it."""
    tag = tag_for(args.bridge)
    try:
        target = rollback_image(docker_client(), tag, to=args.to)
    except MLBridgeError as exc:
        return _fail(exc)
    _say(
        f"{tag} now {target.image_id[:19]} ({target.action} of {target.recorded_at}); "
        "workers started from now on use it (running ones keep theirs)"
    )
    return 0


def _print_table(table: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        _say("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def _say(line: str) -> None:
    print(line, flush=True)
