"""The docker backend's container settings, rendered without an engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from docker.types import DeviceRequest, Mount, Ulimit

from orchestrator.backends.base import WorkerSpec
from orchestrator.backends.docker.render import (
    SOCKET_MOUNT,
    container_name,
    render_run_kwargs,
    split_run_kwargs,
)
from orchestrator.backends.gpus import Gpu, GpuInventory
from orchestrator.config import BridgeConfig, Limits, WorkerLimits
from runtimes.wire.errors import ConfigError

IMAGE = "sha256:" + "ab" * 32
INVENTORY = GpuInventory(
    [Gpu("0", "GPU-aaaa-1111", "NVIDIA H100"), Gpu("1", "GPU-bbbb-2222", "NVIDIA H100")],
    source="test",
)


def make_spec(tmp_path: Path, **cfg: object) -> WorkerSpec:
    config = BridgeConfig.model_validate({"runtime": "mock", **cfg})
    return WorkerSpec(worker_id="w-1", bridge="mock", config=config, orchestrator_id="orch-1",
                      max_message_bytes=4 * 1024 * 1024)


def render(tmp_path: Path, **cfg: object) -> dict:
    return render_run_kwargs(make_spec(tmp_path, **cfg), IMAGE, tmp_path / "w-1", gpu_inventory=INVENTORY)


def test_identity_and_process_settings(tmp_path: Path) -> None:
    kw = render(tmp_path)
    assert kw["image"] == IMAGE
    assert kw["user"] == "10001:10001"
    assert kw["detach"] is True
    assert kw["init"] is True
    assert kw["auto_remove"] is False
    assert kw["stop_signal"] == "SIGTERM"
    assert kw["hostname"] == "worker"
    assert kw["use_config_proxy"] is False
    assert kw["privileged"] is False
    assert kw["runtime"] == "runc"


def test_privileges_dropped_and_seccomp_untouched(tmp_path: Path) -> None:
    kw = render(tmp_path)
    assert kw["cap_drop"] == ["ALL"]
    assert "cap_add" not in kw
    assert kw["security_opt"] == ["no-new-privileges:true"]
    assert not any("unconfined" in opt or opt.startswith(("seccomp", "apparmor")) for opt in kw["security_opt"])
    assert not kw.get("oom_kill_disable")
    for shared in ("pid_mode", "userns_mode", "uts_mode", "devices", "volumes", "volumes_from", "sysctls"):
        assert shared not in kw


def test_filesystem_is_read_only_with_capped_noexec_tmp(tmp_path: Path) -> None:
    kw = render(tmp_path, limits={"tmpfs_size": "32m"})
    assert kw["read_only"] is True
    assert list(kw["tmpfs"]) == ["/tmp"]
    opts = kw["tmpfs"]["/tmp"].split(",")
    assert {"rw", "noexec", "nosuid", "nodev"} <= set(opts)
    assert f"size={32 * 1024 * 1024}" in opts


def test_only_mount_is_the_socket_dir(tmp_path: Path) -> None:
    kw = render(tmp_path)
    assert kw["mounts"] == [Mount(target=SOCKET_MOUNT, source=str(tmp_path / "w-1"), type="bind", read_only=False)]
    assert kw["mounts"][0]["Target"] == "/run/mlbridge"


def test_relative_socket_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = make_spec(tmp_path)
    kw = render_run_kwargs(spec, IMAGE, Path("rel/w-1"), gpu_inventory=INVENTORY)
    assert kw["mounts"][0]["Source"] == str(tmp_path / "rel" / "w-1")


def test_limits(tmp_path: Path) -> None:
    kw = render(tmp_path, limits={"cpus": 1.5, "memory": "256m", "pids": 64, "nofile": 512})
    assert kw["mem_limit"] == 256 * 1024 * 1024
    assert kw["memswap_limit"] == kw["mem_limit"]
    assert kw["nano_cpus"] == 1_500_000_000
    assert kw["pids_limit"] == 64
    assert kw["ulimits"] == [Ulimit(name="nofile", soft=512, hard=512)]
    assert kw["ipc_mode"] == "private"
    assert kw["cgroupns"] == "private"


def test_default_limits(tmp_path: Path) -> None:
    kw = render(tmp_path)
    assert kw["mem_limit"] == kw["memswap_limit"] == 512 * 1024 * 1024
    assert kw["nano_cpus"] == 1_000_000_000
    assert kw["pids_limit"] == 256
    assert "size=67108864" in kw["tmpfs"]["/tmp"]
    assert "nr_inodes=16384" in kw["tmpfs"]["/tmp"]  # empty files are bounded too


def test_tenant_limits_only_ever_lower(tmp_path: Path) -> None:
    # A policy's limits reach a claimed worker as WorkerLimits; only what is below the operator's applies.
    ceiling = Limits(cpus=1.0, memory="1g", pids=256)
    wanted = WorkerLimits(cpus=0.5, memory_bytes=128 * 1024 * 1024, pids=512)
    assert wanted.below(ceiling) == WorkerLimits(cpus=0.5, memory_bytes=128 * 1024 * 1024, pids=None)
    assert not WorkerLimits(cpus=2.0, memory_bytes=2 << 30).below(ceiling)
    assert not WorkerLimits()


def test_log_caps(tmp_path: Path) -> None:
    kw = render(tmp_path)
    assert kw["log_config"] == {"type": "json-file", "config": {"max-size": "10m", "max-file": "3"}}


def test_labels(tmp_path: Path) -> None:
    kw = render(tmp_path)
    assert kw["labels"] == {
        "io.mlbridge.orchestrator": "orch-1",
        "io.mlbridge.bridge": "mock",
        "io.mlbridge.worker": "w-1",
    }


def test_extra_labels_cannot_replace_spec_labels(tmp_path: Path) -> None:
    kw = render_run_kwargs(make_spec(tmp_path), IMAGE, tmp_path / "w-1", extra_labels={
        "io.mlbridge.scope": "ci", "io.mlbridge.orchestrator": "forged"})
    assert kw["labels"]["io.mlbridge.scope"] == "ci"
    assert kw["labels"]["io.mlbridge.orchestrator"] == "orch-1"


def test_environment_merges_and_reserved_win(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, env={"A": "config", "MLBRIDGE_BRIDGE": "evil"})
    spec.config.env.update({"B": "config"})
    kw = render_run_kwargs(spec, IMAGE, tmp_path / "w-1", gpu_inventory=INVENTORY)
    assert kw["environment"] == {
        "A": "config",
        "B": "config",
        "MLBRIDGE_BRIDGE": "runtimes.mock:MockBridge",  # the name resolved on the host
        "MLBRIDGE_MAX_MESSAGE_BYTES": str(4 * 1024 * 1024),
        "TINI_SUBREAPER": "1",
    }


def test_bridge_env_is_the_runtime_import_string(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    spec.config.runtime = "not-installed-on-host"
    assert render_run_kwargs(spec, IMAGE, tmp_path / "w-1")["environment"]["MLBRIDGE_BRIDGE"] == "not-installed-on-host"
    spec.config.runtime = "runtimes.mock:MockBridge"
    assert render_run_kwargs(spec, IMAGE, tmp_path / "w-1")["environment"]["MLBRIDGE_BRIDGE"] == "runtimes.mock:MockBridge"


@pytest.mark.parametrize("name", ["BAD-NAME", "1X", "A=B", ""])
def test_invalid_env_name_is_config_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="invalid environment variable"):
        render(tmp_path, env={name: "v"})


def test_network_none_by_default(tmp_path: Path) -> None:
    assert render(tmp_path)["network_mode"] == "none"


def test_configured_network(tmp_path: Path) -> None:
    assert render(tmp_path, network="mlbridge-egress")["network_mode"] == "mlbridge-egress"
    assert render(tmp_path, network="  ")["network_mode"] == "none"


@pytest.mark.parametrize("mode", ["host", "container:abc123", "service:x"])
def test_shared_network_namespaces_refused(tmp_path: Path, mode: str) -> None:
    with pytest.raises(ConfigError, match="share another network namespace"):
        render(tmp_path, network=mode)


def test_runtime_class(tmp_path: Path) -> None:
    assert render(tmp_path, runtime_class="runsc")["runtime"] == "runsc"


def test_no_gpus_no_device_requests_and_no_inventory_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.backends.docker.render as dr

    monkeypatch.setattr(dr, "detect_gpus", lambda: pytest.fail("inventory probed without GPUs requested"))
    kw = render_run_kwargs(make_spec(tmp_path), IMAGE, tmp_path / "w-1")
    assert "device_requests" not in kw


def test_gpus_by_index_and_uuid(tmp_path: Path) -> None:
    kw = render(tmp_path, limits={"gpus": ["1", "GPU-aaaa-1111"]})
    assert kw["device_requests"] == [
        DeviceRequest(driver="nvidia", device_ids=["1", "GPU-aaaa-1111"], capabilities=[["gpu"]])
    ]
    req = kw["device_requests"][0]
    assert req["Count"] == 0  # never -1 ("all")
    assert req["DeviceIDs"] == ["1", "GPU-aaaa-1111"]


def test_gpu_duplicates_collapse(tmp_path: Path) -> None:
    kw = render(tmp_path, limits={"gpus": ["0", "0"]})
    assert kw["device_requests"][0]["DeviceIDs"] == ["0"]


def test_unknown_gpu_names_it_and_lists_available(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        render(tmp_path, limits={"gpus": ["0", "7"]})
    msg = str(info.value)
    assert "'7'" in msg
    assert "GPU-aaaa-1111" in msg and "GPU-bbbb-2222" in msg


def test_gpu_requested_on_host_without_gpus(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, limits={"gpus": ["0"]})
    with pytest.raises(ConfigError, match="none: no NVIDIA GPU"):
        render_run_kwargs(spec, IMAGE, tmp_path / "w-1", gpu_inventory=GpuInventory())


def test_gpu_inventory_detected_when_not_injected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.backends.docker.render as dr

    monkeypatch.setattr(dr, "detect_gpus", lambda: INVENTORY)
    kw = render_run_kwargs(make_spec(tmp_path, limits={"gpus": ["GPU-bbbb-2222"]}), IMAGE, tmp_path / "w-1")
    assert kw["device_requests"][0]["DeviceIDs"] == ["GPU-bbbb-2222"]


def test_all_refused_everywhere(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'all' is not allowed"):
        make_spec(tmp_path, limits={"gpus": ["all"]})
    with pytest.raises(ConfigError, match="'all' is not allowed"):
        INVENTORY.resolve(["ALL"])
    kw = render(tmp_path, limits={"gpus": ["0"]})
    assert [r["Count"] for r in kw["device_requests"]] == [0]
    assert [r["DeviceIDs"] for r in kw["device_requests"]] == [["0"]]


def test_container_name_is_sanitised(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    spec.worker_id = "tenant/a b:1"
    assert container_name(spec) == "mlbridge-mock-tenant-a-b-1"


def test_split_feeds_the_low_level_api(tmp_path: Path) -> None:
    import docker

    create, host = split_run_kwargs(render(tmp_path, limits={"gpus": ["0"]}))
    assert set(create) == {"image", "name", "hostname", "user", "environment", "labels", "detach",
                           "stop_signal", "use_config_proxy"}
    api = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41")
    hc = api.create_host_config(**host)
    assert hc["CapDrop"] == ["ALL"]
    assert hc["ReadonlyRootfs"] is True
    assert hc["Memory"] == hc["MemorySwap"]
    assert hc["NetworkMode"] == "none"
    assert hc["Init"] is True
    assert hc["IpcMode"] == "private"
    assert hc["PidsLimit"] == 256
    assert hc["DeviceRequests"][0]["DeviceIDs"] == ["0"]
    assert "OomKillDisable" not in hc
    assert hc["Mounts"][0]["Target"] == "/run/mlbridge"
    api.close()


def test_split_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown container setting"):
        split_run_kwargs({"bogus": 1})


def test_models_mount_read_only_with_propagation_and_an_export_dir(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, models=True, limits={"gpus": ["1"]})
    kw = render_run_kwargs(spec, IMAGE, tmp_path / "w-1", gpu_inventory=INVENTORY,
                           model_dirs=(tmp_path / "w-1.m", tmp_path / "w-1.x", True))
    by_target = {m["Target"]: m for m in kw["mounts"]}
    assert set(by_target) == {SOCKET_MOUNT, "/models", "/export"}
    models = by_target["/models"]
    assert models["ReadOnly"] is True and models["Source"] == str(tmp_path / "w-1.m")
    assert models["BindOptions"] == {"Propagation": "rslave"}  # models mounted at claim appear inside
    assert by_target["/export"]["ReadOnly"] is False
    assert kw["device_requests"][0]["DeviceIDs"] == ["1"]  # a GPU by id, beside the models


def test_models_mount_without_propagation_when_the_host_cannot_mount(tmp_path: Path) -> None:
    kw = render_run_kwargs(make_spec(tmp_path, models=True), IMAGE, tmp_path / "w-1",
                           model_dirs=(tmp_path / "objects", tmp_path / "w-1.x", False))
    models = next(m for m in kw["mounts"] if m["Target"] == "/models")
    assert models["ReadOnly"] is True and "BindOptions" not in models


def test_no_models_no_extra_mounts(tmp_path: Path) -> None:
    assert [m["Target"] for m in render(tmp_path)["mounts"]] == [SOCKET_MOUNT]
