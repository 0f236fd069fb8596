"""The docker backend against the real engine: hardening, escapes that fail, OOM, reap.

Needs a running engine (``scripts/docker-engine.sh up``) and the mock image
(``mlbridge images build mock``). Skipped when no engine answers, except in
CI (``CI=true``), where that is a failure. Every container a test creates is
recorded and force-removed in teardown; each test's backend has its own
scope label, so its ``reap`` never touches containers of anything else.

Network probes only target a listener this test starts on the host's docker
bridge address.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import struct
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import grpc
import pytest

from orchestrator.backends.base import WorkerHandle, WorkerSpec
from orchestrator.backends.docker import DockerBackend
from orchestrator.backends.docker.egress import network_names
from orchestrator.backends.tls import TcpMtlsChannel
from orchestrator.claims import NO_SETTINGS, ClaimPipeline
from orchestrator.config import BridgeConfig, Config
from orchestrator.images import image_tag, verify_image
from orchestrator.pool import Pool
from orchestrator.registry import Registry
from runtimes.wire.errors import ConfigError, Unavailable
from runtimes.wire.proto import runtime_pb2, runtime_pb2_grpc
from tests.harness import WORKER_CHANNEL

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

# The bridge as the shipped config names it: an entry point the image registers.
MOCK_RUNTIME = "mock"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    try:
        c = docker.from_env()
        c.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the Docker engine is unreachable: {exc}")
        pytest.skip(f"no Docker engine ({exc}); start one with scripts/docker-engine.sh up")
    yield c
    c.close()


class Workers:
    """Starts workers through the backend and remembers every container, for teardown."""

    def __init__(self, client: docker.DockerClient, root: Path, *, worker_channel: str = WORKER_CHANNEL) -> None:
        self.client = client
        self.root = root
        self.scope = f"test-{uuid.uuid4().hex[:10]}"
        self.orchestrator_id = f"orch-{uuid.uuid4().hex[:8]}"
        self.backend = DockerBackend(scope=self.scope, socket_root=root, worker_channel=worker_channel,
                                     ca_dir=root / "ca")
        self.container_ids: list[str] = []
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def spec(self, *, orchestrator_id: str | None = None, **cfg: Any) -> WorkerSpec:
        config = BridgeConfig.model_validate({"runtime": MOCK_RUNTIME, **cfg})
        wid = f"w{uuid.uuid4().hex[:8]}"
        return WorkerSpec(worker_id=wid, bridge="mock", config=config,
                          orchestrator_id=orchestrator_id or self.orchestrator_id, max_message_bytes=4 * MIB)

    def start(self, spec: WorkerSpec) -> WorkerHandle:
        handle = self.run(self.backend.start(spec))
        self.container_ids.append(handle.ref)
        return handle

    def cleanup(self) -> None:
        for cid in self.container_ids:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_container(cid, force=True, v=True)
        # Anything else this test's scope created (a start that failed half way).
        for row in self.client.api.containers(all=True, filters={"label": f"io.mlbridge.scope={self.scope}"}):
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_container(row["Id"], force=True, v=True)
        self.run(self.backend.close())
        self.loop.close()


@pytest.fixture
def workers(client: docker.DockerClient) -> Iterator[Workers]:
    # Short path: unix socket paths must stay under 108 bytes.
    root = Path("/tmp") / f"mlb-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o700)
    w = Workers(client, root)
    try:
        yield w
    finally:
        w.cleanup()
        for p in sorted(root.rglob("*"), reverse=True):
            with contextlib.suppress(OSError):
                p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        with contextlib.suppress(OSError):
            root.rmdir()


def sync_channel(target: WorkerHandle | str) -> grpc.Channel:
    """A blocking channel to a worker: its unix socket, or its tcp-mtls endpoint with the orchestrator's credentials."""
    channel = target.channel if isinstance(target, WorkerHandle) else None
    if isinstance(channel, TcpMtlsChannel):
        return grpc.secure_channel(channel.target, channel.credentials, options=[
            ("grpc.ssl_target_name_override", channel.server_name), ("grpc.default_authority", channel.server_name)])
    return grpc.insecure_channel(target.address if isinstance(target, WorkerHandle) else target)


