"""The tcp-mtls worker channel on the real Docker engine (``worker_channel: tcp-mtls``).

Workers listen on TCP on the channel network with their own certificate; the
orchestrator dials them from the host. Checked here: calls work through the
orchestrator; a worker's certificate material is in its mount only, never in
its environment or labels; the orchestrator refuses a worker presenting
another worker's certificate; a worker reaches neither another worker's port
nor the host. Every probe targets addresses of containers and networks this
test creates.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import grpc
import pytest

from orchestrator.backends.base import WorkerHandle
from orchestrator.backends.docker import DockerBackend
from orchestrator.backends.tls import WORKER_PORT, TcpMtlsChannel, server_name
from orchestrator.client import MLBridge
from tests.harness import ServerThread, make_config
from tests.integration.test_docker_backend import Workers, client, run_in  # noqa: F401 (client: a fixture)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]


@pytest.fixture
def tcp_workers(client: docker.DockerClient) -> Iterator[Workers]:  # noqa: F811
    root = Path("/tmp") / f"mlb-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o700)
    w = Workers(client, root, worker_channel="tcp-mtls")
    try:
        yield w
    finally:
        w.cleanup()


def health(channel: TcpMtlsChannel, timeout: float = 30.0) -> str:
    """The runtime's health through ``channel`` ("SERVING"), or the gRPC code that refused it."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async def ask() -> str:
        async with channel.open([]) as ch:
            try:
                reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                                   timeout=timeout, wait_for_ready=False)
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    return asyncio.run(ask())


def ready(w: Workers, handle: WorkerHandle, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    assert isinstance(handle.channel, TcpMtlsChannel)
    while not handle.channel.present():
        assert time.monotonic() < deadline, w.backend.log_tail(handle)
        time.sleep(0.02)


def test_calls_go_over_the_tcp_mtls_channel(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, {"mock": {"runtime": "mock", "pool_size": 1}}, backend="docker",
                      worker_channel="tcp-mtls")
    with ServerThread(cfg) as srv, MLBridge.connect(srv.target) as mb:
        assert mb.call("mock", "mock:echo", {"x": [1, "é"]}) == {"x": [1, "é"]}
        rid = mb.create_resource("mock", "counter", {"start": 1})
        assert mb.execute_resource(rid, {"add": 2}) == {"value": 3}
        workers = [w for p in srv.orch.pools.values() for w in p.workers.values()]
        assert workers and all(isinstance(w.handle.channel, TcpMtlsChannel) for w in workers)
        backend = srv.app.backend
        assert isinstance(backend, DockerBackend)
        net = f"mlbridge-channel-{backend._scope}"
        for w in workers:
            attrs = docker.from_env().api.inspect_container(w.handle.ref)
            assert list(attrs["NetworkSettings"]["Networks"]) == [net]  # the channel network alone
            env = "\n".join(attrs["Config"]["Env"])
            assert "BEGIN" not in env and "BEGIN" not in json.dumps(attrs["Config"]["Labels"])
            assert f"MLBRIDGE_LISTEN=0.0.0.0:{WORKER_PORT}" in env
            assert w.handle.channel.server_name == server_name(w.id)


def test_a_worker_presenting_another_workers_certificate_is_refused(tcp_workers: Workers) -> None:
    a = tcp_workers.start(tcp_workers.spec())
    b = tcp_workers.start(tcp_workers.spec())
    ready(tcp_workers, a)
    ready(tcp_workers, b)
    assert isinstance(a.channel, TcpMtlsChannel) and isinstance(b.channel, TcpMtlsChannel)
    assert health(a.channel) == "SERVING" and health(b.channel) == "SERVING"
    # At a's address the orchestrator expects a's certificate: b's (same CA) is refused, and so on.
    as_if_a = TcpMtlsChannel(b.channel.host, WORKER_PORT, a.channel.server_name, a.channel.credentials)
    assert health(as_if_a, timeout=5) == "UNAVAILABLE"


def test_a_worker_started_with_another_workers_files_never_becomes_ready(tcp_workers: Workers,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    backend = tcp_workers.backend
    backend._open_channel()
    assert backend._ca is not None
    stolen = backend._ca.issue("someone-else")
    monkeypatch.setattr(backend._ca, "issue", lambda worker_id, **kw: stolen)
    handle = tcp_workers.start(tcp_workers.spec())
    assert isinstance(handle.channel, TcpMtlsChannel)
    ready(tcp_workers, handle)  # it listens ...
    assert handle.channel.server_name == stolen.server_name  # (what it was handed)
    expected = TcpMtlsChannel(handle.channel.host, WORKER_PORT, server_name(handle.worker_id),
                              handle.channel.credentials)
    assert health(expected, timeout=5) == "UNAVAILABLE"  # ... but is not the worker the orchestrator started


def test_a_worker_reaches_neither_another_worker_nor_the_host(tcp_workers: Workers,
                                                              client: docker.DockerClient) -> None:  # noqa: F811
    a = tcp_workers.start(tcp_workers.spec())
    b = tcp_workers.start(tcp_workers.spec())
    ready(tcp_workers, a)
    ready(tcp_workers, b)
    assert isinstance(b.channel, TcpMtlsChannel)
    net = tcp_workers.backend._channel_net
    assert net is not None
    probe = """
        import socket, sys
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect((sys.argv[1], int(sys.argv[2])))
        except OSError as exc:
            print("blocked", type(exc).__name__)
        else:
            print("connected")
    """
    for host, port in ((b.channel.host, WORKER_PORT), (net.gateway, 22), (net.gateway, 50051)):
        code, out = run_in(client, a.ref, probe.replace("sys.argv[1]", repr(host)).replace(
            "int(sys.argv[2])", str(port)))
        assert code == 0 and out.strip().startswith("blocked"), (host, port, out)
    # The orchestrator (the host) reaches both.
    assert health(b.channel) == "SERVING"
