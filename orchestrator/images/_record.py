"""The record of what mlbridge built, and the check against it.

Every image id mlbridge builds is written to ``images.json`` in the state dir.
Before a container starts, :func:`verify_image` compares the id the engine
has under a tag with the recorded one, so an image retagged, rebuilt or
replaced behind mlbridge's back is refused rather than run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors

from runtimes.wire.errors import ConfigError, ImageMismatch, Unavailable

from ._paths import bridge_of, state_dir, tag_for

_SCHEMA = 1


def records_path(state: Path | None = None) -> Path:
    """``<state dir>/images.json`` (``state`` overrides the default state dir)."""
    return (state or state_dir()) / "images.json"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_records(state: Path | None = None) -> dict[str, dict[str, Any]]:
    """All records, keyed by tag. A missing file is no records.

    Args:
        state: state dir to read; the default state dir when None.

    Raises:
        ConfigError: the file exists but is not an mlbridge image record.
    """
    path = records_path(state)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ConfigError(
            f"{path} is not valid JSON ({exc}); rebuild with `mlbridge images build`"
        ) from exc
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, dict):
        raise ConfigError(
            f"{path} is not an mlbridge image record; rebuild with `mlbridge images build`"
        )
    return images


def record_image(tag: str, image_id: str, *, labels: dict[str, str]) -> None:
    """Record ``image_id`` as the image mlbridge built for ``tag``."""
    path = records_path()
    with _locked(path):
        images = load_records()
        images[tag] = {
            "image_id": image_id,
            "bridge": labels.get("io.mlbridge.bridge", bridge_of(tag)),
            "lock_sha256": labels.get("io.mlbridge.lock-sha256", ""),
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"schema": _SCHEMA, "images": images}, indent=2, sort_keys=True) + "\n"
        )
        tmp.replace(path)


def recorded_image_id(tag_or_bridge: str, *, state: Path | None = None) -> str | None:
    """The image id mlbridge recorded for a tag or bridge name, or None.

    Args:
        tag_or_bridge: ``mlbridge/mock:0.1.0`` or just ``mock``.
        state: state dir to read; the default state dir when None.
    """
    entry = load_records(state).get(tag_for(tag_or_bridge))
    return str(entry["image_id"]) if entry else None


def verify_image(docker_client: docker.DockerClient, tag: str, *, state: Path | None = None) -> str:
    """Check that the engine's image for ``tag`` is the one mlbridge built.

    Args:
        docker_client: a connected Docker SDK client.
        tag: an image tag, or a bare bridge name.
        state: state dir holding ``images.json``; the default state dir
            (``MLBRIDGE_STATE_DIR`` or its default) when None.

    Returns:
        The verified image id (``sha256:...``); start containers from this id,
        not the tag, so a retag after the check cannot swap the image.

    Raises:
        ConfigError: the image is missing, or mlbridge has no record of it.
        ImageMismatch: the image's id differs from the recorded one.
        Unavailable: the Docker engine could not be asked.
    """
    tag = tag_for(tag)
    try:
        current = docker_client.images.get(tag).id
    except docker.errors.ImageNotFound:
        current = None
    except docker.errors.DockerException as exc:
        raise Unavailable(f"could not inspect image {tag}: {exc}") from exc
    return check_image_id(tag, current, state=state)


def check_image_id(tag: str, current: str | None, *, state: Path | None = None) -> str:
    """Check the id the engine reports for ``tag`` (None: no such image) against mlbridge's record.

    Returns:
        ``current``, verified.

    Raises:
        ConfigError: the image is missing, or mlbridge has no record of it.
        ImageMismatch: the id differs from the recorded one.
    """
    tag = tag_for(tag)
    rebuild = f"`mlbridge images build {bridge_of(tag)}`"
    if current is None:
        raise ConfigError(f"image {tag} is not in the Docker engine; run {rebuild}")
    recorded = recorded_image_id(tag, state=state)
    if recorded is None:
        raise ConfigError(
            f"image {tag} exists but mlbridge has no record of building it "
            f"(in {records_path(state)}); run {rebuild}"
        )
    if current != recorded:
        raise ImageMismatch(
            f"image {tag} has id {current} but mlbridge built {recorded}; rebuild with {rebuild}",
            details={"tag": tag, "image_id": current, "recorded_id": recorded},
        )
    return str(current)