def call(target: WorkerHandle | str, command: str, args: dict[str, Any] | None = None, *,
         timeout: float = 10.0) -> runtime_pb2.CallReply:
    with sync_channel(target) as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        req = runtime_pb2.CallRequest(command=command, args_json=json.dumps(args or {}).encode())
        return stub.Call(req, timeout=timeout, wait_for_ready=True)


def wait_ping(handle: WorkerHandle, timeout: float = 30.0, poll: float = 0.005) -> float:
    """Wait until the worker answers ``common:ping``; return seconds waited.

    Wait strategy: poll for the socket file (cheap), then one call that waits
    for the channel to be ready, retried on transient errors until ``timeout``.
    """
    started = time.monotonic()
    deadline = started + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not handle.channel.present():
            time.sleep(poll)
            continue
        try:
            reply = call(handle, "common:ping", timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            assert reply.ok, reply.error
            return time.monotonic() - started
        except grpc.RpcError as exc:
            last = exc
            time.sleep(poll)
    raise AssertionError(f"worker {handle.worker_id} did not answer common:ping within {timeout}s: {last}")


def attrs_ip(client: docker.DockerClient, cid: str, network: str) -> str:
    """The container's address on ``network``."""
    return str(client.api.inspect_container(cid)["NetworkSettings"]["Networks"][network]["IPAddress"])


def docker_bridge_ipv4(client: docker.DockerClient) -> str:
    """This machine's address on docker0 (the default bridge's gateway)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", b"docker0"))  # SIOCGIFADDR
            return socket.inet_ntoa(packed[20:24])
    except OSError:
        return client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]


def run_in(client: docker.DockerClient, cid: str, code: str, timeout: float = 60.0) -> tuple[int, str]:
    """Run ``python3 -c code`` inside the container as uid 10001; return (exit code, output)."""
    api = client.api
    exec_id = api.exec_create(cid, ["python3", "-c", textwrap.dedent(code)], user="10001:10001")["Id"]
    out = api.exec_start(exec_id)
    deadline = time.monotonic() + timeout
    while (info := api.exec_inspect(exec_id))["Running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    return info["ExitCode"], out.decode(errors="replace")


# --------------------------------------------------------------------------------------------
# 1. start, answer, and every hardening setting as the engine reports it


def test_worker_answers_and_is_hardened(workers: Workers, client: docker.DockerClient) -> None:
    spec = workers.spec(limits={"cpus": 0.5, "memory": "256m", "pids": 96, "nofile": 512, "tmpfs_size": "16m"})
    handle = workers.start(spec)
    waited = wait_ping(handle)
    assert waited < 30

    socket_dir = workers.root / spec.worker_id
    network = "none" if WORKER_CHANNEL == "unix" else network_names("channel", workers.scope).network
    if WORKER_CHANNEL == "unix":
        assert handle.address == f"unix://{socket_dir}/runtime.sock"
    else:  # tcp-mtls: the runtime listens on the channel network; its mount holds its certificate
        assert handle.address == f"{attrs_ip(client, handle.ref, network)}:7443"
    assert handle.backend == "docker"
    st = socket_dir.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (10001, 10001, 0o700)

    attrs = client.api.inspect_container(handle.ref)
    cfg, hc = attrs["Config"], attrs["HostConfig"]
    assert cfg["User"] == "10001:10001"
    assert cfg["Hostname"] == "worker"
    assert cfg["StopSignal"] == "SIGTERM"
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["MLBRIDGE_BRIDGE"] == "runtimes.mock:MockBridge"  # the name, resolved on the host
    assert env["MLBRIDGE_MAX_MESSAGE_BYTES"] == str(4 * MIB)
    assert not any("PROXY" in k.upper() for k in env)
    for key, value in spec.labels.items():
        assert cfg["Labels"][key] == value
    assert cfg["Labels"]["io.mlbridge.scope"] == workers.scope
    assert attrs["Image"] == handle.image_id

    assert hc["Privileged"] is False
    assert hc["CapDrop"] == ["ALL"]
    assert not hc["CapAdd"]
    assert hc["SecurityOpt"] == ["no-new-privileges:true"]
    assert hc["ReadonlyRootfs"] is True
    assert hc["Tmpfs"] == {"/tmp": f"rw,noexec,nosuid,nodev,size={16 * MIB},nr_inodes={16 * MIB // 4096}"}
    assert hc["PidsLimit"] == 96
    assert hc["Memory"] == hc["MemorySwap"] == 256 * MIB
    assert hc["NanoCpus"] == 500_000_000
    assert hc["Ulimits"] == [{"Name": "nofile", "Soft": 512, "Hard": 512}]
    assert hc["IpcMode"] == "private"
    assert hc["CgroupnsMode"] == "private"
    assert hc["NetworkMode"] == network
    assert hc["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}
    assert hc["Init"] is True
    assert hc["Runtime"] == "runc"
    assert hc["AutoRemove"] is False
    assert not hc.get("OomKillDisable")
    assert not hc.get("Binds") and not hc.get("VolumesFrom") and not hc.get("Devices")
    assert hc["PidMode"] in ("", "private") and hc["UsernsMode"] == ""
    mounts = attrs["Mounts"]
    assert [(m["Type"], m["Source"], m["Destination"], m["RW"]) for m in mounts] == [
        ("bind", str(socket_dir), "/run/mlbridge", True)
    ]
    assert set(attrs["NetworkSettings"]["Networks"]) == {network}

    # The kernel's view from inside: uid, no capabilities, no-new-privs, seccomp filtering.
    code, out = run_in(client, handle.ref, """
        import os
        status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
        print(os.getuid(), os.getgid(), status["CapEff"].strip(), status["CapBnd"].strip(),
              status["NoNewPrivs"].strip(), status["Seccomp"].strip())
    """)
    assert code == 0, out
    assert out.split() == ["10001", "10001", "0000000000000000", "0000000000000000", "1", "2"]
    code, out = run_in(client, handle.ref, "import os; print(os.listdir('/run/mlbridge'))")
    assert code == 0 and out.strip() == ("['runtime.sock']" if WORKER_CHANNEL == "unix" else "['tls']"), out


def test_stop_removes_container_and_socket_dir_and_keeps_exit_info(workers: Workers,
                                                                    client: docker.DockerClient) -> None:
    handle = workers.start(workers.spec())
    wait_ping(handle)
    assert workers.run(workers.backend.exit_info(handle)) is None
    stats = workers.run(workers.backend.stats(handle))
    assert 0 < stats["memory_bytes"] < 256 * MIB and stats["pids"] >= 1
    workers.run(workers.backend.stop(handle, timeout=5))
    with pytest.raises(docker.errors.NotFound):
        client.api.inspect_container(handle.ref)
    assert not (workers.root / handle.worker_id).exists()
    info = workers.run(workers.backend.exit_info(handle))
    assert info is not None and not info.oom_killed
    assert info.exit_code == 0  # SIGTERM: the runtime shut down gracefully
    assert "stopped by mlbridge" in info.describe()


def test_kill_is_reported_as_ours_not_oom(workers: Workers) -> None:
    handle = workers.start(workers.spec())
    wait_ping(handle)
    workers.run(workers.backend.stop(handle, kill=True))
    info = workers.run(workers.backend.exit_info(handle))
    assert info is not None and info.exit_code == 137 and not info.oom_killed
    assert "killed by mlbridge" in info.reason


def test_concurrent_starts(workers: Workers) -> None:
    async def start_all() -> list[WorkerHandle]:
        return list(await asyncio.gather(*(workers.backend.start(workers.spec()) for _ in range(4))))

    handles = workers.run(start_all())
    workers.container_ids += [h.ref for h in handles]
    assert len({h.ref for h in handles}) == 4
    for h in handles:
        wait_ping(h)


def test_cancelled_start_leaves_no_container(workers: Workers, client: docker.DockerClient) -> None:
    scope_filter = {"label": f"io.mlbridge.scope={workers.scope}"}

    async def start_then_cancel() -> None:
        spec = workers.spec()
        await workers.backend.image_id("mock", spec.config)
        task = asyncio.ensure_future(workers.backend.start(spec))
        deadline = time.monotonic() + 10
        while not client.api.containers(all=True, filters=scope_filter):  # created, not yet started
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.002)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 15
        while client.api.containers(all=True, filters=scope_filter):
            assert time.monotonic() < deadline, "the cancelled start left its container behind"
            await asyncio.sleep(0.05)

    workers.run(start_then_cancel())


# --------------------------------------------------------------------------------------------
# 2. what a hostile program inside a worker cannot do


@pytest.fixture
def host_listener(client: docker.DockerClient) -> Iterator[tuple[str, int, list[Any]]]:
    """A TCP listener on this machine's docker bridge address only; records accepted peers."""
    host = docker_bridge_ipv4(client)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, 0))
    srv.listen(8)
    srv.settimeout(0.2)
    accepted: list[Any] = []
    import threading

    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = srv.accept()
            except (TimeoutError, OSError):
                continue
            accepted.append(peer)
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield host, srv.getsockname()[1], accepted
    finally:
        stop.set()
        t.join(2)
        srv.close()


