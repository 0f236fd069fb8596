"""A real Prometheus server scrapes an orchestrator whose workers are docker containers.

Debian's ``prometheus`` runs on loopback with a one-second scrape interval;
everything is read back through its HTTP query API, as a dashboard would.
Also: per-bridge health turns NOT_SERVING when a bridge's image disappears
and back to SERVING when it returns, while the other bridges stay SERVING.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orchestrator import MLBridge
from orchestrator.images import image_tag
from runtimes.wire.errors import MLBridgeError
from tests.harness import CI, ServerThread, digest, make_config

pytestmark = [pytest.mark.docker, pytest.mark.slow]


POLICY = f"""
version: 1
defaults:
  bridges: [mock, custom, mockx]
  rules:
    - {{name: read-only, effect: allow, actions: [list_bridges, describe, list_resources, stats, cancel]}}
    - {{name: calls, effect: allow, actions: [call, create_resource, execute_resource, delete_resource]}}
  quotas: {{max_concurrent_calls: 8, max_calls_per_minute: 10000, max_resources: 5, max_workers: 2}}
tenants:
  alice:
    tokens: ["{digest('alice-token')}"]
  bob:
    tokens: ["{digest('bob-token')}"]
"""

LIMITS = {"cpus": 0.5, "memory": "256m", "pids": 64, "tmpfs_size": "8m", "nofile": 256}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def dk() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="module")
def test_image(dk: docker.DockerClient) -> Iterator[str]:
    """An image of the mock bridge of this module's own, so removing it touches nothing else."""
    tag = f"mlbridge-test/mock:health-{uuid.uuid4().hex[:8]}"
    build(dk, tag)
    yield tag
    try:
        dk.images.remove(tag, force=True)
    except docker.errors.ImageNotFound:
        pass


