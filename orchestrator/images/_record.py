"""The record of what mlbridge built, the check against it, and rollback.

Every image id mlbridge builds is written to ``images.json`` in the state dir.
Before a container starts, :func:`verify_image` compares the id the engine
has under a tag with the recorded one, so an image retagged, rebuilt or
replaced behind mlbridge's back is refused rather than run.

Each tag's record keeps a history of the ids it has held (the last
:data:`HISTORY_LIMIT`: time, id, recipe and lock hashes, whether a build or a
rollback put it there). :func:`rollback_image` points the tag at an earlier
one again and records that like a build, so :func:`verify_image` accepts it.
An id in a history is kept alive in the engine under a tag of its own,
``<tag>-<12 hex digits of the id>`` (:func:`keep_tag`): a rebuild moves the
tag away and would leave the old image dangling, where ``docker image prune``
deletes it. The keep tag goes when the id falls out of this record's history,
and only then: several state dirs may share an engine, each with its history.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from runtimes.wire.errors import ConfigError, ImageMismatch, NotFound, Unavailable

from ._paths import LABEL_PREFIX, bridge_of, state_dir, tag_for

_SCHEMA = 1
#: Ids a tag's history keeps (and keeps alive in the engine), newest last in the file.
HISTORY_LIMIT = 10
_KEEP_TAG = re.compile(r"-[0-9a-f]{12}$")


@dataclass(frozen=True)
class HistoryEntry:
    """One id a tag has held, as its record remembers it.

    Attributes:
        image_id: ``sha256:...``.
        recorded_at: UTC time, ``2026-01-31T12:00:00Z``.
        action: ``build`` (a build produced it) or ``rollback`` (a rollback restored it).
        recipe_sha256: the image's ``io.mlbridge.recipe-sha256`` label, ``""`` if unknown.
        lock_sha256: the image's ``io.mlbridge.lock-sha256`` label, ``""`` if unknown.
        current: the newest entry, the one the tag is recorded to hold now.
    """

    image_id: str
    recorded_at: str
    action: str
    recipe_sha256: str = ""
    lock_sha256: str = ""
    current: bool = False


def keep_tag(tag: str, image_id: str) -> str:
    """The tag that keeps a history id alive: ``mlbridge/mock:0.1.0-3f2a9c1b7e4d``."""
    return f"{tag_for(tag)}-{image_id.removeprefix('sha256:')[:12]}"


def is_keep_tag(tag: str) -> bool:
    """Whether ``tag`` is a :func:`keep_tag`, not a tag mlbridge serves from."""
    return bool(_KEEP_TAG.search(tag))


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


def record_image(
    tag: str,
    image_id: str,
    *,
    labels: dict[str, str],
    action: str = "build",
    client: docker.DockerClient | None = None,
) -> None:
    """Record ``image_id`` as the image mlbridge built (or rolled back to) for ``tag``.

    A new id (or any rollback) is added to the tag's history; recording the
    id the tag already holds (a reused image) only refreshes the time.

    Args:
        tag: the image's tag.
        image_id: ``sha256:...``.
        labels: the image's labels (bridge, lock and recipe hashes are kept).
        action: ``build`` or ``rollback``, as the history shows it.
        client: when given, also keep the history's ids alive (:func:`keep_history`)
            and remove the keep tags of ids that fell out of it.
    """
    path = records_path()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with _locked(path):
        images = load_records()
        old = images.get(tag) or {}
        history = _history_of(old)
        if action != "build" or not history or history[-1]["image_id"] != image_id:
            history.append({
                "image_id": image_id,
                "recorded_at": now,
                "action": action,
                "recipe_sha256": labels.get(f"{LABEL_PREFIX}recipe-sha256", ""),
                "lock_sha256": labels.get(f"{LABEL_PREFIX}lock-sha256", ""),
            })
        dropped = [h["image_id"] for h in history[:-HISTORY_LIMIT]]
        history = history[-HISTORY_LIMIT:]
        images[tag] = {
            "image_id": image_id,
            "bridge": labels.get(f"{LABEL_PREFIX}bridge", bridge_of(tag)),
            "lock_sha256": labels.get(f"{LABEL_PREFIX}lock-sha256", ""),
            "recorded_at": now,
            "history": history,
        }
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(
            json.dumps({"schema": _SCHEMA, "images": images}, indent=2, sort_keys=True) + "\n"
        )
        tmp.replace(path)
    if client is not None:
        _drop_keep_tags(client, tag, dropped, [h["image_id"] for h in history])
        keep_history(client, [tag])


def _history_of(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """A record's history, oldest first; a record from before histories has its one id."""
    history = entry.get("history")
    if isinstance(history, list):
        return [dict(h) for h in history if isinstance(h, dict) and h.get("image_id")]
    if entry.get("image_id"):
        return [{
            "image_id": entry["image_id"],
            "recorded_at": entry.get("recorded_at", ""),
            "action": "build",
            "recipe_sha256": "",
            "lock_sha256": entry.get("lock_sha256", ""),
        }]
    return []


