"""Escape attempts by hostile user code: each one fails with the specific errno.

Read-only root, setuid binaries under no-new-privileges, mount / unshare,
kernel interfaces (sysrq, core_pattern, module loading), raw and packet
sockets, device nodes, container-engine sockets, the host's environment and
processes, and the network (``--network none``): a listener this test starts
on this machine's docker bridge address (and on loopback, and an abstract unix
socket) sees nothing. After each attempt the orchestrator still serves.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import docker
import pytest

from tests.harness import WORKER_CHANNEL

from .conftest import (
    CUSTOM_ENV,
    HOST_MARKER,
    HOST_MARKER_NAME,
    WORKER_UID,
    Sandbox,
    docker_bridge_ipv4,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(180)]


# --------------------------------------------------------------------------------------------
# the root file system is read-only


ROOT_WRITES = """
import errno, os

def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]

def main(inputs):
    out = {}
    for path in inputs["new_files"]:
        out[path] = attempt(lambda: open(path, "x").close())
    for path in inputs["existing"]:
        out[path] = attempt(lambda: open(path, "a").close())
    out["mkdir /mlbridge-probe"] = attempt(lambda: os.mkdir("/mlbridge-probe"))
    out["rename /etc/hosts"] = attempt(lambda: os.rename("/etc/hosts", "/etc/hosts.bak"))
    out["chmod /opt/mlbridge"] = attempt(lambda: os.chmod("/opt/mlbridge", 0o777))
    return out
"""


def test_root_filesystem_is_read_only(sandbox: Sandbox) -> None:
    before = sandbox.claim()
    new_files = ["/probe", "/opt/mlbridge/probe", "/opt/mlbridge/runtimes/probe.py", "/etc/probe",
                 "/usr/local/lib/probe", "/var/probe", "/run/lock/probe", "/home/probe"]
    existing = ["/etc/passwd", "/opt/mlbridge/runtimes/custom/bridge.py", "/etc/hosts"]
    result = sandbox.result(ROOT_WRITES, {"new_files": new_files, "existing": existing})
    for path in new_files:
        assert result[path] == "EROFS", (path, result)
    # Root-owned files: the permission check (EACCES) comes before the read-only check.
    for path in existing:
        assert result[path] in ("EACCES", "EROFS"), (path, result)
    assert result["mkdir /mlbridge-probe"] == "EROFS"
    assert result["rename /etc/hosts"] in ("EROFS", "EACCES", "EBUSY"), result
    assert result["chmod /opt/mlbridge"] in ("EPERM", "EROFS"), result
    assert sandbox.assert_serving() == before


# --------------------------------------------------------------------------------------------
# setuid binaries give no privilege


SETUID = """
import os, shutil, stat, subprocess, time

def main(inputs):
    found = subprocess.run(["find", "/", "-xdev", "-perm", "-4000", "-type", "f"],
                           capture_output=True, text=True).stdout.split()
    status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
    out = {"setuid_files": found, "no_new_privs": status["NoNewPrivs"].strip(),
           "cap_eff": status["CapEff"].strip(), "uid": os.getuid(), "euid": os.geteuid()}
    # su is setuid root: with no-new-privileges its exec keeps our uid. Read the
    # uids of the running su while it waits for a password, then kill it.
    if shutil.which("su"):
        p = subprocess.Popen(["su", "root", "-c", "id -u"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        uids = None
        deadline = time.monotonic() + 5
        while uids is None and time.monotonic() < deadline:
            st = open(f"/proc/{p.pid}/status").read()
            if "Name:\\tsu" in st:
                uids = [l.split()[1:] for l in st.splitlines() if l.startswith("Uid:")][0]
            time.sleep(0.01)
        p.kill()
        p.communicate()
        out["su_uids"] = uids
    r = subprocess.run(["mount", "-t", "tmpfs", "none", "/tmp"], capture_output=True, text=True)
    out["mount_cmd"] = [r.returncode, r.stderr.strip().splitlines()[0] if r.stderr.strip() else ""]
    # chmod u+s on our own copy works on the tmpfs, but /tmp is noexec (and nosuid).
    shutil.copy("/usr/bin/id", "/tmp/id-suid")
    os.chmod("/tmp/id-suid", 0o4755)
    out["copy_mode"] = oct(stat.S_IMODE(os.stat("/tmp/id-suid").st_mode))
    try:
        subprocess.run(["/tmp/id-suid", "-u"], capture_output=True)
        out["exec_copy"] = "ran"
    except OSError as e:
        out["exec_copy"] = e.errno
    os.remove("/tmp/id-suid")
    return out
"""


def test_setuid_binaries_give_no_privilege(sandbox: Sandbox) -> None:
    before = sandbox.claim()
    result = sandbox.result(SETUID, deadline_s=20)
    assert result["uid"] == result["euid"] == WORKER_UID
    assert result["no_new_privs"] == "1"
    assert result["cap_eff"] == "0000000000000000"
    if "/usr/bin/su" in result["setuid_files"]:
        assert result["su_uids"] == [str(WORKER_UID)] * 4, result  # real, effective, saved, fs
    if "/usr/bin/mount" in result["setuid_files"]:
        assert result["mount_cmd"][0] != 0 and "must be superuser" in result["mount_cmd"][1], result
    assert result["copy_mode"] == "0o4755"  # the bit is set ...
    assert result["exec_copy"] == errno.EACCES  # ... but nothing on /tmp may run
    assert sandbox.assert_serving() == before


# --------------------------------------------------------------------------------------------
# mount, namespaces, kernel interfaces, raw sockets, device nodes


KERNEL = """
import ctypes, errno, os, platform, shutil, socket, stat, time

libc = ctypes.CDLL(None, use_errno=True)
SYSCALLS = {"x86_64": {"init_module": 175, "finit_module": 313, "delete_module": 176},
            "aarch64": {"init_module": 105, "finit_module": 273, "delete_module": 106}}[platform.machine()]

def c(ret):
    return "ok" if ret == 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))

