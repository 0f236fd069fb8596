"""A bridge from a package outside runtimes/ works with no change to core."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import MLBridge
from tests.harness import ServerThread, make_config

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "extbridge"


def _use(tmp: Path, runtime: str, env: dict[str, str]) -> None:
    cfg = make_config(tmp, default_bridge="greeter",
                      bridges={"greeter": {"runtime": runtime, "pool_size": 1, "env": env}})
    with ServerThread(cfg) as srv, MLBridge.connect(srv.target) as mb:
        assert mb.call("greeter", "greeter:greet", {"name": "ada"}) == {"greeting": "hello ada"}
        assert mb.describe("greeter")["framework_version"] == "1.0"
        rid = mb.create_resource("greeter", "greeting", {"template": "hi {name}!"})
        assert mb.execute_resource(rid, {"name": "bob"}) == {"text": "hi bob!"}
        assert mb.get_adapter("greeter").greet(name="x") == {"greeting": "hello x"}


def test_bridge_by_import_string(tmp_path: Path) -> None:
    _use(tmp_path, "mlbridge_ext_fixture.bridge:GreeterBridge", {"PYTHONPATH": str(FIXTURE)})


def test_bridge_by_entry_point(tmp_path: Path) -> None:
    # Installed the way pip installs a distribution: a dist-info with entry_points.txt on the path.
    site = tmp_path / "site"
    dist = site / "mlbridge_ext_fixture-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlbridge-ext-fixture\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[mlbridge.bridges]\ngreeter = mlbridge_ext_fixture.bridge:GreeterBridge\n")
    _use(tmp_path, "greeter", {"PYTHONPATH": f"{site}:{FIXTURE}"})


def test_unknown_bridge_fails_startup_with_a_clear_message(tmp_path: Path) -> None:
    from runtimes.wire.errors import ConfigError

    cfg = make_config(tmp_path, default_bridge="ghost", bridges={"ghost": {"runtime": "ghost", "pool_size": 1}})
    with pytest.raises(ConfigError, match=r"no bridge named 'ghost' in entry point group 'mlbridge.bridges'"):
        with ServerThread(cfg):
            pass


def test_serves_on_a_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "mlbridge.sock"
    cfg = make_config(tmp_path, listen=f"unix://{sock}", bridges={"mock": {"runtime": "mock", "pool_size": 1}})
    with ServerThread(cfg) as srv, MLBridge.connect(srv.target) as mb:
        assert srv.target == f"unix://{sock}" and sock.is_socket()
        assert mb.call("mock", "mock:echo", {"via": "unix"}) == {"via": "unix"}
