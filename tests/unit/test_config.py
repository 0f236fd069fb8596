from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orchestrator.backends.process import ProcessBackend
from orchestrator.config import (
    BridgeConfig,
    Config,
    check_environment,
    load_config,
    missing_packages,
    parse_size,
    skip_reason,
)
from runtimes.wire.errors import ConfigError


def test_default_config_loads() -> None:
    cfg = load_config(env={})
    assert cfg.default_bridge == "mock" and cfg.backend == "docker"
    assert {"mock", "custom", "dspy"} <= set(cfg.bridges)
    assert cfg.listen == "127.0.0.1:50051"
    assert cfg.bridges["mock"].pool_size >= 1


def test_env_overrides_top_level_and_nested() -> None:
    cfg = load_config(env={"MLBRIDGE_BACKEND": "docker", "MLBRIDGE_BRIDGES__MOCK__POOL_SIZE": "4",
                           "MLBRIDGE_BRIDGES__MOCK__LIMITS__MEMORY": "1g", "UNRELATED": "x"})
    assert cfg.backend == "docker"
    assert cfg.bridges["mock"].pool_size == 4
    assert cfg.bridges["mock"].limits.memory_bytes == 1024**3


def test_yaml_file_and_misspelt_key(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("default_bridge: mock\nbridges:\n  mock:\n    runtime: mock\n    pool_sise: 3\n")
    with pytest.raises(ConfigError, match=r"bridges\.mock\.pool_sise: Extra inputs are not permitted"):
        load_config(f, env={})


def test_default_bridge_must_exist(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("default_bridge: dspy\nbridges:\n  mock: {runtime: mock}\n")
    with pytest.raises(ConfigError, match="default_bridge 'dspy' is not among bridges"):
        load_config(f, env={})


def test_gpus_never_all() -> None:
    with pytest.raises(ConfigError, match="'all' is not allowed"):
        load_config(env={}, bridges={"mock": {"runtime": "mock", "limits": {"gpus": ["all"]}}})


def test_missing_env_and_package_named_with_fix() -> None:
    cfg = Config.model_validate({"bridges": {"mock": {"runtime": "mock", "required_env": ["GEMINI_API_KEY"],
                                                      "required_packages": ["surely-not-installed-pkg"]}}})
    with pytest.raises(ConfigError) as info:
        check_environment(cfg, env={})
    msg = str(info.value)
    assert "needs environment variable GEMINI_API_KEY: export GEMINI_API_KEY=" in msg
    # Packages are the backend's business: the process backend imports them from this Python.
    backend = ProcessBackend()
    with pytest.raises(ConfigError) as info:
        asyncio.run(backend.prepare(cfg))
    assert "pip install surely-not-installed-pkg" in str(info.value)
    check_environment(Config.model_validate({"bridges": {"mock": {"runtime": "mock",
                                                                  "required_env": ["K"]}}}), env={"K": "v"})


def test_parse_size() -> None:
    assert parse_size("512m") == 512 * 1024**2
    assert parse_size("64KiB") == 64 * 1024
    assert parse_size(10) == 10
    with pytest.raises(ValueError):
        parse_size("lots")


def test_strict_bridges_and_what_a_skipped_bridge_lacks() -> None:
    assert load_config(env={}).strict_bridges is False
    assert load_config(env={"MLBRIDGE_STRICT_BRIDGES": "true"}).strict_bridges is True
    assert load_config(env={}, strict_bridges=True).strict_bridges is True
    bridge = BridgeConfig(runtime="mock", required_packages=["grpcio", "surely-not-a", "surely-not-b"])
    assert missing_packages(bridge) == ["surely-not-a", "surely-not-b"]
    assert skip_reason(["surely-not-a", "surely-not-b"]) == (
        "its framework is not installed (packages 'surely-not-a', 'surely-not-b' are not installed here); "
        "pip install surely-not-a surely-not-b (the shipped bridges: pip install 'mlbridge[frameworks]') "
        "or use --backend docker")
