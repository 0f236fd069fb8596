"""pytest plugin: an mlbridge orchestrator in a container as fixtures.

Fixtures (each starts nothing until a test asks for it):

- ``mlbridge_server``: session-scoped :class:`~orchestrator.testing.MLBridgeContainer`
  configured by ini options (``--mlbridge-backend`` overrides the backend).
- ``mlbridge_container``: the container for the current test: ``mlbridge_server``,
  unless the test's ``mlbridge`` marker names its own ``backend``, ``bridges``,
  ``policy``, ``config`` or ``audit_log``; then a container with those settings,
  started once per distinct settings and kept for the session.
- ``mlbridge_client``: an :class:`~orchestrator.client.MLBridge` connected to it,
  with the marker's (or the ini) ``token``; closed after the test.

ini options (``[tool.pytest.ini_options]`` or ``pytest.ini``): ``mlbridge_backend``
(process), ``mlbridge_bridges`` (the backend's defaults), ``mlbridge_policy`` (a
file, relative to the rootdir), ``mlbridge_token``, ``mlbridge_image``,
``mlbridge_audit_log`` (false), ``mlbridge_startup_timeout`` (120).

Register it with ``-p orchestrator.testing.pytest_plugin``, in a conftest's
``pytest_plugins``, or through the ``pytest11`` entry point mlbridge declares.
Importing this module imports neither testcontainers nor Docker.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from orchestrator.client import MLBridge

    from ._container import MLBridgeContainer

MARKER = "mlbridge"
#: Marker arguments that select a server of their own (``token`` only picks the client's token).
SERVER_KEYS = ("backend", "bridges", "policy", "config", "audit_log")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mlbridge", "mlbridge orchestrator container (orchestrator.testing)")
    group.addoption("--mlbridge-backend", default=None, choices=("process", "docker"),
                    help="worker backend of the mlbridge_server fixture (overrides the ini option)")
    parser.addini("mlbridge_backend", "worker backend of mlbridge_server: process or docker", default="process")
    parser.addini("mlbridge_bridges", "bridges mlbridge_server serves (default: the backend's)", type="args",
                  default=[])
    parser.addini("mlbridge_policy", "policy file for mlbridge_server, relative to the rootdir", default="")
    parser.addini("mlbridge_token", "bearer token mlbridge_client sends", default="")
    parser.addini("mlbridge_image", "orchestrator image (default mlbridge/orchestrator:<version>)", default="")
    parser.addini("mlbridge_audit_log", "write an audit log in mlbridge_server", type="bool", default=False)
    parser.addini("mlbridge_startup_timeout", "seconds to wait for SERVING", default="120")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(backend=None, bridges=None, policy=None, config=None, audit_log=None, token=None): "
        "settings of the mlbridge container and client this test gets (orchestrator.testing)",
    )


class ContainerPool:
    """Containers by settings, started on first use, all stopped at the end of the session."""

    def __init__(self, config: pytest.Config) -> None:
        self.pytest_config = config
        self.running: dict[str, MLBridgeContainer] = {}

    def defaults(self) -> dict[str, Any]:
        ini = self.pytest_config.getini
        policy = str(ini("mlbridge_policy"))
        return {
            "backend": self.pytest_config.getoption("mlbridge_backend") or str(ini("mlbridge_backend")),
            "bridges": list(ini("mlbridge_bridges")) or None,
            "policy": str(self.pytest_config.rootpath / policy) if policy else None,
            "config": None,
            "audit_log": bool(ini("mlbridge_audit_log")),
        }

    def get(self, settings: dict[str, Any]) -> MLBridgeContainer:
        key = json.dumps(settings, sort_keys=True, default=str)
        if key not in self.running:
            self.running[key] = self._start(settings)
        return self.running[key]

    def _start(self, settings: dict[str, Any]) -> MLBridgeContainer:
        from orchestrator.testing import MLBridgeContainer

        ini = self.pytest_config.getini
        container = MLBridgeContainer(str(ini("mlbridge_image")) or None, backend=settings["backend"])
        if settings["bridges"]:
            container.with_bridges(settings["bridges"])
        if settings["policy"] is not None:
            container.with_policy(settings["policy"])
        if settings["config"]:
            container.with_config(settings["config"])
        container.with_audit_log(bool(settings["audit_log"]))
        container.with_startup_timeout(float(str(ini("mlbridge_startup_timeout"))))
        return container.start()

    def close(self) -> None:
        running, self.running = self.running, {}
        for container in running.values():
            container.stop()


def _marker_kwargs(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker(MARKER)
    if marker is None:
        return {}
    unknown = set(marker.kwargs) - {*SERVER_KEYS, "token"}
    if unknown or marker.args:
        raise pytest.UsageError(f"@pytest.mark.{MARKER} takes keyword arguments "
                                f"{', '.join((*SERVER_KEYS, 'token'))}; got {sorted(unknown) or marker.args}")
    return dict(marker.kwargs)


@pytest.fixture(scope="session")
def mlbridge_containers(pytestconfig: pytest.Config) -> Iterator[ContainerPool]:
    """The session's mlbridge containers, by settings (none until a fixture below asks)."""
    pool = ContainerPool(pytestconfig)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="session")
def mlbridge_server(mlbridge_containers: ContainerPool) -> MLBridgeContainer:
    """The session's orchestrator container, configured by the ini options."""
    return mlbridge_containers.get(mlbridge_containers.defaults())


@pytest.fixture
def mlbridge_container(request: pytest.FixtureRequest, mlbridge_containers: ContainerPool) -> MLBridgeContainer:
    """The orchestrator container for this test (its ``mlbridge`` marker's settings, else ``mlbridge_server``)."""
    marked = {k: v for k, v in _marker_kwargs(request).items() if k in SERVER_KEYS}
    if not marked:
        server: MLBridgeContainer = request.getfixturevalue("mlbridge_server")
        return server
    settings = mlbridge_containers.defaults()
    settings.update(marked)
    if isinstance(settings["policy"], str | Path) and not Path(settings["policy"]).is_absolute():
        settings["policy"] = str(request.config.rootpath / settings["policy"])
    return mlbridge_containers.get(settings)


@pytest.fixture
def mlbridge_client(request: pytest.FixtureRequest, mlbridge_container: MLBridgeContainer) -> Iterator[MLBridge]:
    """A client of this test's orchestrator, with the marker's or the ini's token."""
    token = _marker_kwargs(request).get("token") or str(request.config.getini("mlbridge_token")) or None
    with mlbridge_container.get_client(token=token) as client:
        yield client
