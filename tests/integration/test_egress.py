"""Per-tenant egress allowlists enforced by the egress proxy, against real docker workers.

Tenants ``net`` and ``net2`` have an allowlist for the ``custom`` bridge with
one entry, ``127.0.0.1:<ALLOWED>``; ``nonet`` has none. The egress proxy runs
on the host, so ``127.0.0.1`` is the host's loopback, where this module starts
an allowed and a denied listener; a third listener sits on the egress
network's gateway address: a host service the workers must not reach directly.

Network rule: every connection here goes to a listener this module starts on
127.0.0.1 or on this machine's docker bridge addresses (the egress gateway and
the workers' own addresses).
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator import MLBridge
from orchestrator.backends.docker.egress import network_names
from tests.harness import WORKER_CHANNEL, ServerThread, digest, make_config

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TOKENS = {"net": "net-token-0d5c4e7f1a2b", "net2": "net2-token-9e8d7c6b5a4f", "nonet": "nonet-token-3c2b1a0f9e8d"}
BRIDGES = {"custom": {"runtime": "custom", "pool_size": 2,
                      "limits": {"cpus": 1.0, "memory": "256m", "pids": 64, "tmpfs_size": "16m"}}}
ICC_PORT = 5005

PROBE = r'''
import os, socket, threading

def _head(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data

def via_proxy(inputs):
    url = os.environ["HTTPS_PROXY"]
    host, port = url.removeprefix("http://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    target = f"{inputs['host']}:{inputs['port']}"
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head, _, rest = _head(s).partition(b"\r\n\r\n")
    out = {"status": head.split(b"\r\n")[0].decode()}
    if out["status"].startswith("HTTP/1.1 200 "):
        s.sendall(inputs["payload"].encode())
        while len(rest) < len(inputs["payload"]) + 5:
            chunk = s.recv(4096)
            if not chunk:
                break
            rest += chunk
        out["echo"] = rest.decode()
    else:
        while chunk := s.recv(4096):
            rest += chunk
        out["body"] = rest.decode()
    s.close()
    return out

def direct(inputs):
    try:
        s = socket.create_connection((inputs["host"], inputs["port"]), timeout=inputs.get("timeout", 3))
    except OSError as exc:
        return {"connected": False, "error": f"{type(exc).__name__}: {exc}"}
    reply = s.recv(16)
    s.close()
    return {"connected": True, "reply": reply.decode()}

def listen(inputs):
    srv = socket.create_server(("0.0.0.0", inputs["port"]))
    def loop():
        while True:
            c, _ = srv.accept()
            c.sendall(b"hi")
            c.close()
    threading.Thread(target=loop, daemon=True).start()
    return {"listening": True}

def main(inputs):
    out = {"env": {k: os.environ.get(k) for k in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy")}}
    out.update(globals()[inputs["action"]](inputs))
    return out
'''


class Listener:
    """A TCP listener that counts connections and answers each read with ``echo:`` + the bytes."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(b"echo:" + data)

    def close(self) -> None:
        self.sock.close()


def write_policy(path: Path, allowed: str) -> Path:
    net = f'network: {{custom: {{allowlist: ["{allowed}"]}}}}'
    path.write_text(f"""version: 1
defaults:
  bridges: [custom]
  rules: [{{name: custom-all, effect: allow, bridges: [custom]}}]
tenants:
  net:
    tokens: ["{digest(TOKENS['net'])}"]
    {net}
  net2:
    tokens: ["{digest(TOKENS['net2'])}"]
    {net}
  nonet:
    tokens: ["{digest(TOKENS['nonet'])}"]
""")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("egress")
    allowed, denied = Listener("127.0.0.1"), Listener("127.0.0.1")
    policy = write_policy(tmp / "policy.yaml", f"127.0.0.1:{allowed.port}")
    audit = tmp / "audit" / "audit.jsonl"
    cfg = make_config(tmp, backend="docker", bridges=BRIDGES, default_bridge="custom", policy=str(policy),
                      audit_log=str(audit))
    with ServerThread(cfg) as srv:
        assert srv.app.egress.proxy is not None, "the egress proxy did not start"
        gateway = srv.orch.backend.egress.gateway
        host_service = Listener(gateway)
        try:
            yield {"srv": srv, "allowed": allowed, "denied": denied, "host_service": host_service,
                   "audit": audit, "gateway": gateway}
        finally:
            host_service.close()
            allowed.close()
            denied.close()


