"""orchestrator.testing and the orchestrator image's recipe, without Docker."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from email.parser import HeaderParser
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from packaging.requirements import Requirement

import orchestrator.testing as testing
from orchestrator.backends.docker import DockerBackend
from orchestrator.config import load_config
from orchestrator.images import _lock
from orchestrator.images._build import ORCHESTRATOR_IMAGE
from orchestrator.images._orchestrator import (
    installed_distribution,
    installed_packages,
    orchestrator_dist_files,
)
from orchestrator.testing import _settings
from orchestrator.testing._wait import GrpcHealthWaitStrategy
from runtimes.wire.errors import ConfigError, Unavailable

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "images" / "orchestrator"


def test_public_surface() -> None:
    assert sorted(testing.__all__) == sorted(
        ["DEFAULT_BRIDGES", "GRPC_PORT", "GrpcHealthWaitStrategy", "MLBridgeContainer", "default_image"])
    for name in testing.__all__:
        assert getattr(testing, name) is not None
    with pytest.raises(AttributeError):
        _ = testing.no_such_name


def test_plugin_imports_without_testcontainers() -> None:
    """Registered as a pytest11 entry point, the plugin loads in every pytest run: it must not need testcontainers."""
    code = (
        "import sys; sys.modules['testcontainers'] = None\n"
        "import orchestrator.testing.pytest_plugin\n"
        "try:\n"
        "    from orchestrator.testing import MLBridgeContainer\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "pip install 'testcontainers" in out.stdout


def test_bridges_by_name_take_the_shipped_entry_with_ci_defaults() -> None:
    bridges = _settings.bridge_configs(["mock", "custom", "third"])
    assert bridges["mock"]["runtime"] == "mock" and bridges["mock"]["limits"]["memory"] == "256m"
    assert bridges["custom"]["required_packages"] == ["numpy"]
    assert bridges["third"] == {"runtime": "third", **_settings.CI_BRIDGE_DEFAULTS}
    assert all(b["pool_size"] == 1 and b["held"] == 0 for b in bridges.values())
    given = {"mock": {"runtime": "mock", "pool_size": 3}}
    assert _settings.bridge_configs(given) == given
    with pytest.raises(ConfigError, match="at least one bridge"):
        _settings.bridge_configs([])


def test_render_config_is_a_valid_orchestrator_config(tmp_path: Path) -> None:
    bridges = _settings.bridge_configs(["custom", "mock"])
    rendered = _settings.render_config("docker", bridges, {"bridges": {"mock": {"pool_size": 2}},
                                                           "max_stream_buffer": 64})
    assert rendered["default_bridge"] == "mock" and rendered["backend"] == "docker"
    assert rendered["bridges"]["mock"]["pool_size"] == 2 and rendered["bridges"]["mock"]["runtime"] == "mock"
    cfg = load_config(None, env={}, **rendered, state_dir=str(tmp_path))
    assert sorted(cfg.bridges) == ["custom", "mock"] and cfg.max_stream_buffer == 64
    assert _settings.render_config("process", _settings.bridge_configs(["custom"]))["default_bridge"] == "custom"
    with pytest.raises(ConfigError, match="backend must be one of"):
        _settings.render_config("kubernetes", bridges)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="default_bridge 'dspy'"):
        _settings.render_config("process", bridges, {"default_bridge": "dspy"})


def test_scope_is_the_docker_backends(tmp_path: Path) -> None:
    state = "/var/lib/docker/volumes/mlbridge-tc-0123456789ab/_data/state"
    backend = DockerBackend.from_config(load_config(None, env={}, state_dir=state))
    assert backend._scope == _settings.deployment_scope(state)


def test_serve_command() -> None:
    assert _settings.serve_command("process", policy=False, audit_log=False, state_dir=None) == [
        "serve", "--config", _settings.CONFIG_PATH, "--listen", "0.0.0.0:50051", "--backend", "process"]
    command = _settings.serve_command("docker", policy=True, audit_log=True, state_dir="/v/state")
    assert command[-6:] == ["--policy", _settings.POLICY_PATH, "--audit-log", _settings.AUDIT_LOG,
                            "--state-dir", "/v/state"]


def test_policy_text(tmp_path: Path) -> None:
    assert "tenants:" in _settings.policy_text({"version": 1, "tenants": {}})
    (tmp_path / "p.yaml").write_text("version: 1\n")
    assert _settings.policy_text(tmp_path / "p.yaml") == "version: 1\n"
    with pytest.raises(ConfigError, match="cannot read policy"):
        _settings.policy_text(tmp_path / "missing.yaml")


class _Target:
    """A stand-in for a container, as a wait strategy sees it."""

    def __init__(self, status: str, exit_code: int = 0) -> None:
        self.status = status
        self._attrs = {"State": {"ExitCode": exit_code}}

    def reload(self) -> None:
        pass

    def get_logs(self) -> tuple[bytes, bytes]:
        return b"out line\n", b"error: FAILED_PRECONDITION: something is missing\n"

    def get_wrapped_container(self) -> Any:
        return SimpleNamespace(attrs=self._attrs)

    def get_container_host_ip(self) -> str:
        return "127.0.0.1"

    def get_exposed_port(self, port: int) -> int:
        raise ConnectionError("port not mapped yet")


def test_wait_fails_at_once_when_the_container_exits() -> None:
    with pytest.raises(Unavailable, match=r"(?s)exited \(status 1\) before serving.*something is missing") as err:
        GrpcHealthWaitStrategy(50051).wait_until_ready(_Target("exited", 1))
    assert err.value.details["exit_code"] == 1


def test_wait_times_out_with_the_logs() -> None:
    strategy = GrpcHealthWaitStrategy(50051, ["mlbridge.bridge.mock"]).with_startup_timeout(0)
    with pytest.raises(Unavailable, match=r"(?s)did not report SERVING within 0 s \(\(overall\): no answer.*out line"):
        strategy.wait_until_ready(_Target("running"))


# -- the orchestrator image's recipe ---------------------------------------------------------------


def test_orchestrator_is_not_a_bridge_and_not_built_by_default() -> None:
    from orchestrator.images import known_bridges

    assert ORCHESTRATOR_IMAGE not in known_bridges()
    assert (RECIPE / "Dockerfile").is_file() and (RECIPE / "config.yaml").is_file()


def test_requirements_in_follows_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_lock.canonical_name(Requirement(d).name): str(Requirement(d).specifier)
              for d in project["dependencies"]}
    lines = [ln.split("#")[0].strip() for ln in (RECIPE / "requirements.in").read_text().splitlines()]
    have = {_lock.canonical_name(Requirement(ln).name): str(Requirement(ln).specifier)
            for ln in lines if ln and not ln.startswith("-r")}
    assert {k: have.get(k) for k in wanted} == wanted


def test_orchestrator_lock_is_complete_and_agrees_with_base_and_host() -> None:
    pkgs = _lock.read_lock(RECIPE / "requirements.lock")
    versions = {p.name: p.version for p in pkgs}
    base = {p.name: p.version for p in _lock.read_lock(ROOT / "images/base/requirements.lock")}
    assert {n: versions.get(n) for n in base} == base
    for name in ("docker", "pydantic", "grpcio-reflection", "grpcio-status", "pyyaml", "numpy", "uvloop"):
        assert name in versions, name
    for name in ("grpcio", "protobuf", "pydantic", "docker"):  # what the host's tests run against
        assert versions[name] == metadata.version(name), name


def test_dist_files_make_mlbridge_an_installed_distribution() -> None:
    files = orchestrator_dist_files(installed_distribution())
    (meta,) = [p for p in files if p.endswith("/METADATA")]
    assert meta.startswith("mlbridge/mlbridge-") and ".dist-info/" in meta
    headers = HeaderParser().parsestr(files[meta])
    assert headers["Name"] == "mlbridge" and headers.get_all("Requires-Dist")
    assert "Description" not in files[meta] and "# mlbridge" not in files[meta]
    (entry_points,) = [p for p in files if p.endswith("/entry_points.txt")]
    assert "[mlbridge.backends]" in files[entry_points] and "[mlbridge.bridges]" in files[entry_points]
    assert files["mlbridge-bin/mlbridge"].startswith("#!/opt/venv/bin/python3\n")
    assert "from orchestrator.cli import main" in files["mlbridge-bin/mlbridge"]


def test_installed_packages_are_the_imported_ones() -> None:
    import orchestrator

    trees = installed_packages()
    assert trees["mlbridge/orchestrator"] == Path(orchestrator.__file__).resolve().parent
    assert (trees["mlbridge/runtimes"] / "start.py").is_file()