def py(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]

def write(path, data):
    with open(path, "w") as f:
        f.write(data)

ATTACKS = {
    "mount tmpfs": lambda: c(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
    "mount proc": lambda: c(libc.mount(b"proc", b"/tmp", b"proc", 0, None)),
    "remount / rw": lambda: c(libc.mount(None, b"/", None, 32, None)),  # MS_REMOUNT
    "unshare user+mount ns": lambda: c(libc.unshare(0x10000000 | 0x00020000)),
    "unshare user ns": lambda: c(libc.unshare(0x10000000)),
    "unshare net ns": lambda: c(libc.unshare(0x40000000)),
    "sysrq-trigger": lambda: (os.path.exists("/proc/sysrq-trigger"), py(lambda: write("/proc/sysrq-trigger", "h"))),
    "core_pattern": lambda: py(lambda: write("/proc/sys/kernel/core_pattern", "|/tmp/pwn")),
    "init_module": lambda: c(libc.syscall(SYSCALLS["init_module"], None, 0, b"")),
    "finit_module": lambda: c(libc.syscall(SYSCALLS["finit_module"], 0, b"", 0)),
    "delete_module": lambda: c(libc.syscall(SYSCALLS["delete_module"], b"overlay", 0)),
    "modprobe/insmod": lambda: [shutil.which(x) for x in ("modprobe", "insmod", "rmmod")],
    "raw socket": lambda: py(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()),
    "packet socket": lambda: py(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)).close()),
    "mknod block": lambda: py(lambda: os.mknod("/tmp/sda", 0o600 | stat.S_IFBLK, os.makedev(8, 0))),
    "mknod char": lambda: py(lambda: os.mknod("/tmp/mem", 0o600 | stat.S_IFCHR, os.makedev(1, 1))),
    "setuid 0": lambda: py(lambda: os.setuid(0)),
    "chroot": lambda: py(lambda: os.chroot("/tmp")),
    "set clock": lambda: py(lambda: time.clock_settime(time.CLOCK_REALTIME, time.time() + 3600)),
}

def main(inputs):
    return ATTACKS[inputs["attack"]]()
"""

KERNEL_EXPECTED: dict[str, Any] = {
    "mount tmpfs": "EPERM",
    "mount proc": "EPERM",
    "remount / rw": "EPERM",
    "unshare user+mount ns": "EPERM",
    "unshare user ns": "EPERM",
    "unshare net ns": "EPERM",
    # This file is absent where the kernel has no magic sysrq; where present, docker
    # mounts it read-only.
    "sysrq-trigger": lambda r: r == [True, "EROFS"] or r == [False, "ENOENT"],
    "core_pattern": "EROFS",
    "init_module": "EPERM",
    "finit_module": "EPERM",
    "delete_module": "EPERM",
    "modprobe/insmod": [None, None, None],
    "raw socket": "EPERM",
    "packet socket": "EPERM",
    "mknod block": "EPERM",
    "mknod char": "EPERM",
    "setuid 0": "EPERM",
    "chroot": "EPERM",
    "set clock": "EPERM",
}


@pytest.mark.parametrize("attack", list(KERNEL_EXPECTED))
def test_privileged_kernel_operations_fail(sandbox: Sandbox, attack: str) -> None:
    before = sandbox.claim()
    got = sandbox.result(KERNEL, {"attack": attack})
    expected = KERNEL_EXPECTED[attack]
    if callable(expected):
        assert expected(got), (attack, got)
    else:
        assert got == expected, (attack, got)
    assert sandbox.assert_serving() == before


# --------------------------------------------------------------------------------------------
# container-engine sockets


ENGINE_SOCKETS = """
import errno, os, socket, stat

