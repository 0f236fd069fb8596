"""The kubernetes backend against a real cluster: skipped unless one is named, never faked.

Set ``MLBRIDGE_KUBECONFIG`` to a kubeconfig whose user has the Role of
deploy/kubernetes/rbac.yaml in ``MLBRIDGE_K8S_NAMESPACE`` (default
``mlbridge``; it must exist, ideally with the Pod Security labels of
deploy/kubernetes/namespace.yaml), and ``MLBRIDGE_K8S_IMAGE`` to the mock
bridge's image pinned by digest in a registry the cluster pulls from
(``mlbridge images build mock``, push, then ``repo@sha256:...``).
``MLBRIDGE_K8S_RUNTIME_CLASS`` optionally names a RuntimeClass.

What runs: start (Secret, NetworkPolicy, Pod admitted by the API server, the
watch until the pod runs with an IP), the objects as the server stored them
(owner references, the hardened pod), mark_tenant, exit_info, stop and its
cleanup, reap. Dialling the worker over mutual TLS needs this process to
reach pod IPs *and* to be admitted by the worker's NetworkPolicy (which admits
only the orchestrator's pods): set ``MLBRIDGE_K8S_DIAL=1`` when the tests run
in a pod labelled like the orchestrator (or on a cluster whose CNI does not
enforce NetworkPolicy); without it that test is skipped.

Every object is created with a scope label unique to the session and removed
in teardown.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

KUBECONFIG = os.environ.get("MLBRIDGE_KUBECONFIG", "")
IMAGE = os.environ.get("MLBRIDGE_K8S_IMAGE", "")
NAMESPACE = os.environ.get("MLBRIDGE_K8S_NAMESPACE", "mlbridge")
RUNTIME_CLASS = os.environ.get("MLBRIDGE_K8S_RUNTIME_CLASS") or None

pytestmark = pytest.mark.skipif(
    not (KUBECONFIG and IMAGE),
    reason="no Kubernetes cluster named: set MLBRIDGE_KUBECONFIG (a kubeconfig) and MLBRIDGE_K8S_IMAGE (the mock "
           "image pinned by digest) to run the kubernetes backend against a real cluster",
)

from orchestrator.backends.base import WorkerHandle, WorkerSpec  # noqa: E402
from orchestrator.backends.kubernetes import KubernetesBackend  # noqa: E402
from orchestrator.backends.kubernetes.pss import violations  # noqa: E402
from orchestrator.backends.kubernetes.settings import load_settings  # noqa: E402
from orchestrator.backends.tls import TcpMtlsChannel  # noqa: E402
from orchestrator.config import BridgeConfig  # noqa: E402

MIB = 1024 * 1024


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[KubernetesBackend]:
    options = {"namespace": NAMESPACE, "kubeconfig": KUBECONFIG, "images": {"mock": IMAGE},
               "runtime_class_name": RUNTIME_CLASS}
    scope = f"itest-{uuid.uuid4().hex[:10]}"
    b = KubernetesBackend(load_settings({k: v for k, v in options.items() if v is not None}),
                          ca_dir=tmp_path / "ca", scope=scope)
    try:
        yield b
    finally:
        asyncio.run(b.reap("nobody"))  # everything of this session's scope
        asyncio.run(b.close())


def _spec(orchestrator: str = "itest0000001") -> WorkerSpec:
    return WorkerSpec(worker_id=f"mock-{uuid.uuid4().hex[:10]}", bridge="mock", orchestrator_id=orchestrator,
                      config=BridgeConfig(runtime="mock", start_timeout_s=180,
                                          limits={"cpus": 0.5, "memory": "256m", "pids": 128}),
                      max_message_bytes=4 * MIB)


def test_start_mark_stop_against_the_cluster(backend: KubernetesBackend) -> None:
    async def scenario() -> None:
        handle = await backend.start(_spec())
        assert isinstance(handle.channel, TcpMtlsChannel) and handle.channel.host
        pod = await backend._run(backend.api.read_pod, str(handle.ref))
        assert pod is not None
        # The pod as the API server admitted it still meets the profile (defaults included).
        assert violations(pod) == []
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert await backend.exit_info(handle) is None
        await backend.mark_tenant(handle, "acme")
        rows = await backend.list({"io.mlbridge.tenant": "acme"})
        assert [r["name"] for r in rows] == [handle.ref]
        await backend.stop(handle, timeout=5)
        info = await backend.exit_info(handle)
        assert info is not None and not info.oom_killed and "by mlbridge" in info.reason

    asyncio.run(scenario())


def test_reap_removes_another_orchestrators_workers(backend: KubernetesBackend) -> None:
    async def scenario() -> None:
        mine = await backend.start(_spec("itest0000001"))
        theirs = await backend.start(_spec("itest0000dead"))
        assert await backend.reap("itest0000001") == 1
        names = {r["name"] for r in await backend.list({})}
        assert mine.ref in names
        assert theirs.ref not in names
        await backend.stop(mine, kill=True)

    asyncio.run(scenario())


@pytest.mark.skipif(os.environ.get("MLBRIDGE_K8S_DIAL") != "1",
                    reason="dialling a worker needs routable pod IPs and a pod the worker's NetworkPolicy admits "
                           "(set MLBRIDGE_K8S_DIAL=1 where that holds)")
def test_the_worker_serves_health_over_mutual_tls(backend: KubernetesBackend) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async def scenario() -> None:
        handle: WorkerHandle = await backend.start(_spec())
        channel = handle.channel.open([])
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(120):
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except Exception:  # noqa: BLE001 - the runtime is still starting
                    await asyncio.sleep(1)
            else:
                raise AssertionError(f"worker never served: {backend.log_tail(handle)}")
        finally:
            await channel.close()
            await backend.stop(handle, kill=True)

    asyncio.run(scenario())
