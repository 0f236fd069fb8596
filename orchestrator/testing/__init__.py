"""Run mlbridge in tests and CI: the orchestrator in a container, on testcontainers.

``MLBridgeContainer`` starts ``mlbridge/orchestrator:<version>`` (built by
``mlbridge images build orchestrator``), waits until its gRPC health service
reports SERVING, and hands out connected clients::

    from orchestrator.testing import MLBridgeContainer

    with MLBridgeContainer(backend="docker").with_bridges(["mock"]) as mb:
        with mb.get_client() as client:
            assert client.call("mock", "mock:echo", {"x": 1}) == {"x": 1}

The pytest plugin ``orchestrator.testing.pytest_plugin`` offers the same as
fixtures (``mlbridge_server``, ``mlbridge_container``, ``mlbridge_client``).
See docs/ci.md. Needs ``testcontainers`` (imported on first use of a name
here, so the plugin loads, and stays idle, without it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._container import MLBridgeContainer
    from ._settings import DEFAULT_BRIDGES, GRPC_PORT, default_image
    from ._wait import GrpcHealthWaitStrategy

__all__ = ["DEFAULT_BRIDGES", "GRPC_PORT", "GrpcHealthWaitStrategy", "MLBridgeContainer", "default_image"]

_WHERE = {
    "MLBridgeContainer": "._container",
    "GrpcHealthWaitStrategy": "._wait",
    "DEFAULT_BRIDGES": "._settings",
    "GRPC_PORT": "._settings",
    "default_image": "._settings",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(module, __name__), name)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "testcontainers":
            raise ImportError("orchestrator.testing needs testcontainers: "
                              "pip install 'testcontainers>=4.8,<5'", name=exc.name) from exc
        raise
