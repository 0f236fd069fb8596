"""mlbridge installed from a wheel: recipes carried in the package, bridges skipped, options anywhere.

The wheel itself is built here (no Docker); tests/integration/test_wheel_anywhere.py
installs it in a fresh venv and builds an image with it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import MLBridge
from orchestrator.cli import build_parser
from orchestrator.images import _paths
from runtimes.wire.errors import BridgeNotFound, ConfigError
from tests.harness import ServerThread, make_config

ROOT = Path(__file__).resolve().parents[2]
#: What building a wheel reads from the source tree.
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "Dockerfile.base",
                "images", "orchestrator", "runtimes")
_JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "recipes")


def build_wheel(out: Path) -> Path:
    """Build mlbridge's wheel from a copy of the source tree (the checkout's build/ is left alone)."""
    src = out / "src"
    src.mkdir(parents=True)
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=_JUNK)
        else:
            shutil.copy2(path, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-q", "-w", str(out / "dist"), str(src)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = (out / "dist").glob("mlbridge-*.whl")
    return wheel


def tree_digests(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``, caches left out."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")}


# -- the wheel carries the recipes ---------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_carries_every_recipe_and_the_exact_runtimes_tree(wheel: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp_path)
    recipes = tmp_path / "orchestrator/images/recipes"
    expected = {"Dockerfile.base": ROOT / "Dockerfile.base", "pyproject.toml": ROOT / "pyproject.toml"}
    expected.update({f"images/{k}": ROOT / "images" / k for k in tree_digests(ROOT / "images")})
    assert tree_digests(recipes) == {k: hashlib.sha256(v.read_bytes()).hexdigest() for k, v in expected.items()}
    assert (recipes / "images/transformers/cuda/Dockerfile").is_file()
    # Images built from the wheel copy the installed runtimes/: byte for byte the checkout's,
    # so they get the same image ids (the classic builder's cache keys on content).
    assert tree_digests(tmp_path / "runtimes") == tree_digests(ROOT / "runtimes")


def test_source_dir_prefers_env_then_checkout_then_packaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLBRIDGE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("MLBRIDGE_SOURCE_DIR", raising=False)
    assert _paths.source_dir() == ROOT  # running from the checkout

    packaged = tmp_path / "recipes"
    (packaged / "images/mock").mkdir(parents=True)
    (packaged / "images/mock/Dockerfile").write_text("FROM x\n")
    (packaged / "Dockerfile.base").write_text("FROM y\n")
    (packaged / "pyproject.toml").write_text("[project]\n")
    monkeypatch.setattr(_paths, "PACKAGED_RECIPES", packaged)
    monkeypatch.setattr(_paths, "_checkout", lambda: tmp_path / "site-packages")
    view = _paths.source_dir()
    assert view.is_relative_to(tmp_path / "state" / "source")
    assert (view / "images").resolve() == packaged / "images"
    assert (view / "Dockerfile.base").read_text() == "FROM y\n"
    assert (view / "runtimes").resolve() == ROOT / "runtimes"  # the installed package
    assert (view / "runtimes" / "start.py").is_file()
    assert _paths.runtimes_dir() == view / "runtimes"
    assert _paths.known_bridges() == ["mock"]
    assert _paths.source_dir() == view  # the same view again, links refreshed in place

    monkeypatch.setenv("MLBRIDGE_SOURCE_DIR", str(ROOT))
    assert _paths.source_dir() == ROOT
    monkeypatch.setenv("MLBRIDGE_SOURCE_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="MLBRIDGE_SOURCE_DIR"):
        _paths.source_dir()

    monkeypatch.delenv("MLBRIDGE_SOURCE_DIR")
    monkeypatch.setattr(_paths, "PACKAGED_RECIPES", tmp_path / "nothing")
    with pytest.raises(ConfigError, match="not an mlbridge checkout and this installation carries none"):
        _paths.source_dir()


def test_wheelhouse_can_be_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLBRIDGE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("MLBRIDGE_WHEELHOUSE", raising=False)
    assert _paths.wheelhouse_dir() == tmp_path / "state" / "wheelhouse"
    monkeypatch.setenv("MLBRIDGE_WHEELHOUSE", str(tmp_path / "shared"))
    assert _paths.wheelhouse_dir() == tmp_path / "shared"


# -- bridges whose framework is missing are skipped -------------------------------------------


MISSING = "mlbridge-no-such-framework"


def _bridges() -> dict[str, object]:
    return {"mock": {"runtime": "mock", "pool_size": 1, "held": 0},
            "ghost": {"runtime": "mock", "pool_size": 1, "held": 0, "required_packages": [MISSING, "grpcio"]}}


def test_a_bridge_without_its_framework_is_skipped_and_named(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, _bridges())
    with ServerThread(cfg) as srv:
        assert srv.app.skipped == {"ghost": (
            f"its framework is not installed (package '{MISSING}' is not installed here); pip install {MISSING} "
            "(the shipped bridges: pip install 'mlbridge[frameworks]') or use --backend docker")}
        assert sorted(srv.orch.pools) == ["mock"]
        with MLBridge.connect(srv.target) as mb:
            assert mb.call("mock", "mock:echo", {"x": 1}) == {"x": 1}
            assert [b["name"] for b in mb.list_bridges()] == ["mock"]
            with pytest.raises(BridgeNotFound) as info:
                mb.call("ghost", "mock:echo", {})
    assert "bridge 'ghost' is not served: it was skipped at start: its framework is not installed" in str(
        info.value)


def test_strict_refuses_as_before(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, _bridges(), strict_bridges=True)
    with pytest.raises(ConfigError, match=f"bridge 'ghost' needs package '{MISSING}'"):
        with ServerThread(cfg):
            pass


def test_a_skipped_default_bridge_refuses_to_start(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, _bridges(), default_bridge="ghost")
    with pytest.raises(ConfigError, match="the default bridge 'ghost' cannot be served"):
        with ServerThread(cfg):
            pass


def test_serve_prints_what_it_skipped(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "default_bridge: mock\nbackend: process\nbridges:\n"
        "  mock: {runtime: mock, pool_size: 1, held: 0}\n"
        f"  ghost: {{runtime: mock, pool_size: 1, held: 0, required_packages: [{MISSING}]}}\n")
    env = {**os.environ, "MLBRIDGE_STATE_DIR": str(tmp_path / "state")}
    cmd = [sys.executable, "-m", "orchestrator.cli", "serve", "--config", str(config), "--listen", "127.0.0.1:0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        second = proc.stdout.readline()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert first.startswith("mlbridge: skipping bridge ghost: its framework is not installed"), (first, err)
    assert second.startswith("mlbridge: serving mock on "), (second, err)
    assert "skipping bridge ghost:" in err  # the log line too

    strict = subprocess.run([*cmd, "--strict"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert strict.returncode == 1
    assert f"bridge 'ghost' needs package '{MISSING}'" in strict.stderr


# -- connection options after the command -----------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["call", "--address", "A", "mock", "mock:echo"],
    ["call", "mock", "mock:echo", "--address", "A"],
    ["--address", "B", "call", "mock", "mock:echo", "--address", "A"],
    ["images", "list", "--address", "A"],
    ["images", "--address", "A", "history", "mock"],
    ["status", "--address", "A"],
    ["port", "--address", "A"],
])
def test_address_after_the_command_wins(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).address == "A"


def test_every_client_command_takes_every_connection_option() -> None:
    flags = ["--address", "A", "--token", "T", "--timeout", "2.5", "--tls-ca", "ca.pem",
             "--tls-cert", "c.pem", "--tls-key", "k.pem"]
    parser = build_parser()
    before = parser.parse_args([*flags, "bridges"])
    after = parser.parse_args(["bridges", *flags])
    for args in (before, after):
        assert (args.address, args.token, args.timeout, args.tls_ca, args.tls_cert, args.tls_key) == (
            "A", "T", 2.5, "ca.pem", "c.pem", "k.pem")
    plain = parser.parse_args(["bridges"])
    assert plain.token is None and plain.timeout is None  # not given anywhere: the defaults stand

    leaves = dict(_leaf_parsers(parser, "mlbridge"))
    assert {"mlbridge call", "mlbridge images rollback", "mlbridge port", "mlbridge serve"} <= set(leaves)
    for name, leaf in leaves.items():
        if name == "mlbridge serve":
            continue
        for flag in flags[::2]:
            assert flag in leaf._option_string_actions, (name, flag)


def _leaf_parsers(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield name, parser
    for action in subs:
        for child_name, child in action.choices.items():
            yield from _leaf_parsers(child, f"{name} {child_name}")


def test_serve_keeps_its_own_tls_options() -> None:
    args = build_parser().parse_args(["--tls-cert", "client.pem", "serve", "--tls-cert", "server.pem",
                                      "--tls-key", "server.key", "--strict"])
    assert (args.tls_cert, args.serve_tls_cert, args.serve_tls_key, args.strict) == (
        "client.pem", "server.pem", "server.key", True)
