"""Rollback against a real engine: two builds of a throwaway bridge image, back to the first, a worker from it.

The images are built FROM mlbridge/mock:0.1.0 (read only) under a tag of
this test's own (``mlbridge/rollback-<hex>:0.1.0``), recorded in a state
dir of its own, so the images and records other tests use never change.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from orchestrator import MLBridge
from orchestrator.images import docker_client, verify_image
from orchestrator.images._record import image_history, keep_tag, record_image
from runtimes.wire.errors import ImageMismatch
from tests.harness import ServerThread, make_config

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
REPO = f"mlbridge/rollback-{uuid.uuid4().hex[:8]}"
TAG = f"{REPO}:0.1.0"


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    c = docker_client()
    yield c
    for image in c.images.list(name=REPO):
        for tag in image.tags:
            if tag.startswith(f"{REPO}:"):  # never another tag of the same image
                try:
                    c.images.remove(tag)
                except docker.errors.APIError:
                    pass
    c.close()


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLBRIDGE_STATE_DIR", str(tmp_path / "images-state"))
    return tmp_path / "images-state"


def build(client: docker.DockerClient, generation: str, *, record: bool = True) -> str:
    """A bridge image as a build makes one (tag moved, id recorded); the recipe differs per generation."""
    dockerfile = f"FROM mlbridge/mock:0.1.0\nENV MLBRIDGE_TEST_GENERATION={generation}\n"
    labels = {"io.mlbridge.bridge": "mock", "io.mlbridge.recipe-sha256": generation * 8}
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=TAG, labels=labels, rm=True,
                                   network_mode="none")
    if record:
        record_image(TAG, str(image.id), labels=labels, client=client)
    return str(image.id)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "images", *args], cwd=ROOT,
                          env=dict(os.environ), capture_output=True, text=True, timeout=120)


def test_roll_back_to_the_previous_build_and_serve_from_it(
    client: docker.DockerClient, state: Path, tmp_path: Path
) -> None:
    first = build(client, "a")
    second = build(client, "b")
    assert first != second and client.images.get(TAG).id == second
    # The first build is no longer under TAG, but its keep tag holds it in the engine.
    assert client.images.get(keep_tag(TAG, first)).id == first

    history = cli("history", TAG)
    assert history.returncode == 0, history.stderr
    rows = history.stdout.splitlines()[1:]
    assert rows[0].startswith("*") and second[7:19] in rows[0] and first[7:19] in rows[1], history.stdout

    rolled = cli("rollback", TAG)
    assert rolled.returncode == 0, rolled.stderr
    assert client.images.get(TAG).id == first
    assert verify_image(client, TAG) == first
    assert [(h.image_id, h.action) for h in image_history(TAG)] == [
        (first, "rollback"), (second, "build"), (first, "build")]

    # A worker of the docker backend starts from the rolled-back image.
    bridges = {"mock": {"runtime": "mock", "image": TAG, "pool_size": 1, "held": 0}}
    with ServerThread(make_config(tmp_path, bridges, backend="docker")) as srv:
        with MLBridge.connect(srv.target) as mb:
            assert mb.call("mock", "mock:echo", {"gen": "a"}) == {"gen": "a"}
        images = {w.handle.image_id for w in srv.orch.pools["mock"].workers.values()}
        assert images == {first}

    # Forward again by id; an id that is not in the history is refused.
    assert cli("rollback", TAG, "--to", second[7:19]).returncode == 0
    assert verify_image(client, TAG) == second
    refused = cli("rollback", TAG, "--to", "0123456789ab")
    assert refused.returncode == 1
    assert f"image id 0123456789ab is not in the history of {TAG}" in refused.stderr


def test_an_image_gone_from_the_engine_is_refused(client: docker.DockerClient, state: Path) -> None:
    first = build(client, "c")
    second = build(client, "d")
    client.images.remove(keep_tag(TAG, first))  # its only tag: the image goes
    refused = cli("rollback", TAG)
    assert refused.returncode == 1
    assert "is no longer in the Docker engine" in refused.stderr
    assert verify_image(client, TAG) == second  # nothing changed
    # A tag moved behind mlbridge's back (an unrecorded build) is still refused.
    build(client, "e", record=False)
    with pytest.raises(ImageMismatch):
        verify_image(client, TAG)