def main(inputs):
    found = []
    for root in ("/",):
        for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
            if dirpath in ("/proc", "/sys"):
                dirnames[:] = []
                continue
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                try:
                    if stat.S_ISSOCK(os.lstat(p).st_mode):
                        found.append(p)
                except OSError:
                    pass
    connects = {}
    for path in inputs["candidates"]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect(path)
            connects[path] = "connected"
        except OSError as e:
            connects[path] = errno.errorcode.get(e.errno, str(e.errno))
        finally:
            s.close()
    run = sorted(os.listdir("/run"))
    return {"sockets": sorted(found), "connects": connects, "run": run,
            "var_run": os.path.realpath("/var/run")}
"""

ENGINE_SOCKET_PATHS = [
    "/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock", "/run/containerd/containerd.sock.ttrpc", "/run/podman/podman.sock",
    "/run/crio/crio.sock", "/run/buildkit/buildkitd.sock", "/run/docker/libnetwork/docker.sock",
]


def test_no_container_engine_socket_is_reachable(sandbox: Sandbox) -> None:
    before = sandbox.claim()
    result = sandbox.result(ENGINE_SOCKETS, {"candidates": ENGINE_SOCKET_PATHS}, deadline_s=20)
    # The only socket in the whole file system is the worker's own runtime socket (none on tcp-mtls).
    expected = ["/run/mlbridge/runtime.sock"] if WORKER_CHANNEL == "unix" else []
    assert result["sockets"] == expected, result["sockets"]
    assert result["var_run"] == "/run"
    assert result["run"] == ["lock", "mlbridge"], result["run"]
    for path in ENGINE_SOCKET_PATHS:
        assert result["connects"][path] == "ENOENT", (path, result["connects"])
    assert sandbox.assert_serving() == before


# --------------------------------------------------------------------------------------------
# the host's environment and processes


ENVIRONMENT = """
import os

def main(inputs):
    procs = {}
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        try:
            procs[pid] = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")[0].decode()
        except OSError:
            pass
    environs = {}
    for pid in procs:
        try:
            environs[pid] = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
        except OSError as e:
            environs[pid] = f"unreadable: {e.errno}"
    return {"environ": dict(os.environ), "procs": procs, "proc_environs": environs,
            "hostname": open("/etc/hostname").read().strip()}