def image_history(tag_or_bridge: str, *, state: Path | None = None) -> list[HistoryEntry]:
    """The ids a tag has held, newest (the current one) first; [] when never recorded.

    Args:
        tag_or_bridge: ``mlbridge/mock:0.1.0`` or just ``mock``.
        state: state dir to read; the default state dir when None.
    """
    entries = list(reversed(_history_of(load_records(state).get(tag_for(tag_or_bridge)) or {})))
    return [
        HistoryEntry(
            image_id=str(h["image_id"]),
            recorded_at=str(h.get("recorded_at", "")),
            action=str(h.get("action", "build")),
            recipe_sha256=str(h.get("recipe_sha256", "")),
            lock_sha256=str(h.get("lock_sha256", "")),
            current=i == 0,
        )
        for i, h in enumerate(entries)
    ]


def rollback_target(history: list[HistoryEntry], to: str | None, tag: str) -> HistoryEntry:
    """The history entry a rollback of ``tag`` goes to.

    Args:
        history: the tag's history, newest first (:func:`image_history`).
        to: an image id or a unique prefix of one (``sha256:`` optional);
            None: the newest entry whose id differs from the current one.

    Raises:
        NotFound: the tag has no such earlier id (or none at all).
    """
    listing = f"`mlbridge images history {bridge_of(tag)}` lists them"
    if not history:
        raise NotFound(f"mlbridge has no build of {tag} on record; build it with "
                       f"`mlbridge images build {bridge_of(tag)}`")
    current = history[0].image_id
    if to is None:
        earlier = next((h for h in history if h.image_id != current), None)
        if earlier is None:
            raise NotFound(f"{tag} has no earlier build to roll back to ({listing})")
        return earlier
    want = to if to.startswith("sha256:") else f"sha256:{to}"
    ids = list(dict.fromkeys(h.image_id for h in history if h.image_id.startswith(want)))
    if len(ids) > 1:
        raise NotFound(f"image id {to} is ambiguous in the history of {tag} "
                       f"({', '.join(i[7:19] for i in ids)}); give more digits")
    if not ids or len(want) < len("sha256:") + 4:
        raise NotFound(f"image id {to} is not in the history of {tag}; {listing}")
    return next(h for h in history if h.image_id == ids[0])


def rollback_image(
    client: docker.DockerClient, tag_or_bridge: str, *, to: str | None = None
) -> HistoryEntry:
    """Point a tag back at an earlier build's image and record it.

    Args:
        client: a connected Docker SDK client.
        tag_or_bridge: ``mlbridge/mock:0.1.0`` or just ``mock``.
        to: the image id (or a unique prefix) to go back to; None: the
            previous one (the newest id in the history other than the current).

    Returns:
        The entry rolled back to (as it was in the history).

    Raises:
        NotFound: ``to`` is not in the tag's history, or there is no earlier id.
        ConfigError: that image is no longer in the Docker engine.
        Unavailable: the Docker engine could not be asked.
    """
    tag = tag_for(tag_or_bridge)
    target = rollback_target(image_history(tag), to, tag)
    try:
        image = client.images.get(target.image_id)
        repository, _, name = tag.rpartition(":")
        image.tag(repository, name)
    except docker.errors.ImageNotFound:
        raise ConfigError(
            f"image {target.image_id[:19]} (recorded {target.recorded_at}) is no longer in the "
            f"Docker engine, so {tag} cannot be rolled back to it"
        ) from None
    except docker.errors.DockerException as exc:
        raise Unavailable(f"could not retag {target.image_id[:19]} as {tag}: {exc}") from exc
    record_image(tag, target.image_id, labels=image.labels or {}, action="rollback", client=client)
    return target


def keep_history(client: docker.DockerClient, tags: list[str] | None = None) -> None:
    """Make sure every history id of ``tags`` (all recorded tags by default) still in the engine has its keep tag.

    Only adds tags: other state dirs on the same engine keep histories of
    their own, so a keep tag this record does not know may be another's.
    Engine errors are ignored: this is housekeeping.
    """
    records = load_records()
    for tag in tags if tags is not None else list(records):
        repository = tag.rpartition(":")[0]
        try:
            present = {t for image in client.images.list(name=repository) for t in image.tags}
        except docker.errors.DockerException:
            continue
        for entry in _history_of(records.get(tag) or {}):
            keep = keep_tag(tag, entry["image_id"])
            if keep not in present:
                with contextlib.suppress(docker.errors.DockerException):
                    client.images.get(entry["image_id"]).tag(*keep.rsplit(":", 1))


def _drop_keep_tags(client: docker.DockerClient, tag: str, dropped: list[str], history: list[str]) -> None:
    """Remove the keep tags of ids this record's history just dropped (deleting images nothing else holds)."""
    for image_id in dict.fromkeys(dropped):
        if image_id in history:
            continue
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(keep_tag(tag, image_id), noprune=False)


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
