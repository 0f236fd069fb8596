"""The orchestrator serving from hardened containers (docker backend), through the public API."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import docker
import pytest

from orchestrator import DeadlineExceeded, MLBridge
from orchestrator.app import App
from orchestrator.backends.docker.egress import network_names
from runtimes.wire.errors import ConfigError, ImageMismatch, OutOfMemory, WorkerDied
from tests.harness import WORKER_CHANNEL, Background, ServerThread, make_config

pytestmark = [pytest.mark.docker, pytest.mark.slow]

BRIDGES = {
    "mock": {"runtime": "mock", "pool_size": 2, "cancel_grace_s": 1.0,
             "limits": {"cpus": 0.5, "memory": "128m", "pids": 64, "tmpfs_size": "8m", "nofile": 128}},
}


@pytest.fixture(scope="module")
def dk():
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    cfg = make_config(tmp_path_factory.mktemp("dorch"), backend="docker", bridges=BRIDGES)
    with ServerThread(cfg) as s:
        yield s


def ours(dk: docker.DockerClient, srv: ServerThread) -> list:
    return dk.containers.list(filters={"label": f"io.mlbridge.orchestrator={srv.orch.id}"})


def worker_network(srv: ServerThread) -> str:
    """The network a worker starts on: none, or the channel network with worker_channel tcp-mtls."""
    if WORKER_CHANNEL == "unix":
        return "none"
    return network_names("channel", srv.app.backend._scope).network  # type: ignore[attr-defined]


def test_serves_from_hardened_containers(srv: ServerThread, dk: docker.DockerClient) -> None:
    with MLBridge.connect(srv.target) as mb:
        assert mb.call("mock", "mock:echo", {"x": 1}) == {"x": 1}
        assert mb.list_bridges()[0]["backend"] == "docker"
    claimed = srv.orch.pools["mock"].claimed("default")[0]
    deadline = time.monotonic() + 10  # the rename runs in the background after the claim
    while not dk.containers.get(claimed.handle.ref).name.endswith(".default") and time.monotonic() < deadline:
        time.sleep(0.05)
    # Held workers (started ahead, runtime waiting) are as hardened as the rest, and listed too.
    deadline = time.monotonic() + 30
    while len(srv.orch.pools["mock"]._held) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    held = {h.worker_id for h in srv.orch.pools["mock"]._held}
    assert len(held) == 2
    containers = ours(dk, srv)
    assert len(containers) >= 4
    assert held <= {c.labels["io.mlbridge.worker"] for c in containers}
    for c in containers:
        a = c.attrs
        host = a["HostConfig"]
        assert a["Config"]["User"] == "10001:10001"
        assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert not any("unconfined" in o for o in host["SecurityOpt"])
        assert host["ReadonlyRootfs"] is True and host["Privileged"] is False
        assert host["NetworkMode"] == worker_network(srv)
        assert host["Memory"] == 128 * 1024 * 1024 == host["MemorySwap"]
        wid = a["Config"]["Labels"]["io.mlbridge.worker"]
        # The start-up CPU boost lasts until a worker is ready, so a held one still has it.
        assert host["PidsLimit"] == 64 and host["NanoCpus"] == (1_000_000_000 if wid in held else 500_000_000)
        assert "noexec" in host["Tmpfs"]["/tmp"] and "size=8388608" in host["Tmpfs"]["/tmp"]
        assert host["IpcMode"] == "private" and host["Init"] is True
        assert [m["Destination"] for m in a["Mounts"]] == ["/run/mlbridge"]
        labels = a["Config"]["Labels"]
        assert labels["io.mlbridge.orchestrator"] == srv.orch.id and labels["io.mlbridge.bridge"] == "mock"
        if wid in held:
            assert not a["Name"].endswith(".default")
            continue
        worker = srv.orch.pools["mock"].workers[labels["io.mlbridge.worker"]]
        # A claimed container carries its tenant in its name (labels cannot change once it runs).
        assert a["Name"].endswith(".default") == (worker.tenant == "default"), (a["Name"], worker.tenant)


def test_out_of_memory_is_reported_and_the_worker_replaced(srv: ServerThread) -> None:
    pool = srv.orch.pools["mock"]
    with MLBridge.connect(srv.target) as mb:
        mb.call("mock", "mock:echo", {})
        before = {w.id for w in pool.claimed("default")}
        with pytest.raises(OutOfMemory) as info:
            mb.call("mock", "mock:allocate", {"mb": 400})
        assert "out of memory (limit 128 MiB)" in str(info.value)
        assert info.value.details["oom_killed"] is True
        # Other workers and the orchestrator keep serving; the dead worker is gone.
        assert mb.call("mock", "mock:echo", {"after": 1}) == {"after": 1}
        after = {w.id for w in pool.claimed("default")}
        assert not (before & after)


def test_killed_container_mid_call(srv: ServerThread, dk: docker.DockerClient) -> None:
    with MLBridge.connect(srv.target) as mb:
        mb.call("mock", "mock:echo", {})
        worker = srv.orch.pools["mock"].claimed("default")[0]
        call_id = uuid.uuid4().hex
        with Background(lambda: mb.call("mock", "mock:sleep", {"seconds": 20}, call_id=call_id)) as call:
            while call_id not in srv.orch.runner.inflight:
                time.sleep(0.01)
            dk.containers.get(worker.handle.ref).kill()
            exc = call.error()
        assert isinstance(exc, WorkerDied) and not isinstance(exc, OutOfMemory)
        assert "exited with code 137" in str(exc) or "SIGKILL" in str(exc)
        assert mb.call("mock", "mock:echo", {"ok": True}) == {"ok": True}


def test_deadline_kills_a_worker_that_does_not_stop(srv: ServerThread) -> None:
    pool = srv.orch.pools["mock"]
    with MLBridge.connect(srv.target) as mb:
        mb.call("mock", "mock:echo", {})
        before = {w.id for w in pool.claimed("default")}
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            mb.call("mock", "mock:spin", {"seconds": 30}, timeout=1.0)
        assert time.monotonic() - started < 6
        assert info.value.details.get("worker_replaced") is True
        assert mb.call("mock", "mock:echo", {"x": 2}) == {"x": 2}
        assert not (before & {w.id for w in pool.claimed("default")})


def test_reaper_removes_what_a_killed_orchestrator_left(tmp_path: Path, dk: docker.DockerClient) -> None:
    cfg = make_config(tmp_path, backend="docker", bridges={"mock": {"runtime": "mock", "pool_size": 0}})
    app = App(cfg)
    scope = app.backend._scope_labels  # the deployment's scope label
    leftover = dk.containers.run("mlbridge/mock:0.1.0", ["sleep", "60"], entrypoint=[], detach=True,
                                 network_mode="none", labels={"io.mlbridge.orchestrator": "dead-one",
                                                              "io.mlbridge.bridge": "mock",
                                                              "io.mlbridge.worker": "w", **scope})
    try:
        with ServerThread(cfg, app=app):
            with pytest.raises(docker.errors.NotFound):
                dk.containers.get(leftover.id)
    finally:
        try:
            leftover.remove(force=True)
        except docker.errors.NotFound:
            pass


def test_refuses_an_image_whose_id_differs(tmp_path: Path, dk: docker.DockerClient) -> None:
    image = dk.images.get("mlbridge/mock:0.1.0")
    other = dk.images.get("mlbridge/base:0.1.0")
    assert other.id != image.id
    other.tag("mlbridge/mock", "0.1.0")  # someone retags the image behind mlbridge's back
    try:
        cfg = make_config(tmp_path, backend="docker", bridges={"mock": {"runtime": "mock", "pool_size": 1}})
        with pytest.raises(ConfigError) as info:
            with ServerThread(cfg):
                pass
        assert isinstance(info.value, ImageMismatch) or "differ" in str(info.value) or "mlbridge built" in str(info.value)
        assert "mlbridge images build mock" in str(info.value)
    finally:
        image.tag("mlbridge/mock", "0.1.0")
    assert dk.images.get("mlbridge/mock:0.1.0").id == image.id


def test_tenant_limits_lower_the_operators_never_raise(tmp_path: Path, dk: docker.DockerClient) -> None:
    import hashlib

    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""version: 1
defaults:
  bridges: [mock]
  rules: [{{name: all-mock, effect: allow, bridges: [mock]}}]
tenants:
  small:
    tokens: ["sha256:{hashlib.sha256(b'small').hexdigest()}"]
    limits: {{memory: 64m, pids: 32, cpus: 0.25}}
  greedy:
    tokens: ["sha256:{hashlib.sha256(b'greedy').hexdigest()}"]
    limits: {{memory: 2g, pids: 4096, cpus: 4}}
""")
    policy.chmod(0o600)
    cfg = make_config(tmp_path, backend="docker", policy=str(policy), bridges=BRIDGES)
    with ServerThread(cfg) as srv:
        for token, memory, pids, nano in (("small", 64, 32, 250_000_000), ("greedy", 128, 64, 500_000_000)):
            with MLBridge.connect(srv.target, token) as mb:
                assert mb.call("mock", "mock:whoami")["tenant"] == token
            worker = srv.orch.pools["mock"].claimed(token)[0]
            host = dk.containers.get(worker.handle.ref).attrs["HostConfig"]
            assert host["Memory"] == memory * 1024 * 1024 == host["MemorySwap"], token
            assert host["PidsLimit"] == pids and host["NanoCpus"] == nano, token
