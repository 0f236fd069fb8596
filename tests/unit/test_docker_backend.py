"""Docker backend logic that needs no engine: exit info, error translation, stats, GPUs."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import docker
import pytest
import requests

import orchestrator.backends.docker.backend as docker_backend
from orchestrator.backends.base import WorkerSpec
from orchestrator.backends.docker import DockerBackend, default_image
from orchestrator.backends.docker.backend import prepare_socket_dir
from orchestrator.backends.docker.errors import translate
from orchestrator.backends.docker.kmsg import KernelOomLog, oom_cgroup_ids
from orchestrator.backends.docker.state import cgroup_oom_kills, exit_info_from_state, memory_stats
from orchestrator.backends.gpus import GpuInventory, parse_nvidia_smi_list
from orchestrator.backends.unix import SocketRoot, unmount
from orchestrator.config import BridgeConfig, Config
from runtimes.wire.errors import ConfigError, Unavailable

MIB = 1024 * 1024


def exited(code: int, oom: bool = False, error: str = "") -> dict:
    return {"Status": "exited", "Running": False, "ExitCode": code, "OOMKilled": oom, "Error": error}


# -- exit info ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["created", "running", "paused", "restarting"])
def test_no_exit_info_while_running(status: str) -> None:
    assert exit_info_from_state({"Status": status, "Running": status == "running"}) is None


def test_oom_kill_of_the_runtime() -> None:
    info = exit_info_from_state(exited(137, oom=True), 64 * MIB)
    assert info is not None and info.oom_killed and info.exit_code == 137
    assert info.memory_limit == 64 * MIB
    assert info.describe() == "killed for running out of memory (limit 64 MiB)"


def test_earlier_oom_of_another_process_is_not_an_oom_death() -> None:
    info = exit_info_from_state(exited(0, oom=True), 64 * MIB, stopped_by_us="stop")
    assert info is not None and not info.oom_killed
    assert "stopped by mlbridge" in info.reason and "out-of-memory kill happened" in info.reason
    info = exit_info_from_state(exited(1, oom=True))
    assert info is not None and not info.oom_killed and "after an out-of-memory kill" in info.reason


def test_our_kill_is_not_an_oom_even_with_the_flag() -> None:
    info = exit_info_from_state(exited(137, oom=True), stopped_by_us="kill")
    assert info is not None and not info.oom_killed and info.reason.startswith("killed by mlbridge")


def test_sigkill_from_outside() -> None:
    info = exit_info_from_state(exited(137))
    assert info is not None and not info.oom_killed and "SIGKILL from outside mlbridge" in info.reason


def test_kernel_log_stands_for_a_missed_engine_flag() -> None:
    info = exit_info_from_state(exited(137), 128 * MIB, kernel_oom=True)
    assert info is not None and info.oom_killed
    assert info.describe() == "killed for running out of memory (limit 128 MiB)"
    # The kernel's record does not make mlbridge's own kill an OOM death.
    info = exit_info_from_state(exited(137), stopped_by_us="kill", kernel_oom=True)
    assert info is not None and not info.oom_killed


CID = "ab" * 32
OTHER = "cd" * 32


def test_kernel_oom_log_reads_docker_memcg_records(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(
        "6,100,1000,-;python3 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0\n"
        f"6,101,1001,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset={CID},"
        f"mems_allowed=0,oom_memcg=/docker/{CID},task_memcg=/docker/{CID},task=python3,pid=7,uid=10001\n"
        " SUBSYSTEM=memory\n"
        f"6,102,1002,-;Memory cgroup out of memory: Killed process 7 (python3) {OTHER}\n")
    log = KernelOomLog(str(kmsg))
    assert log.saw_oom(CID) is True
    assert log.saw_oom(OTHER) is False  # named, but not in an oom-kill record
    # The systemd cgroup driver's names are read too.
    assert oom_cgroup_ids(f"oom-kill:constraint=CONSTRAINT_MEMCG,oom_memcg=/system.slice/docker-{OTHER}.scope,"
                          f"task_memcg=/system.slice/docker-{OTHER}.scope,task=python3") == {OTHER}
    assert oom_cgroup_ids(f"Killed process 7 oom_memcg=/docker/{CID}") == set()
    log.close()


def test_kernel_oom_log_that_cannot_be_read_says_so(tmp_path: Path) -> None:
    log = KernelOomLog(str(tmp_path / "absent"))
    assert log.saw_oom(CID) is None
    assert log.saw_oom(CID) is None  # and does not try again each time


def test_other_signal_and_plain_exit() -> None:
    assert exit_info_from_state(exited(143)).reason == "killed by signal SIGTERM"
    plain = exit_info_from_state(exited(2))
    assert plain.reason == "" and plain.describe() == "exited with code 2"
    assert exit_info_from_state(exited(0), memory_limit=0).memory_limit is None


def test_engine_error_is_the_reason() -> None:
    info = exit_info_from_state(exited(127, error="OCI runtime create failed: runsc not found"))
    assert info is not None and "runsc not found" in info.reason


# -- error translation --------------------------------------------------------------------------


def test_connection_error_says_how_to_start_the_engine() -> None:
    err = translate(requests.exceptions.ConnectionError("Connection refused"), "start a container")
    assert isinstance(err, ConfigError)
    assert "cannot reach the Docker engine" in str(err) and "scripts/docker-engine.sh up" in str(err)


def test_permission_denied_on_the_socket() -> None:
    err = translate(requests.exceptions.ConnectionError("PermissionError(13, 'Permission denied')"), "x")
    assert isinstance(err, ConfigError) and "docker group" in str(err)


def test_api_error_is_unavailable_with_the_engines_message() -> None:
    resp = requests.Response()
    resp.status_code = 409
    exc = docker.errors.APIError("409 Client Error", response=resp, explanation="name already in use")
    err = translate(exc, "start a container for worker w1")
    assert isinstance(err, Unavailable)
    assert str(err) == "docker could not start a container for worker w1: name already in use"
    assert err.details["http_status"] == 409


def test_timeout_is_unavailable() -> None:
    err = translate(requests.exceptions.ReadTimeout("read timed out"), "stop worker w1")
    assert isinstance(err, Unavailable) and "did not answer in time" in str(err)


def test_unreachable_engine_at_prepare(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    backend = DockerBackend()

    async def go() -> None:
        try:
            await backend.prepare(Config.model_validate({"bridges": {"mock": {"runtime": "mock"}}}))
        finally:
            await backend.close()

    with pytest.raises(ConfigError, match=r"cannot reach the Docker engine.*scripts/docker-engine.sh up"):
        asyncio.run(go())


def test_default_image_tag() -> None:
    assert default_image("mock") == "mlbridge/mock:0.1.0"


# -- socket dir ---------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="handing the dir to uid 10001 needs root")
def test_socket_dir_is_handed_to_the_container_user(tmp_path: Path) -> None:
    d = tmp_path / "w1"
    d.mkdir(mode=0o755)
    (d / "runtime.sock").write_text("stale")
    channel = SocketRoot(tmp_path).channel("w1")
    prepare_socket_dir(channel)
    out = channel.socket_dir
    try:
        st = out.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (10001, 10001, 0o700)
        assert not (d / "runtime.sock").exists()
        # Its own tiny tmpfs, so no worker can exhaust what another worker's socket needs.
        assert os.path.ismount(out)
        fs = os.statvfs(out)
        assert fs.f_files <= 16 and fs.f_blocks * fs.f_frsize <= 64 * 1024
    finally:
        unmount(out)
    assert not os.path.ismount(out)


def test_socket_path_too_long(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="longer than 107 bytes"):
        SocketRoot(tmp_path / ("x" * 120)).channel("w1")


def test_start_checks_gpu_ids_before_touching_the_engine(tmp_path: Path) -> None:
    backend = DockerBackend(gpu_inventory=GpuInventory(), socket_root=tmp_path)
    backend._images["mlbridge/mock:0.1.0"] = "sha256:" + "0" * 64  # as if verified
    spec = WorkerSpec(worker_id="w1", bridge="mock",
                      config=BridgeConfig(runtime="mock", limits={"gpus": ["0"]}),
                      orchestrator_id="o", max_message_bytes=MIB)

    async def go() -> None:
        try:
            await backend.start(spec)
        finally:
            await backend.close()

    if os.geteuid() != 0:
        pytest.skip("start hands the socket dir to uid 10001, which needs root")
    with pytest.raises(ConfigError, match="GPU '0' is not on this host"):
        asyncio.run(go())


class _SlowStartAPI:
    """Just enough of ``docker.APIClient`` for start(); ``start`` takes a while."""

    def __init__(self) -> None:
        self.removed: list[str] = []

    def create_host_config(self, **kw: object) -> dict:
        return dict(kw)

    def create_container(self, **kw: object) -> dict:
        return {"Id": "c0ffee"}

    def start(self, cid: str) -> None:
        import time

        time.sleep(0.3)

    def remove_container(self, cid: str, **kw: object) -> None:
        self.removed.append(cid)


def test_cancelled_start_removes_the_container_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api = _SlowStartAPI()
    client = type("FakeClient", (), {"api": api, "close": lambda self: None})()
    backend = DockerBackend(client=client, socket_root=tmp_path)  # type: ignore[arg-type]
    backend._images["mlbridge/mock:0.1.0"] = "sha256:" + "0" * 64
    monkeypatch.setattr(docker_backend, "prepare_socket_dir", lambda channel: None)
    spec = WorkerSpec(worker_id="w1", bridge="mock", config=BridgeConfig(runtime="mock"),
                      orchestrator_id="o", max_message_bytes=MIB)

    async def go() -> None:
        task = asyncio.ensure_future(backend.start(spec))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if api.removed:
                break
            await asyncio.sleep(0.02)
        await backend.close()

    asyncio.run(go())
    assert api.removed == ["c0ffee"]


# -- stats --------------------------------------------------------------------------------------


def test_memory_stats_v1_and_v2() -> None:
    v1 = {"memory_stats": {"usage": 30 * MIB, "limit": 256 * MIB, "stats": {"total_inactive_file": 4 * MIB}},
          "cpu_stats": {"cpu_usage": {"total_usage": 123}}, "pids_stats": {"current": 9}}
    assert memory_stats(v1) == {"memory_bytes": 26 * MIB, "memory_usage_bytes": 30 * MIB,
                                 "memory_limit": 256 * MIB, "cpu_total_ns": 123, "pids": 9}
    v2 = {"memory_stats": {"usage": 10 * MIB, "limit": 64 * MIB, "stats": {"inactive_file": MIB}}}
    assert memory_stats(v2)["memory_bytes"] == 9 * MIB
    assert memory_stats({}) == {"memory_bytes": 0, "memory_usage_bytes": 0, "memory_limit": None,
                                 "cpu_total_ns": 0, "pids": 0}


def testcgroup_oom_kills(tmp_path: Path) -> None:
    abc, dfe = "abc" * 21 + "a", "def" * 21 + "d"
    v1 = tmp_path / "memory" / "docker" / abc
    v1.mkdir(parents=True)
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert cgroup_oom_kills(abc, tmp_path) == 2
    v2 = tmp_path / "system.slice" / f"docker-{dfe}.scope"
    v2.mkdir(parents=True)
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n")
    assert cgroup_oom_kills(dfe, tmp_path) == 1
    assert cgroup_oom_kills("0" * 64, tmp_path) is None
    assert cgroup_oom_kills("../../etc", tmp_path) is None


# -- GPU inventory ------------------------------------------------------------------------------

NVIDIA_SMI_L = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5c0d1a2b-0000-1111-2222-333344445555)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaabbbb-cccc-dddd-eeee-ffff00001111)
  MIG 1g.5gb      Device  0: (UUID: MIG-11112222-3333-4444-5555-666677778888)
  MIG 1g.5gb      Device  1: (UUID: MIG-99990000-aaaa-bbbb-cccc-ddddeeeeffff)
"""