CONNECT = """
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(({host!r}, {port}))
    except OSError as e:
        print("ERRNO", e.errno); sys.exit(1)
    print("CONNECTED")
"""


def test_escapes_fail_inside_the_sandbox(workers: Workers, client: docker.DockerClient,
                                         host_listener: tuple[str, int, list[Any]]) -> None:
    handle = workers.start(workers.spec(limits={"memory": "192m", "pids": 48, "tmpfs_size": "8m"}))
    wait_ping(handle)
    cid = handle.ref

    # Memory bomb: killed by the kernel (SIGKILL -> 137) or refused, never completes.
    code, out = run_in(client, cid, """
        blocks = []
        try:
            for _ in range(64):
                blocks.append(b"x" * (32 * 1024 * 1024))
        except MemoryError:
            print("MEMORYERROR"); raise SystemExit(3)
        print("ALLOCATED", len(blocks))
    """)
    assert "ALLOCATED" not in out
    assert code == 137 or "MEMORYERROR" in out, (code, out)
    kills = workers.run(workers.backend.stats(handle, max_age_s=0)).get("oom_kills")
    assert kills is None or kills >= 1  # None: this host's cgroup layout is not one we know

    # Fork bomb: stopped by the pids limit (EAGAIN) well before 10000 processes.
    code, out = run_in(client, cid, """
        import os, signal, time
        kids, err = [], None
        try:
            for _ in range(10000):
                pid = os.fork()
                if pid == 0:
                    time.sleep(60); os._exit(0)
                kids.append(pid)
        except OSError as e:
            err = e.errno
        for k in kids:
            os.kill(k, signal.SIGKILL)
        for k in kids:
            os.waitpid(k, 0)
        print(len(kids), err)
    """)
    assert code == 0, out
    forked, err = out.split()
    assert err == str(errno.EAGAIN) and int(forked) < 48, out

    # /tmp is capped: ENOSPC past its size.
    code, out = run_in(client, cid, """
        import errno
        try:
            with open("/tmp/fill", "wb") as f:
                for _ in range(64):
                    f.write(b"\\0" * (1024 * 1024)); f.flush()
        except OSError as e:
            print(e.errno)
        finally:
            import os; os.remove("/tmp/fill")
    """)
    assert out.strip() == str(errno.ENOSPC), out

    # The root filesystem is read-only, everywhere but the socket dir.
    code, out = run_in(client, cid, """
        for path in ("/probe", "/opt/probe", "/opt/mlbridge/probe", "/home/probe", "/var/tmp/probe"):
            try:
                open(path, "w").close(); print(path, "WRITTEN")
            except OSError as e:
                print(path, e.errno)
    """)
    for line in out.splitlines():
        path, result = line.split()
        assert result == str(errno.EROFS), out

    # /tmp is noexec.
    code, out = run_in(client, cid, """
        import os, shutil, subprocess
        shutil.copy("/bin/true", "/tmp/t"); os.chmod("/tmp/t", 0o755)
        try:
            subprocess.run(["/tmp/t"], check=True); print("EXECUTED")
        except OSError as e:
            print(e.errno)
    """)
    assert out.strip() == str(errno.EACCES), out

    # No raw sockets (CAP_NET_RAW dropped).
    code, out = run_in(client, cid, """
        import socket
        try:
            socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print("RAW")
        except OSError as e:
            print(e.errno)
    """)
    assert out.strip() == str(errno.EPERM), out

    # No mount, not even from a new user namespace.
    code, out = run_in(client, cid, """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        r = libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)
        print("mount", r, ctypes.get_errno())
        r = libc.unshare(0x10000000 | 0x00020000)  # CLONE_NEWUSER | CLONE_NEWNS
        print("unshare", r, ctypes.get_errno())
    """)
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert lines["mount"] == f"-1 {errno.EPERM}", out
    assert lines["unshare"] == f"-1 {errno.EPERM}", out

    # Network none (or the firewalled channel network): a listener on this machine's docker bridge address
    # is unreachable.
    host, port, accepted = host_listener
    code, out = run_in(client, cid, CONNECT.format(host=host, port=port))
    assert code == 1 and out.startswith("ERRNO"), out
    assert int(out.split()[1]) in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED), out
    assert accepted == []

    # The worker survived all of it and still answers.
    reply = call(handle, "common:ping")
    assert reply.ok
    assert workers.run(workers.backend.exit_info(handle)) is None


