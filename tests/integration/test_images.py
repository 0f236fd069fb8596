"""Hermetic images against a real Docker engine: build, labels, SBOM, run, verify.

The build here is offline (``build_images(..., offline=True)``): it uses the
cached root filesystem and wheelhouse and fails, rather than downloads, when
they are missing. Prime them once with ``python -m orchestrator.images build
mock`` (CI does this before the tests). Skipped without an engine, except in
CI (see tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orchestrator.images import (
    BuiltImage,
    build_images,
    docker_client,
    list_images,
    recorded_image_id,
    verify_image,
)
from runtimes.wire.errors import ConfigError, ImageMismatch

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
TAG = "mlbridge/mock:0.1.0"
LABEL = "io.mlbridge.test-session"


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    c = docker_client()
    yield c
    c.close()


@pytest.fixture(scope="module")
def built(client: docker.DockerClient) -> BuiltImage:
    lines: list[str] = []
    result = build_images(["mock"], progress=lines.append, offline=True, client=client)
    assert list(result) == ["mock"], lines
    return result["mock"]


@pytest.fixture
def containers(client: docker.DockerClient) -> Iterator[list[str]]:
    """Ids of containers a test started; force-removed afterwards."""
    started: list[str] = []
    yield started
    for cid in started:
        try:
            client.api.remove_container(cid, force=True)
        except docker.errors.NotFound:
            pass


def test_mock_image_is_built_labelled_and_recorded(
    client: docker.DockerClient, built: BuiltImage
) -> None:
    image = client.images.get(TAG)
    assert image.id == built.image_id == recorded_image_id("mock") == recorded_image_id(TAG)
    lock = ROOT / "images/mock/requirements.lock"
    labels = image.labels
    assert labels["io.mlbridge.bridge"] == "mock"
    assert labels["io.mlbridge.framework"] == "mock"
    assert labels["io.mlbridge.framework-version"] == "0.1.0"
    assert labels["io.mlbridge.python-version"].startswith("3.11.")
    assert labels["io.mlbridge.lock-sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert labels["io.mlbridge.version"] == "0.1.0"
    assert {k: v for k, v in labels.items() if k.startswith("io.mlbridge.")} == built.labels
    config = client.api.inspect_image(TAG)["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"][:2] == ["/usr/bin/tini", "--"]
    assert "MLBRIDGE_BRIDGE=mock" in config["Env"]
    assert "PYTHONDONTWRITEBYTECODE=1" in config["Env"]
    # Every mlbridge image in the chain carries the label set.
    for tag in ("mlbridge/base:0.1.0", "mlbridge/base-deps:0.1.0", "mlbridge/rootfs:bookworm"):
        assert {
            "io.mlbridge.bridge", "io.mlbridge.framework", "io.mlbridge.framework-version",
            "io.mlbridge.python-version", "io.mlbridge.lock-sha256", "io.mlbridge.version",
        } <= set(client.images.get(tag).labels), tag  # fmt: skip


def test_second_build_reuses_the_recorded_image(
    client: docker.DockerClient, built: BuiltImage
) -> None:
    started = time.monotonic()
    again = build_images(["mock"], progress=lambda _: None, offline=True, client=client)["mock"]
    assert again.cached and again.image_id == built.image_id
    assert time.monotonic() - started < 30


def test_sbom_and_vulnerability_report(built: BuiltImage) -> None:
    sbom = json.loads(built.sbom_path.read_text())
    assert built.sbom_path.parent.name == "mock"
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.5"
    assert sbom["metadata"]["component"]["bom-ref"] == built.image_id
    purls = {c.get("purl", "") for c in sbom["components"]}
    assert "pkg:pypi/grpcio@1.85.3" in purls and "pkg:pypi/protobuf@7.36.2" in purls
    assert any(p.startswith("pkg:deb/debian/tini@") for p in purls)
    assert any(p.startswith("pkg:deb/debian/python3.11@") for p in purls)

    report = json.loads(built.vuln_report_path.read_text())
    assert report["image"] == TAG and report["image_id"] == built.image_id
    assert report["status"] in {"checked", "not_checked"}
    assert isinstance(report["vulnerabilities"], list)
    if report["status"] == "not_checked":
        assert report["reason"]


def test_image_runs_hardened_and_serves_on_its_socket(
    client: docker.DockerClient, built: BuiltImage, containers: list[str]
) -> None:
    sockdir = Path(tempfile.mkdtemp(prefix="mlbridge-img-"))
    try:
        if os.geteuid() == 0:
            os.chown(sockdir, 10001, 10001)
        else:
            sockdir.chmod(0o777)
        container = client.containers.run(
            built.image_id,
            detach=True,
            network_mode="none",
            read_only=True,
            user="10001",
            tmpfs={"/tmp": "size=16m"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            volumes={str(sockdir): {"bind": "/run/mlbridge", "mode": "rw"}},
            labels={LABEL: "test_images"},
        )
        containers.append(container.id)
        sock = sockdir / "runtime.sock"
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            container.reload()
            assert container.status in {"created", "running"}, container.logs().decode()
            time.sleep(0.05)
        assert sock.is_socket(), container.logs().decode()
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10, wait_for_ready=True
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        top = client.api.top(container.id)
        assert {row[0] for row in top["Processes"]} == {"10001"}
        assert "/usr/bin/tini" in top["Processes"][0][-1]
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_image_is_importable_read_only_as_the_runtime_user(
    client: docker.DockerClient, built: BuiltImage
) -> None:
    script = (
        "import grpc, runtimes, runtimes.core, sys, importlib.metadata as m;"
        "print(grpc.__version__, sys.dont_write_bytecode,"
        " sorted(e.name for e in m.entry_points(group='mlbridge.bridges')))"
    )
    out = client.containers.run(
        built.image_id,
        entrypoint=["python3", "-c", script],
        network_mode="none",
        read_only=True,
        user="10001",
        remove=True,
    ).decode()
    version, dont_write, bridges = out.strip().split(" ", 2)
    assert version == "1.85.3" and dont_write == "True"
    assert "'mock'" in bridges
    # No wheels, no pip cache and no sources of the build left in the image.
    leftovers = client.containers.run(
        built.image_id,
        entrypoint=["/bin/sh", "-c", "ls -d /tmp/wheels /root/.cache/pip 2>/dev/null | wc -l"],
        network_mode="none",
        user="0",
        remove=True,
    ).decode()
    assert leftovers.strip() == "0"


def test_retagged_image_is_refused_then_restored(
    client: docker.DockerClient, built: BuiltImage
) -> None:
    impostor = client.images.get("mlbridge/base:0.1.0")
    assert impostor.id != built.image_id
    try:
        assert impostor.tag("mlbridge/mock", "0.1.0")
        with pytest.raises(ImageMismatch) as info:
            verify_image(client, TAG)
        message = str(info.value)
        assert f"has id {impostor.id} but mlbridge built {built.image_id}" in message
        assert "`mlbridge images build mock`" in message
        listed = {row.tag: row for row in list_images(client)}
        assert not listed[TAG].matches
    finally:
        client.images.get(built.image_id).tag("mlbridge/mock", "0.1.0")
    assert verify_image(client, TAG) == built.image_id
    assert {row.tag: row for row in list_images(client)}[TAG].matches


def test_missing_image_says_how_to_build_it(client: docker.DockerClient) -> None:
    with pytest.raises(ConfigError, match=r"run `mlbridge images build nosuchbridge`") as info:
        verify_image(client, "mlbridge/nosuchbridge:0.1.0")
    assert not isinstance(info.value, ImageMismatch)