def test_parse_nvidia_smi_list() -> None:
    gpus = parse_nvidia_smi_list(NVIDIA_SMI_L)
    assert [(g.index, g.uuid) for g in gpus] == [
        ("0", "GPU-5c0d1a2b-0000-1111-2222-333344445555"),
        ("1", "GPU-aaaabbbb-cccc-dddd-eeee-ffff00001111"),
        ("1:0", "MIG-11112222-3333-4444-5555-666677778888"),
        ("1:1", "MIG-99990000-aaaa-bbbb-cccc-ddddeeeeffff"),
    ]
    assert gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert parse_nvidia_smi_list("No devices were found\n") == []


def test_inventory_resolve() -> None:
    inv = GpuInventory(parse_nvidia_smi_list(NVIDIA_SMI_L), source="nvidia-smi -L")
    assert inv.resolve(["1:0", "GPU-5c0d1a2b-0000-1111-2222-333344445555"]) == [
        "1:0", "GPU-5c0d1a2b-0000-1111-2222-333344445555"]
    with pytest.raises(ConfigError) as info:
        inv.resolve(["2"])
    assert "GPU '2' is not on this host" in str(info.value)
    assert "0 (GPU-5c0d1a2b" in str(info.value) and "nvidia-smi -L" in str(info.value)


def test_detect_gpus_falls_back_to_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.backends.gpus as g

    monkeypatch.setattr(g, "_from_nvml", lambda: None)
    monkeypatch.setattr(g, "_from_nvidia_smi", lambda: None)
    g.detect_gpus.cache_clear()
    try:
        inv = g.detect_gpus()
        assert len(inv) == 0 and inv.available() == []
    finally:
        g.detect_gpus.cache_clear()


def test_detect_gpus_uses_nvidia_smi_when_nvml_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.backends.gpus as g

    monkeypatch.setattr(g, "_from_nvml", lambda: None)
    monkeypatch.setattr(g, "_from_nvidia_smi", lambda: parse_nvidia_smi_list(NVIDIA_SMI_L))
    g.detect_gpus.cache_clear()
    try:
        inv = g.detect_gpus()
        assert inv.source == "nvidia-smi -L" and len(inv) == 4
    finally:
        g.detect_gpus.cache_clear()
