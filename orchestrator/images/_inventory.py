"""What mlbridge images the engine holds, and whether each matches the record."""

from __future__ import annotations

from dataclasses import dataclass

import docker
import docker.errors

from ._paths import IMAGE_REPO, LABEL_PREFIX, bridge_of
from ._record import is_keep_tag, load_records


@dataclass(frozen=True)
class ImageInfo:
    """One mlbridge image tag as the engine and the record see it.

    Attributes:
        tag: e.g. ``mlbridge/mock:0.1.0``.
        image_id: id the engine has under the tag; ``""`` if the tag is gone.
        bridge: ``io.mlbridge.bridge`` label (or the tag's name if unlabelled).
        framework: ``io.mlbridge.framework`` label.
        framework_version: ``io.mlbridge.framework-version`` label.
        python_version: ``io.mlbridge.python-version`` label.
        lock_sha256: ``io.mlbridge.lock-sha256`` label.
        recorded_id: id mlbridge recorded for the tag, or None.
    """

    tag: str
    image_id: str
    bridge: str
    framework: str
    framework_version: str
    python_version: str
    lock_sha256: str
    recorded_id: str | None

    @property
    def matches(self) -> bool:
        """True when the engine's image is the one mlbridge built and recorded."""
        return bool(self.image_id) and self.image_id == self.recorded_id


def list_images(client: docker.DockerClient | None = None) -> list[ImageInfo]:
    """Every ``mlbridge/*`` tag in the engine plus every recorded tag, sorted by tag.

    Keep tags (``mlbridge/mock:0.1.0-3f2a9c1b7e4d``, see :func:`keep_tag`) are
    left out: they are the tag's history, which ``images history`` lists.

    Args:
        client: Docker SDK client; a new one from the environment by default.

    Raises:
        Unavailable: no Docker engine answers.
    """
    if client is None:
        from ._docker import docker_client

        client = docker_client()
    records = load_records()
    rows: dict[str, ImageInfo] = {}
    for image in client.images.list(name=f"{IMAGE_REPO}/*"):
        labels = image.labels or {}
        for tag in image.tags:
            if not tag.startswith(f"{IMAGE_REPO}/") or is_keep_tag(tag):
                continue  # keep tags hold history ids alive; `images history` shows them
            rows[tag] = ImageInfo(
                tag=tag,
                image_id=image.id or "",
                bridge=labels.get(f"{LABEL_PREFIX}bridge", bridge_of(tag)),
                framework=labels.get(f"{LABEL_PREFIX}framework", ""),
                framework_version=labels.get(f"{LABEL_PREFIX}framework-version", ""),
                python_version=labels.get(f"{LABEL_PREFIX}python-version", ""),
                lock_sha256=labels.get(f"{LABEL_PREFIX}lock-sha256", ""),
                recorded_id=(records.get(tag) or {}).get("image_id"),
            )
    for tag, entry in records.items():
        if tag not in rows:
            rows[tag] = ImageInfo(
                tag=tag,
                image_id="",
                bridge=str(entry.get("bridge", bridge_of(tag))),
                framework="",
                framework_version="",
                python_version="",
                lock_sha256=str(entry.get("lock_sha256", "")),
                recorded_id=str(entry["image_id"]),
            )
    return [rows[t] for t in sorted(rows)]
