from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.harness import CI


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Docker tests skip on a laptop without an engine, but never in CI."""
    if not any(item.get_closest_marker("docker") for item in items):
        return
    if docker_available():
        return
    if CI:
        raise pytest.UsageError("CI=true but the Docker engine is not reachable: docker tests must run in CI")
    skip = pytest.mark.skip(reason="no Docker engine reachable (start one with scripts/docker-engine.sh up)")
    for item in items:
        if item.get_closest_marker("docker"):
            item.add_marker(skip)