def test_bridge_network_reaches_the_listener(workers: Workers, client: docker.DockerClient,
                                             host_listener: tuple[str, int, list[Any]]) -> None:
    """Control for the network-none probe: the same connect works when policy grants a network."""
    # The control is about docker's bridge network, which a tcp-mtls worker never joins: a unix-channel backend.
    if workers.backend.worker_channel != "unix":
        workers.run(workers.backend.close())
        workers.backend = DockerBackend(scope=workers.scope, socket_root=workers.root)
    handle = workers.start(workers.spec(network="bridge"))
    wait_ping(handle)
    host, port, accepted = host_listener
    code, out = run_in(client, handle.ref, CONNECT.format(host=host, port=port))
    if code != 0 and "ERRNO" in out:
        pytest.skip(f"this host's firewall drops bridge -> host traffic ({out.strip()}); control not possible")
    assert out.strip() == "CONNECTED", out
    deadline = time.monotonic() + 5
    while not accepted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert accepted


# --------------------------------------------------------------------------------------------
# 3. out of memory, through the backend


def test_oom_kill_is_reported(workers: Workers) -> None:
    handle = workers.start(workers.spec(limits={"memory": "64m"}))
    wait_ping(handle)
    with pytest.raises(grpc.RpcError) as info:
        call(handle, "mock:allocate", {"mb": 200}, timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    deadline = time.monotonic() + 30
    while (ended := workers.run(workers.backend.exit_info(handle))) is None:
        assert time.monotonic() < deadline, "worker still running after its OOM kill"
        time.sleep(0.05)
    assert ended.oom_killed, ended
    assert ended.exit_code == 137
    assert ended.memory_limit == 64 * MIB
    assert "out of memory" in ended.describe() and "64 MiB" in ended.describe()
    # stop() after the fact keeps what exit_info said.
    workers.run(workers.backend.stop(handle))
    assert workers.run(workers.backend.exit_info(handle)).oom_killed


# --------------------------------------------------------------------------------------------
# 4. reaping what a killed orchestrator left behind


def test_reap_removes_other_orchestrators_containers(workers: Workers, client: docker.DockerClient) -> None:
    old = workers.start(workers.spec(orchestrator_id="orch-dead-" + uuid.uuid4().hex[:6]))
    ours = workers.start(workers.spec())
    listed = workers.run(workers.backend.list({"io.mlbridge.bridge": "mock"}))
    assert {row["id"] for row in listed} == {old.ref, ours.ref}

    # (stale_s=inf: only this scope; other scopes' long-ended containers are the next test's)
    removed = workers.run(workers.backend.reap(workers.orchestrator_id, stale_s=float("inf")))
    assert removed == 1
    with pytest.raises(docker.errors.NotFound):
        client.api.inspect_container(old.ref)
    assert client.api.inspect_container(ours.ref)["State"]["Running"]
    listed = workers.run(workers.backend.list({}))
    assert [row["id"] for row in listed] == [ours.ref]
    assert workers.run(workers.backend.reap(workers.orchestrator_id, stale_s=float("inf"))) == 0


# --------------------------------------------------------------------------------------------
# 5. images: only the verified one runs; a missing one says how to build it


def test_start_runs_the_verified_image_id(workers: Workers, client: docker.DockerClient) -> None:
    handle = workers.start(workers.spec())
    assert handle.image_id == verify_image(client, "mlbridge/mock:0.1.0")
    assert client.api.inspect_container(handle.ref)["Config"]["Image"] == handle.image_id


def test_prepare_checks_runtime_network_and_image(workers: Workers) -> None:
    ok = BridgeConfig(runtime=MOCK_RUNTIME)
    workers.run(workers.backend.prepare(Config(bridges={"mock": ok})))
    bad = {
        "mock": BridgeConfig(runtime=MOCK_RUNTIME, runtime_class="no-such-oci-runtime"),
        "other": BridgeConfig(runtime=MOCK_RUNTIME, network="mlbridge-no-such-network"),
        "third": BridgeConfig(runtime=MOCK_RUNTIME, network="host"),
    }
    with pytest.raises(ConfigError) as info:
        workers.run(workers.backend.prepare(Config(bridges=bad)))
    assert "OCI runtime 'no-such-oci-runtime' is not registered" in str(info.value)
    assert "docker network 'mlbridge-no-such-network' does not exist" in str(info.value)
    assert "network 'host' for bridge 'third' would share another network namespace" in str(info.value)


def test_missing_images_are_config_errors(workers: Workers) -> None:
    spec = workers.spec(image="mlbridge/nosuchbridge:0.1.0")
    with pytest.raises(ConfigError, match="mlbridge images build nosuchbridge"):
        workers.run(workers.backend.start(spec))
    spec = workers.spec(image="localhost/not-pulled-here:1")
    with pytest.raises(ConfigError, match="not present in the Docker engine"):
        workers.run(workers.backend.start(spec))


# -- held workers and the start-up CPU boost ---------------------------------------------------


def test_a_held_container_waits_cheaply_then_serves_once_released(workers: Workers,
                                                                  client: docker.DockerClient) -> None:
    spec = workers.spec(limits={"cpus": 0.5, "memory": "256m"})
    spec.hold, spec.startup_cpus = True, 1.0
    handle = workers.start(spec)
    assert handle.held and handle.boosted
    time.sleep(1.5)
    attrs = client.api.inspect_container(handle.ref)
    assert attrs["State"]["Running"] and attrs["HostConfig"]["NanoCpus"] == 1_000_000_000
    assert not Path(handle.address.removeprefix("unix://")).exists(), "a held worker does not serve"
    held_memory = workers.run(workers.backend.stats(handle, max_age_s=0))["memory_bytes"]
    assert held_memory < 12 * MIB, f"a held worker uses {held_memory / MIB:.1f} MiB"
    workers.run(workers.backend.release(handle))
    assert not handle.held
    wait_ping(handle)
    ready_memory = workers.run(workers.backend.stats(handle, max_age_s=0))["memory_bytes"]
    print(f"held worker: {held_memory / MIB:.1f} MiB; the same worker serving: {ready_memory / MIB:.1f} MiB")
    assert ready_memory > held_memory
    with pytest.raises(Unavailable, match="not held"):
        workers.run(workers.backend.release(handle))


def test_a_held_container_exits_when_its_orchestrator_end_closes(workers: Workers,
                                                                 client: docker.DockerClient) -> None:
    """Dropping the hold is what the kernel does to the FIFO when the orchestrator dies."""
    spec = workers.spec()
    spec.hold = True
    handle = workers.start(spec)
    time.sleep(1.0)
    workers.backend._holds.drop(handle.worker_id)
    deadline = time.monotonic() + 20
    while client.api.inspect_container(handle.ref)["State"]["Running"]:
        assert time.monotonic() < deadline, "a held worker outlived its hold"
        time.sleep(0.1)
    assert client.api.inspect_container(handle.ref)["State"]["ExitCode"] == 0
    assert not Path(handle.address.removeprefix("unix://")).exists(), "it never served"


def test_a_pool_claim_takes_a_held_worker_and_lowers_its_cpu_limit(workers: Workers,
                                                                   client: docker.DockerClient) -> None:
    cfg = BridgeConfig.model_validate({"runtime": MOCK_RUNTIME, "pool_size": 0, "max_spares": 0, "held": 1,
                                       "startup_cpus": 1.0, "limits": {"cpus": 0.5, "memory": "256m"}})
    pool = Pool("mock", cfg, workers.backend, orchestrator_id=workers.orchestrator_id, max_message_bytes=4 * MIB,
                claims=ClaimPipeline(workers.backend, Registry(":memory:"), NO_SETTINGS))

    async def scenario() -> tuple[Any, str]:
        await pool.start()
        try:
            deadline = time.monotonic() + 60
            while not pool._held:
                assert time.monotonic() < deadline, "no worker was held"
                await asyncio.sleep(0.05)
            held = pool._held[0]
            worker = await pool.acquire("alice")
            assert worker.id == held.worker_id and worker.origin == "held"
            nano = client.api.inspect_container(worker.handle.ref)["HostConfig"]["NanoCpus"]
            return nano, worker.tenant
        finally:
            for w in list(pool.workers.values()):
                workers.container_ids.append(w.handle.ref)
            workers.container_ids.extend(h.ref for h in pool._held)
            await pool.stop(drain_s=0)

    nano, tenant = workers.run(scenario())
    assert tenant == "alice"
    assert nano == 500_000_000, "the worker kept its start-up CPU boost after it was ready"


def test_reap_removes_long_ended_workers_of_dead_owners_in_any_scope(workers: Workers,
                                                                     client: docker.DockerClient) -> None:
    """A worker whose orchestrator died on another state directory ended by its dead man's switch and was never
    removed: any orchestrator on the engine removes it. A running one of another scope is left alone."""
    other = f"test-{uuid.uuid4().hex[:10]}"
    labels = {"io.mlbridge.orchestrator": "dead-owner", "io.mlbridge.scope": other, "io.mlbridge.worker": "orphan",
              "io.mlbridge.bridge": "mock"}
    image = image_tag("mock")
    ended = client.containers.run(image, entrypoint=["true"], labels=labels, detach=True, network_mode="none")
    running = client.containers.run(image, entrypoint=["sleep", "60"], labels={**labels, "io.mlbridge.worker": "live"},
                                    detach=True, network_mode="none")
    try:
        ended.wait(timeout=30)
        workers.run(workers.backend.reap(workers.orchestrator_id))
        ended.reload()  # it ended moments ago: still there
        assert workers.run(workers.backend.reap(workers.orchestrator_id, stale_s=0)) >= 1
        with pytest.raises(docker.errors.NotFound):
            ended.reload()
        running.reload()
        assert running.status == "running"  # another scope's live worker: its owner may be alive
    finally:
        for c in (ended, running):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)
