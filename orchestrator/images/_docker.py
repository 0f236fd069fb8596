"""Thin wrappers over the Docker SDK: connect, build with no network, reuse."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from runtimes.wire.errors import ConfigError, Unavailable

from ._paths import LABEL_PREFIX
from ._record import recorded_image_id

RECIPE_LABEL = f"{LABEL_PREFIX}recipe-sha256"


def docker_client() -> docker.DockerClient:
    """A connected Docker SDK client.

    Raises:
        Unavailable: no Docker engine answers.
    """
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise Unavailable(
            f"cannot reach the Docker engine ({exc}); start one with `scripts/docker-engine.sh up`"
        ) from exc
    return client


def reusable_image(client: docker.DockerClient, tag: str, recipe: str) -> str | None:
    """The id under ``tag`` if it was built from ``recipe`` and is the recorded one.

    Both must hold: a matching recipe label alone could be forged by anyone
    who can build images, the record alone would miss a changed recipe.
    """
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    if (image.labels or {}).get(RECIPE_LABEL) != recipe or recorded_image_id(tag) != image.id:
        return None
    return str(image.id)


def build_offline(
    client: docker.DockerClient,
    *,
    context: Path,
    tag: str,
    buildargs: dict[str, str],
    labels: dict[str, str],
    target: str | None,
    log_path: Path,
    progress: Callable[[str], None],
    nocache: bool,
) -> str:
    """``docker build`` with the network switched off; returns the image id.

    Progress gets the ``Step`` lines (labels left out); the full log is
    written to ``log_path``.

    Raises:
        ConfigError: the build failed; the message ends with the log tail.
    """
    name = log_path.parent.name
    log: list[str] = []
    image_id = None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        stream = client.api.build(
            path=str(context),
            tag=tag,
            target=target,
            buildargs=buildargs,
            labels=labels,
            network_mode="none",
            rm=True,
            forcerm=True,
            nocache=nocache,
            pull=False,
            decode=True,
        )
        for chunk in stream:
            for line in chunk.get("stream", "").splitlines():
                log.append(line)
                if line.startswith("Step ") and " : LABEL " not in line:
                    progress(f"{name}: {line}")
            if "ID" in chunk.get("aux", {}):
                image_id = chunk["aux"]["ID"]
            if "error" in chunk:
                log.append(chunk["error"])
                log_path.write_text("\n".join(log) + "\n", encoding="utf-8")
                tail = "\n".join(log[-25:])
                raise ConfigError(
                    f"building {tag} failed: {chunk['error'].strip()} (log: {log_path})\n{tail}"
                )
    except docker.errors.DockerException as exc:
        raise ConfigError(f"building {tag} failed: {exc}") from exc
    log_path.write_text("\n".join(log) + "\n", encoding="utf-8")
    return image_id or str(client.images.get(tag).id)
