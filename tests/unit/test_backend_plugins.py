"""A backend from a package outside the tree, found by entry point or import string: no core change."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from orchestrator import MLBridge
from orchestrator.backends import installed_backends, load_backend
from runtimes.wire.errors import ConfigError
from tests.harness import ServerThread, make_config

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "extbackend"


def _serve_through(tmp: Path, backend: str) -> None:
    cfg = make_config(tmp, backend=backend, bridges={"mock": {"runtime": "mock", "pool_size": 1}})
    with ServerThread(cfg) as srv, MLBridge.connect(srv.target) as mb:
        assert type(srv.app.backend).__name__ == "CountingBackend"
        assert mb.call("mock", "mock:echo", {"via": backend}) == {"via": backend}
        assert mb.stats()["backend"] == "counting"
        assert [b["backend"] for b in mb.list_bridges()] == ["counting"]
        served = {w["worker_id"] for w in mb.stats()["workers"]}
        assert served and served <= set(srv.app.backend.started)  # type: ignore[attr-defined]


def test_backend_by_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Installed the way pip installs a distribution: a dist-info with entry_points.txt on the path.
    site = tmp_path / "site"
    dist = site / "mlbridge_ext_backend-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlbridge-ext-backend\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mlbridge.backends]\ncounting = mlbridge_ext_backend:CountingBackend\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(FIXTURE))
    importlib.invalidate_caches()
    assert installed_backends()["counting"] == "mlbridge_ext_backend:CountingBackend"
    assert {"process", "docker"} <= set(installed_backends())
    _serve_through(tmp_path, "counting")


def test_backend_by_import_string(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FIXTURE))
    _serve_through(tmp_path, "mlbridge_ext_backend:CountingBackend")


def test_unknown_or_wrong_backend_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"unknown backend 'nope'; installed backends: .*docker.*process"):
        load_backend("nope")
    with pytest.raises(ConfigError, match="cannot import backend"):
        load_backend("no_such_module_here:Backend")
    with pytest.raises(ConfigError, match="is not an orchestrator.backends.base.Backend subclass"):
        load_backend("pathlib:Path")