@pytest.fixture(scope="module")
def dk() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


def probe(env: dict[str, Any], tenant: str, **inputs: Any) -> dict[str, Any]:
    with MLBridge.connect(env["srv"].target, token=TOKENS[tenant]) as mb:
        out = mb.call("custom", "custom:run", {"code": PROBE, "inputs": inputs})
    return out["result"]


def worker_of(env: dict[str, Any], tenant: str) -> Any:
    workers = env["srv"].orch.pools["custom"].claimed(tenant)
    assert len(workers) == 1, workers
    return workers[0]


def address_of(env: dict[str, Any], tenant: str) -> str:
    wid = worker_of(env, tenant).id
    async def find() -> str:
        return next(ip for ip, s in env["srv"].app.egress.proxy.sources().items() if s["worker_id"] == wid)
    return env["srv"].run(find())


def test_network_and_firewall_are_set_up(env: dict[str, Any], dk: docker.DockerClient) -> None:
    srv = env["srv"]
    net = srv.orch.backend.egress
    attrs = dk.networks.get(net.names.network).attrs
    assert attrs["Internal"] is True
    assert attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    assert srv.app.egress.proxy.host == env["gateway"]
    rules = subprocess.run(["iptables", "-S", net.names.chain], capture_output=True, text=True, check=True).stdout
    assert f"-d {env['gateway']}/32 -p tcp -m tcp --dport {srv.app.egress.proxy.port} -j ACCEPT" in rules
    assert rules.rstrip().endswith(f"-A {net.names.chain} -j DROP")
    hooks = subprocess.run(["iptables", "-S"], capture_output=True, text=True, check=True).stdout
    assert f"-A INPUT -i {net.names.interface} -j {net.names.chain}" in hooks
    # Spares are tenant-neutral and stay on network none (or the channel network) until claimed.
    for w in srv.orch.pools["custom"].workers.values():
        if not w.tenant:
            nets = dk.containers.get(w.handle.ref).attrs["NetworkSettings"]["Networks"]
            assert set(nets) == start_networks(srv)


def start_networks(srv: ServerThread) -> set[str]:
    """Where a worker starts: network none, or the channel network with worker_channel tcp-mtls."""
    if WORKER_CHANNEL == "unix":
        return {"none"}
    return {network_names("channel", srv.app.backend._scope).network}


def test_allowed_target_round_trips_through_the_proxy(env: dict[str, Any], dk: docker.DockerClient) -> None:
    out = probe(env, "net", action="via_proxy", host="127.0.0.1", port=env["allowed"].port, payload="hello")
    proxy = env["srv"].app.egress.proxy
    assert out["env"]["HTTPS_PROXY"] == out["env"]["HTTP_PROXY"] == out["env"]["https_proxy"] == proxy.url
    assert out["env"]["NO_PROXY"] == ""
    assert out["status"] == "HTTP/1.1 200 Connection established"
    assert out["echo"] == "echo:hello"
    assert env["allowed"].connections == 1
    worker = worker_of(env, "net")
    nets = dk.containers.get(worker.handle.ref).attrs["NetworkSettings"]["Networks"]
    assert set(nets) == {env["srv"].orch.backend.egress.names.network} | (start_networks(env["srv"]) - {"none"})
    ip = address_of(env, "net")
    assert nets[env["srv"].orch.backend.egress.names.network]["IPAddress"] == ip
    assert proxy.sources()[ip] == {"tenant": "net", "bridge": "custom", "worker_id": worker.id}


def test_target_off_the_allowlist_is_403(env: dict[str, Any]) -> None:
    out = probe(env, "net", action="via_proxy", host="127.0.0.1", port=env["denied"].port, payload="x")
    assert out["status"].startswith("HTTP/1.1 403 ")
    assert out["body"] == f"127.0.0.1:{env['denied'].port} is not on the egress allowlist of this worker\n"
    assert env["denied"].connections == 0


def test_worker_cannot_reach_host_services_directly(env: dict[str, Any]) -> None:
    gw, svc = env["gateway"], env["host_service"]
    out = probe(env, "net", action="direct", host=gw, port=svc.port, timeout=3)
    assert out["connected"] is False, out
    # ... nor the allowed listener by the gateway address, bypassing the proxy.
    assert probe(env, "net", action="direct", host=gw, port=env["allowed"].port, timeout=2)["connected"] is False
    assert svc.connections == 0
    # The listener does answer on the host: the worker was blocked, not the service down.
    socket.create_connection((gw, svc.port), timeout=3).close()
    assert _eventually(lambda: svc.connections == 1)


