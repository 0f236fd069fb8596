"""orchestrator.testing against the real testcontainers library and a real engine.

The orchestrator runs in ``mlbridge/orchestrator`` (CI builds it with
``images build orchestrator``; the fixture builds it again, offline: reused
in 0.5 s when unchanged, 5 s after a code change, about 30 s when only the
base images exist). With the
docker backend its workers are real containers on the same engine, and gone
after ``stop()``; with the process backend they are processes in its
container. Two tenants of one policy cannot see each other's resources.
The pytest plugin's fixtures run in a pytester session.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import yaml
from testcontainers.core.config import testcontainers_config

from orchestrator import MLBridge, NotFound, Unauthenticated, Unavailable
from orchestrator.audit import verify_file
from orchestrator.images import build_images, recorded_image_id, verify_image
from orchestrator.testing import MLBridgeContainer, default_image
from tests.harness import digest

pytestmark = [pytest.mark.docker]
pytest_plugins = ["pytester"]

ALICE, BOB = "alice-tc-token-0c1d2e3f", "bob-tc-token-4a5b6c7d"
POLICY = {
    "version": 1,
    "tenants": {
        name: {"tokens": [digest(token)], "bridges": ["mock", "custom"],
               "rules": [{"name": "everything", "effect": "allow"}]}
        for name, token in (("alice", ALICE), ("bob", BOB))
    },
}
CODE = "def main(inputs):\n    return sum(range(inputs['n']))\n"


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    # No registry here: Ryuk (testcontainers' reaper) cannot be pulled, so it is
    # off unless its image is already in the engine; stop() and labels clean up.
    try:
        client.images.get(testcontainers_config.ryuk_image)
    except docker.errors.ImageNotFound:
        testcontainers_config.ryuk_disabled = True
    # The image must hold this checkout's code: reused when unchanged (0.5 s), its last
    # layers rebuilt after a change to orchestrator/ or runtimes/ (about 5 s).
    build_images(["orchestrator"], progress=lambda _: None, offline=True, client=client)
    verify_image(client, default_image())
    yield client
    client.close()


def _two_tenants(mb: MLBridgeContainer) -> None:
    """alice's resource is invisible to bob; no token is no entry."""
    with mb.get_client(token=ALICE) as alice, mb.get_client(token=BOB) as bob:
        rid = alice.create_resource("mock", "counter", {"start": 1})
        assert alice.execute_resource(rid, {"add": 2}) == {"value": 3}
        assert rid in [r["resource_id"] for r in alice.list_resources()]
        assert rid not in [r["resource_id"] for r in bob.list_resources()]
        with pytest.raises(NotFound):
            bob.execute_resource(rid, {"add": 1})
        with pytest.raises(NotFound):
            bob.delete_resource(rid)
        assert alice.delete_resource(rid)
        assert rid not in [r["resource_id"] for r in alice.list_resources()]
    with mb.get_client() as anonymous, pytest.raises(Unauthenticated):
        anonymous.call("mock", "mock:echo", {"x": 1})


def test_process_backend(engine: docker.DockerClient, tmp_path: Path) -> None:
    container = MLBridgeContainer(backend="process").with_policy(POLICY).with_audit_log()
    with container as mb:
        assert mb.startup_seconds is not None and mb.startup_seconds < 60
        assert mb.worker_containers() == []
        with mb.get_client(token=ALICE) as client:
            assert client.call("mock", "mock:echo", {"x": 1}) == {"x": 1}
            assert client.call("custom", "custom:run", {"code": CODE, "inputs": {"n": 10}})["result"] == 45
        _two_tenants(mb)
        (tmp_path / "audit.jsonl").write_text(mb.get_audit_log())
    result = verify_file(tmp_path / "audit.jsonl")
    assert result.ok and result.records > 0, result