def build(dk: docker.DockerClient, tag: str) -> None:
    dockerfile = f"FROM {image_tag('mock')}\nLABEL io.mlbridge.test=health\n".encode()
    dk.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True, pull=False)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, test_image: str) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp("obsdocker")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    policy.chmod(0o600)
    bridges = {
        "mock": {"runtime": "mock", "pool_size": 1, "held": 0, "limits": LIMITS},
        "custom": {"runtime": "custom", "pool_size": 1, "held": 0, "limits": LIMITS},
        # No spare: the tests remove its image before its first worker starts.
        "mockx": {"runtime": "mock", "image": test_image, "pool_size": 0, "held": 0, "limits": LIMITS},
    }
    cfg = make_config(tmp, backend="docker", bridges=bridges, policy=str(policy), metrics_listen="127.0.0.1:0")
    with ServerThread(cfg) as s:
        yield s


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, srv: ServerThread) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        message = "Debian's prometheus is not installed: apt-get install prometheus"
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    tmp = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    target = f"127.0.0.1:{srv.app.observability.metrics_port}"
    (tmp / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "mlbridge", "static_configs": [{"targets": [target]}]}],
    }))
    proc = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=(tmp / "prometheus.log").open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (tmp / "prometheus.log").read_text()[-2000:]
                    raise RuntimeError(f"prometheus did not start:\n{log}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """The instant vector Prometheus answers for ``promql``."""
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def wait_query(url: str, promql: str, ok: Any, timeout: float = 45.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        result = query(url, promql)
        if ok(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{promql}: {result}")
        time.sleep(0.5)


def test_prometheus_scrapes_calls_workers_and_deaths(srv: ServerThread, prometheus: str,
                                                     dk: docker.DockerClient) -> None:
    code = "def main(inputs):\n    return inputs['n'] * 2"
    for token in ("alice-token", "bob-token"):
        with MLBridge.connect(srv.target, token=token) as mb:
            for i in range(3):
                assert mb.call("mock", "mock:echo", {"i": i}) == {"i": i}
            assert mb.call("custom", "custom:run", {"code": code, "inputs": {"n": 21}})["result"] == 42
    # Calls per bridge and tenant.
    result = wait_query(prometheus, "sum by (bridge, tenant) (mlbridge_calls_total)", lambda r: len(r) >= 4)
    got = {(s["metric"]["bridge"], s["metric"]["tenant"]): float(s["value"][1]) for s in result}
    for bridge in ("mock", "custom"):
        for tenant in ("alice", "bob"):
            assert got[(bridge, tenant)] >= (3 if bridge == "mock" else 1), got
    # Memory of each live worker.
    live = {w.id for p in srv.orch.pools.values() for w in p.workers.values() if w.state == "ready"}
    assert len(live) >= 4  # a claimed worker of each tenant on each bridge, plus spares
    result = wait_query(prometheus, "mlbridge_worker_memory_bytes",
                        lambda r: live <= {s["metric"]["worker"] for s in r})
    assert all(float(s["value"][1]) > 1_000_000 for s in result if s["metric"]["worker"] in live)
    tenants = {s["metric"]["worker"]: s["metric"].get("tenant", "") for s in result}  # "" (a spare) is dropped
    alice_mock = srv.orch.pools["mock"].claimed("alice")[0]
    assert tenants[alice_mock.id] == "alice"
    # A worker killed with `docker kill` shows as a death by kill.
    dk.containers.get(alice_mock.handle.ref).kill()
    wait_query(prometheus, 'sum(mlbridge_worker_deaths_total{bridge="mock",cause="killed"})',
               lambda r: r and float(r[0]["value"][1]) >= 1)
    with MLBridge.connect(srv.target, token="alice-token") as mb:
        assert mb.call("mock", "mock:echo", {"after": 1}) == {"after": 1}
    # The gRPC server's own series, and bridge health.
    wait_query(prometheus, 'grpc_server_handled_total{grpc_method="Call",grpc_code="OK"}',
               lambda r: r and float(r[0]["value"][1]) >= 8)
    up = {s["metric"]["bridge"]: s["value"][1] for s in query(prometheus, "mlbridge_bridge_up")}
    assert up["mock"] == "1" and up["custom"] == "1"


def health(srv: ServerThread, service: str) -> int:
    with grpc.insecure_channel(srv.target) as ch:
        stub: Any = health_pb2_grpc.HealthStub(ch)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def wait_health(srv: ServerThread, service: str, status: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while health(srv, service) != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"{service} is not {status}")
        time.sleep(0.2)


def test_a_bridge_whose_image_is_gone_is_not_serving_while_the_others_are(
        srv: ServerThread, dk: docker.DockerClient, test_image: str) -> None:
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert health(srv, "mlbridge.bridge.mockx") == serving
    dk.images.remove(test_image, force=True)
    with MLBridge.connect(srv.target, token="alice-token") as mb:
        with pytest.raises(MLBridgeError, match="not present in the Docker engine"):
            mb.call("mockx", "mock:echo", {})
        wait_health(srv, "mlbridge.bridge.mockx", not_serving)
        for bridge in ("mock", "custom"):
            assert health(srv, f"mlbridge.bridge.{bridge}") == serving
        assert health(srv, "") == serving
        bridges = mb.stats()["bridges"]
        assert bridges["mockx"]["serving"] is False
        assert "not present" in bridges["mockx"]["health"]
        # The image comes back: the bridge serves again.
        build(dk, test_image)
        deadline = time.monotonic() + 60
        while True:
            try:
                assert mb.call("mockx", "mock:echo", {"back": 1}) == {"back": 1}
                break
            except MLBridgeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        wait_health(srv, "mlbridge.bridge.mockx", serving)


def test_worker_start_failures_are_counted(srv: ServerThread) -> None:
    port = srv.app.observability.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    line = next(line for line in text.splitlines()
                if line.startswith('mlbridge_worker_start_failures_total{bridge="mockx"}'))
    assert float(line.split()[-1]) >= 1


def test_the_metrics_page_names_no_call_or_resource_ids(srv: ServerThread) -> None:
    with MLBridge.connect(srv.target, token="bob-token") as mb:
        rid = mb.create_resource("mock", "counter", {})
        mb.execute_resource(rid, {})
    port = srv.app.observability.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert rid not in text
    assert 'command="execute_resource"' in text