def test_untrusted_workers_on_the_network_cannot_reach_each_other(env: dict[str, Any]) -> None:
    assert probe(env, "net2", action="listen", port=ICC_PORT)["listening"] is True
    ip2 = address_of(env, "net2")
    own = probe(env, "net2", action="direct", host=ip2, port=ICC_PORT)  # control: the listener is up
    assert own == {"env": own["env"], "connected": True, "reply": "hi"}
    out = probe(env, "net", action="direct", host=ip2, port=ICC_PORT, timeout=3)
    assert out["connected"] is False, out


def test_tenant_without_allowlist_has_no_network(env: dict[str, Any], dk: docker.DockerClient) -> None:
    proxy = env["srv"].app.egress.proxy
    out = probe(env, "nonet", action="direct", host=env["gateway"], port=proxy.port, timeout=3)
    assert out["env"] == {"HTTPS_PROXY": None, "HTTP_PROXY": None, "NO_PROXY": None, "https_proxy": None}
    # No network: unreachable; on the channel network its firewall rejects the attempt: no route to host.
    assert out["connected"] is False and ("unreachable" in out["error"].lower() if WORKER_CHANNEL == "unix"
                                          else "no route to host" in out["error"].lower()), out
    nets = dk.containers.get(worker_of(env, "nonet").handle.ref).attrs["NetworkSettings"]["Networks"]
    assert set(nets) == start_networks(env["srv"])
    assert worker_of(env, "nonet").id not in {s["worker_id"] for s in proxy.sources().values()}


def test_audit_log_has_the_egress_decisions(env: dict[str, Any]) -> None:
    records = [json.loads(line) for line in env["audit"].read_text().splitlines()]
    egress = [r for r in records if r["event"] == "egress"]
    wid = worker_of(env, "net").id
    allowed = [r for r in egress if r["extra"]["target"] == f"127.0.0.1:{env['allowed'].port}"]
    denied = [r for r in egress if r["extra"]["target"] == f"127.0.0.1:{env['denied'].port}"]
    assert len(allowed) == 1 and len(denied) == 1, egress
    for rec, decision, outcome in ((allowed[0], "allow", "ok"), (denied[0], "deny", "denied")):
        assert rec["decision"] == decision and rec["outcome"] == outcome
        assert (rec["tenant"], rec["bridge"], rec["worker_id"]) == ("net", "custom", wid)
        assert rec["rule"] == "egress-allowlist" and rec["extra"]["via"] == "CONNECT"
        assert rec["source"] == address_of(env, "net")
    assert "hello" not in env["audit"].read_text()  # payload bytes are never logged


def test_destroyed_worker_is_revoked(env: dict[str, Any]) -> None:
    srv = env["srv"]
    worker, ip = worker_of(env, "net"), address_of(env, "net")
    assert srv.run(_grant(srv, ip)) is not None
    assert srv.run(srv.orch.pools["custom"].release_tenant("net")) == 1
    assert srv.run(_grant(srv, ip)) is None
    assert worker.id not in srv.app.egress.addresses


def test_stop_removes_network_and_rules(tmp_path: Path, dk: docker.DockerClient) -> None:
    listener = Listener("127.0.0.1")
    try:
        policy = write_policy(tmp_path / "policy.yaml", f"127.0.0.1:{listener.port}")
        cfg = make_config(tmp_path, backend="docker", policy=str(policy), default_bridge="custom",
                          bridges={"custom": {**BRIDGES["custom"], "pool_size": 0}})
        with ServerThread(cfg) as srv:
            names = srv.orch.backend.egress.names
            assert dk.networks.list(names=[names.network])
            assert subprocess.run(["iptables", "-S", names.chain], capture_output=True).returncode == 0
        assert not [n for n in dk.networks.list(names=[names.network]) if n.name == names.network]
        assert subprocess.run(["iptables", "-S", names.chain], capture_output=True).returncode != 0
        hooks = subprocess.run(["iptables", "-S"], capture_output=True, text=True, check=True).stdout
        assert names.interface not in hooks
    finally:
        listener.close()


async def _grant(srv: ServerThread, ip: str) -> Any:
    return srv.app.egress.proxy.grant(ip)


def _eventually(check: Any, timeout: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()
