"""The tcp-mtls worker channel: the orchestrator's CAs, per-worker certificates, and who is refused."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orchestrator.backends.tls import (
    CERT_FILE,
    CLIENT_CA_FILE,
    KEY_FILE,
    TcpMtlsChannel,
    WorkerCA,
    server_name,
    write_worker_files,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> WorkerCA:
    return WorkerCA(tmp_path_factory.mktemp("state") / "ca")


class Runtime:
    """A mock runtime serving the tcp-mtls channel on loopback with the given worker files."""

    def __init__(self, tls_dir: Path, log: Path) -> None:
        self.port = free_port()
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtimes.core", "--bridge", "mock", "--listen", f"127.0.0.1:{self.port}",
             "--tls-dir", str(tls_dir)], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            assert self.proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "runtime did not listen"
            time.sleep(0.05)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def runtime(ca: WorkerCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """Worker w1's runtime, with w1's certificate."""
    d = tmp_path_factory.mktemp("w1")
    rt = Runtime(write_worker_files(d, ca.issue("w1")), d / "log")
    yield rt
    rt.close()


def health(open_channel: Callable[[], grpc.aio.Channel]) -> int:
    """The runtime's health over a channel opened inside the event loop (as the pool does)."""
    async def ask() -> int:
        async with open_channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return int((await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status)
    return asyncio.run(ask())


def test_certificates_name_their_worker_and_come_from_the_right_ca(ca: WorkerCA) -> None:
    creds = ca.issue("w-7")
    cert = x509.load_pem_x509_certificate(creds.files[CERT_FILE])
    assert creds.server_name == server_name("w-7") == "w-7.workers.mlbridge"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["w-7.workers.mlbridge"]
    assert cert.issuer == ca.worker_ca.cert.subject
    assert creds.files[CLIENT_CA_FILE] == ca.client_ca.cert_pem  # the worker trusts the client CA, not its own
    assert ca.client.cert.issuer == ca.client_ca.cert.subject
    assert (creds.not_after - cert.not_valid_before_utc).days <= 8  # short-lived
    assert ca.issue("w-7").files[KEY_FILE] != creds.files[KEY_FILE]  # a new key every time


def test_the_cas_persist_with_private_keys_kept_private(ca: WorkerCA) -> None:
    again = WorkerCA(ca.directory)
    assert again.worker_ca.cert == ca.worker_ca.cert and again.client_ca.cert == ca.client_ca.cert
    assert stat.S_IMODE(os.stat(ca.directory).st_mode) == 0o700
    for key in ca.directory.glob("*.key"):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600, key


def test_worker_files_are_written_for_the_worker_alone(ca: WorkerCA, tmp_path: Path) -> None:
    tls = write_worker_files(tmp_path, ca.issue("w9"))
    assert sorted(p.name for p in tls.iterdir()) == sorted([CERT_FILE, KEY_FILE, CLIENT_CA_FILE])
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o400 for p in tls.iterdir())


def test_the_orchestrator_reaches_the_worker_it_expects(ca: WorkerCA, runtime: Runtime) -> None:
    channel = TcpMtlsChannel("127.0.0.1", runtime.port, server_name("w1"), ca.client_credentials())
    assert channel.target == f"127.0.0.1:{runtime.port}"
    assert health(lambda: channel.open([])) == health_pb2.HealthCheckResponse.SERVING


def test_a_worker_presenting_another_workers_certificate_is_refused(ca: WorkerCA, runtime: Runtime) -> None:
    # The runtime on this port holds w1's certificate; the orchestrator expects w2 there.
    channel = TcpMtlsChannel("127.0.0.1", runtime.port, server_name("w2"), ca.client_credentials())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        health(lambda: channel.open([]))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_from_another_ca_is_refused(ca: WorkerCA, runtime: Runtime, tmp_path: Path) -> None:
    other = WorkerCA(tmp_path / "other-ca")
    channel = TcpMtlsChannel("127.0.0.1", runtime.port, server_name("w1"), other.client_credentials())
    with pytest.raises(grpc.aio.AioRpcError):
        health(lambda: channel.open([]))


@pytest.mark.parametrize("client", ["none", "worker"])
def test_the_runtime_takes_only_the_orchestrators_client_certificate(ca: WorkerCA, runtime: Runtime,
                                                                      client: str) -> None:
    # Without a client certificate, or with a worker's own (signed by the worker CA), no call gets through:
    # a worker holding its files is no client of another worker.
    if client == "none":
        creds = grpc.ssl_channel_credentials(root_certificates=ca.worker_ca.cert_pem)
    else:
        w3 = ca.issue("w3")
        creds = grpc.ssl_channel_credentials(root_certificates=ca.worker_ca.cert_pem,
                                             private_key=w3.files[KEY_FILE], certificate_chain=w3.files[CERT_FILE])
    channel = TcpMtlsChannel("127.0.0.1", runtime.port, server_name("w1"), creds)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        health(lambda: channel.open([]))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_is_refused(runtime: Runtime) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        health(lambda: grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}"))


def test_the_runtime_refuses_to_start_without_its_files(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "runtimes.core", "--bridge", "mock", "--listen",
                        f"127.0.0.1:{free_port()}", "--tls-dir", str(tmp_path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "cannot read worker.crt" in r.stderr


def test_an_orchestrator_on_the_tcp_mtls_channel(tmp_path: Path) -> None:
    """The process backend runs the same channel on loopback: calls, streams and resources go over it."""
    from orchestrator.client import MLBridge
    from tests.harness import ServerThread, make_config

    cfg = make_config(tmp_path, {"mock": {"runtime": "mock", "pool_size": 1}}, worker_channel="tcp-mtls")
    with ServerThread(cfg) as srv, MLBridge.connect(srv.target) as mb:
        assert mb.call("mock", "mock:echo", {"x": 1}) == {"x": 1}
        assert [e.kind for e in mb.call_stream("mock", "mock:stream", {"n": 2})][-1] == "result"
        rid = mb.create_resource("mock", "counter", {"start": 1})
        assert mb.execute_resource(rid, {"add": 1}) == {"value": 2}
        workers = [w for p in srv.orch.pools.values() for w in p.workers.values()]
        assert workers and all(isinstance(w.handle.channel, TcpMtlsChannel) for w in workers)
        assert all(w.handle.channel.server_name == server_name(w.id) for w in workers)
        assert (Path(cfg.state_dir) / "ca" / "worker-ca.crt").exists()
