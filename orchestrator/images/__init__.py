"""Hermetic, pinned worker images for mlbridge.

No image registry is needed: the root filesystem is built from the host's
Debian sources (or taken from ``MLBRIDGE_BASE_IMAGE``), wheels come from a
host wheelhouse checked against hash-locked requirement files, and builds run
with no network. Every image is labelled, recorded by id, and gets an SBOM
and a vulnerability report.

Typical use::

    from orchestrator.images import build_images, verify_image

    built = build_images(["mock"])
    image_id = verify_image(docker_client, "mlbridge/mock:0.1.0")
"""

from __future__ import annotations

from ._build import BuiltImage, build_images, image_labels
from ._docker import docker_client
from ._inventory import ImageInfo, list_images
from ._lock import LockedPackage, lock_sha256, parse_lock, read_lock
from ._paths import IMAGE_VERSION, image_tag, known_bridges, state_dir
from ._record import (
    HistoryEntry,
    check_image_id,
    image_history,
    recorded_image_id,
    records_path,
    rollback_image,
    verify_image,
)
from ._sbom import make_sbom
from ._vuln import vulnerability_report

__all__ = [
    "IMAGE_VERSION",
    "BuiltImage",
    "HistoryEntry",
    "ImageInfo",
    "LockedPackage",
    "build_images",
    "check_image_id",
    "docker_client",
    "image_history",
    "image_labels",
    "image_tag",
    "known_bridges",
    "list_images",
    "lock_sha256",
    "make_sbom",
    "parse_lock",
    "read_lock",
    "recorded_image_id",
    "records_path",
    "rollback_image",
    "state_dir",
    "verify_image",
    "vulnerability_report",
]