"""

SECRETISH = re.compile(r"(TOKEN|SECRET|PASSW|API_KEY|CREDENTIAL|AWS_|DOCKER_|SSH_|KUBE)", re.I)


def _image_env(image: str = "mlbridge/custom:0.1.0") -> dict[str, str]:
    client = docker.from_env()
    try:
        env = client.api.inspect_image(image)["Config"].get("Env") or []
    finally:
        client.close()
    return dict(e.split("=", 1) for e in env)


def test_no_host_environment_or_processes_are_visible(sandbox: Sandbox) -> None:
    import os

    assert os.environ[HOST_MARKER_NAME] == HOST_MARKER  # the host (this process) has it
    before = sandbox.claim()
    result = sandbox.result(ENVIRONMENT)
    dump = json.dumps(result)
    assert HOST_MARKER not in dump and HOST_MARKER_NAME not in dump
    env = result["environ"]
    image_env = _image_env()
    allowed = set(image_env) | set(CUSTOM_ENV) | {"HOSTNAME", "HOME", "PWD", "MLBRIDGE_BRIDGE",
                                                  "MLBRIDGE_MAX_MESSAGE_BYTES", "TINI_SUBREAPER",
                                                  "MLBRIDGE_LISTEN", "MLBRIDGE_TLS_DIR",  # tcp-mtls
                                                  "GRPC_ENABLE_FORK_SUPPORT"}  # set by the runtime itself
    assert set(env) <= allowed, sorted(set(env) - allowed)
    for key, value in image_env.items():
        if key != "MLBRIDGE_BRIDGE":
            assert env.get(key) == value, key
    assert not [k for k in env if SECRETISH.search(k)], env
    assert env["HOSTNAME"] == result["hostname"] == "worker"
    # No value of the host's own environment leaked in (beyond values the image sets too).
    leaked = {k for k, v in os.environ.items() if len(v) > 8 and v in dump and v not in image_env.values()}
    assert not leaked, leaked
    # /proc shows only the container's processes: docker-init, tini, the runtime.
    procs = result["procs"]
    assert procs["1"] == "/sbin/docker-init", procs
    assert set(procs.values()) <= {"/sbin/docker-init", "/usr/bin/tini", "python3"}, procs
    assert len(procs) <= 4, procs
    for pid, environ in result["proc_environs"].items():
        assert HOST_MARKER not in environ, pid
    assert sandbox.assert_serving() == before


# --------------------------------------------------------------------------------------------
# the network: none


@dataclass
class Listeners:
    """Listeners this test starts on this machine; they record whatever reaches them."""

    bridge_ip: str
    tcp_bridge: socket.socket
    tcp_loopback: socket.socket
    udp_bridge: socket.socket
    abstract: socket.socket
    abstract_name: str
    seen: list[Any] = field(default_factory=list)

    def ports(self) -> dict[str, Any]:
        return {"bridge": self.bridge_ip, "tcp_bridge": self.tcp_bridge.getsockname()[1],
                "tcp_loopback": self.tcp_loopback.getsockname()[1], "udp_bridge": self.udp_bridge.getsockname()[1],
                "abstract": self.abstract_name}


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    host = docker_bridge_ipv4()

    def tcp(addr: str) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((addr, 0))
        s.listen(8)
        s.settimeout(0.1)
        return s

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((host, 0))
    udp.settimeout(0.1)
    name = f"mlbridge-test-{uuid.uuid4().hex}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0" + name)
    abstract.listen(8)
    abstract.settimeout(0.1)
    ls = Listeners(host, tcp(host), tcp("127.0.0.1"), udp, abstract, name)
    stop = threading.Event()

    def watch(sock: socket.socket, kind: str) -> None:
        while not stop.is_set():
            try:
                if sock.type == socket.SOCK_DGRAM:
                    data, peer = sock.recvfrom(4096)
                    ls.seen.append((kind, peer, data))
                else:
                    conn, peer = sock.accept()
                    ls.seen.append((kind, peer))
                    conn.close()
            except (TimeoutError, OSError):
                continue

    threads = [threading.Thread(target=watch, args=(s, k), daemon=True) for s, k in (
        (ls.tcp_bridge, "tcp-bridge"), (ls.tcp_loopback, "tcp-loopback"), (ls.udp_bridge, "udp-bridge"),
        (ls.abstract, "abstract-unix"))]
    for t in threads:
        t.start()
    try:
        yield ls
    finally:
        stop.set()
        for t in threads:
            t.join(2)
        for s in (ls.tcp_bridge, ls.tcp_loopback, ls.udp_bridge, ls.abstract):
            s.close()


NETWORK = """
import errno, socket

def name(e):
    return errno.errorcode.get(e.errno, str(e.errno))

def tcp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((host, port))
        return "connected"
    except OSError as e:
        return name(e)
    finally:
        s.close()

def main(inputs):
    out = {"interfaces": sorted(n for _, n in socket.if_nameindex())}
    out["tcp_bridge"] = tcp(inputs["bridge"], inputs["tcp_bridge"])
    out["tcp_loopback"] = tcp("127.0.0.1", inputs["tcp_loopback"])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.sendto(b"mlbridge-probe", (inputs["bridge"], inputs["udp_bridge"]))
        out["udp_bridge"] = "sent"
    except OSError as e:
        out["udp_bridge"] = name(e)
    finally:
        u.close()
    a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        a.connect("\\0" + inputs["abstract"])
        out["abstract"] = "connected"
    except OSError as e:
        out["abstract"] = name(e)
    finally:
        a.close()
    out["routes"] = open("/proc/net/route").read().splitlines()[1:]
    return out
"""


def test_network_none_reaches_no_host_listener(sandbox: Sandbox, listeners: Listeners) -> None:
    before = sandbox.claim()
    result = sandbox.result(NETWORK, listeners.ports(), deadline_s=15)
    if WORKER_CHANNEL == "unix":
        assert result["interfaces"] == ["lo"], result
        assert result["routes"] == [], result
        assert result["tcp_bridge"] == "ENETUNREACH", result
        assert result["udp_bridge"] == "ENETUNREACH", result
    else:  # tcp-mtls: one interface, on the channel network, whose firewall drops whatever the worker sends
        assert result["interfaces"] == ["eth0", "lo"], result
        assert {r.split()[0] for r in result["routes"]} == {"eth0"}, result
        assert result["tcp_bridge"] == "EHOSTUNREACH", result  # rejected by the channel network's firewall
        assert result["udp_bridge"] == "sent", result  # (it leaves the socket; nothing arrives: below)
    # The worker's loopback is its own: the host's loopback listener is not there.
    assert result["tcp_loopback"] == "ECONNREFUSED", result
    # Abstract unix sockets are per network namespace: the host's are invisible.
    assert result["abstract"] == "ECONNREFUSED", result
    import time

    time.sleep(0.3)  # let any stray packet arrive before looking
    assert listeners.seen == []
    assert sandbox.assert_serving() == before