def test_docker_backend_workers_are_containers_and_go_with_it(engine: docker.DockerClient, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    mb = MLBridgeContainer(backend="docker").with_bridges(["mock"]).with_policy(policy)
    with mb:
        with mb.get_client(token=ALICE) as client:
            assert client.call("mock", "mock:echo", {"hello": "world"}) == {"hello": "world"}
        workers = mb.worker_containers()
        assert workers, "the docker backend started no worker container"
        for worker in workers:
            worker.reload()
            assert worker.status == "running"
            assert worker.image.id == recorded_image_id("mock")
            assert worker.attrs["HostConfig"]["ReadonlyRootfs"] is True
            assert worker.attrs["HostConfig"]["CapDrop"] == ["ALL"]
            assert worker.attrs["Config"]["User"] == "10001:10001"
        _two_tenants(mb)
        scope, run = mb.scope, mb.run_id
        volume = f"mlbridge-tc-{run}"
        assert engine.volumes.get(volume)
    assert engine.containers.list(all=True, filters={"label": f"io.mlbridge.scope={scope}"}) == []
    assert engine.containers.list(all=True, filters={"label": f"io.mlbridge.testing-run={run}"}) == []
    with pytest.raises(docker.errors.NotFound):
        engine.volumes.get(volume)


def test_stop_sweeps_workers_the_orchestrator_left(engine: docker.DockerClient) -> None:
    """SIGKILL leaves the workers running; stop() still removes them by label."""
    mb = MLBridgeContainer(backend="docker", stop_grace_s=0).with_bridges(["mock"])
    with mb:
        assert mb.worker_containers()
        mb.get_wrapped_container().kill()
        assert any(w.status == "running" for w in mb.worker_containers())
        scope = mb.scope
    assert engine.containers.list(all=True, filters={"label": f"io.mlbridge.scope={scope}"}) == []


def test_startup_failure_carries_the_logs(engine: docker.DockerClient) -> None:
    mb = MLBridgeContainer(backend="process").with_bridges(["dspy"])  # dspy is not in the image
    with pytest.raises(Unavailable, match=r"(?s)exited \(status 1\) before serving.*'dspy' is not installed"):
        mb.start()
    assert engine.containers.list(all=True, filters={"label": f"io.mlbridge.testing-run={mb.run_id}"}) == []


def test_pytest_plugin_fixtures(engine: docker.DockerClient, pytester: pytest.Pytester) -> None:
    pytester.makeini(textwrap.dedent("""
        [pytest]
        mlbridge_backend = process
        mlbridge_bridges = mock
    """))
    (pytester.path / "policy.json").write_text(json.dumps(POLICY))
    pytester.makepyfile(textwrap.dedent(f"""
        import pytest
        from orchestrator import NotFound

        def test_nothing_asked():
            pass

        def test_echo(mlbridge_client, mlbridge_server):
            assert mlbridge_client.call("mock", "mock:echo", {{"x": 1}}) == {{"x": 1}}
            assert mlbridge_server.config["bridges"].keys() == {{"mock"}}

        def test_same_server(mlbridge_container, mlbridge_server):
            assert mlbridge_container is mlbridge_server

        @pytest.mark.mlbridge(policy="policy.json", token="{ALICE}")
        def test_marked_server(mlbridge_client, mlbridge_container, mlbridge_server):
            assert mlbridge_container is not mlbridge_server
            rid = mlbridge_client.create_resource("mock", "counter", {{"start": 5}})
            with mlbridge_container.get_client(token="{BOB}") as bob:
                with pytest.raises(NotFound):
                    bob.execute_resource(rid, {{}})
    """))
    before = {c.id for c in engine.containers.list(all=True, filters={"label": "io.mlbridge.role=orchestrator"})}
    result = pytester.runpytest_inprocess("-p", "orchestrator.testing.pytest_plugin", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    after = {c.id for c in engine.containers.list(all=True, filters={"label": "io.mlbridge.role=orchestrator"})}
    assert after == before, "the plugin left orchestrator containers behind"


def test_plugin_starts_nothing_unless_asked(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile("def test_plain():\n    assert True\n")
    started: list[MLBridgeContainer] = []
    monkeypatch.setattr(MLBridgeContainer, "start", lambda self: started.append(self))
    result = pytester.runpytest_inprocess("-p", "orchestrator.testing.pytest_plugin", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert started == []


def test_client_from_the_address(engine: docker.DockerClient) -> None:
    with MLBridgeContainer(backend="process").with_bridges(["mock"]) as mb:
        with MLBridge.connect(mb.get_address()) as client:
            assert client.call("mock", "mock:echo", {"y": 2}) == {"y": 2}
