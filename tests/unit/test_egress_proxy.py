"""The egress proxy on 127.0.0.1, without docker: allowlist matching, request parsing, enforcement.

Every client here connects from 127.0.0.1, so registering (or not) 127.0.0.1
with :meth:`EgressProxy.allow` stands in for a worker's address on the egress
network. Upstreams are listeners these tests start on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from orchestrator.backends.docker.egress import EgressNames, Firewall, egress_names, network_names
from orchestrator.egress import (
    EgressDecision,
    EgressProxy,
    RequestError,
    match_allowlist,
    parse_entry,
    parse_request_head,
    parse_target,
    plain_http_target,
)
from runtimes.core.dispatch import Dispatcher
from runtimes.mock import MockBridge
from runtimes.wire.errors import ConfigError

LOCAL = "127.0.0.1"


def aio(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop, 30 s at most."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 30))

    return run

# --- pure: allowlist matching ------------------------------------------------------------


@pytest.mark.parametrize(("entries", "host", "port", "want"), [
    (["api.example.com:443"], "api.example.com", 443, "api.example.com:443"),
    (["api.example.com:443"], "API.Example.COM", 443, "api.example.com:443"),
    (["api.example.com:443"], "api.example.com.", 443, "api.example.com:443"),
    (["API.EXAMPLE.com:443"], "api.example.com", 443, "API.EXAMPLE.com:443"),
    (["api.example.com:443"], "api.example.com", 80, None),
    (["api.example.com:443"], "example.com", 443, None),
    (["api.example.com:443"], "evil-api.example.com", 443, None),
    (["api.example.com:443"], "api.example.com.evil.net", 443, None),
    (["*.example.com:443"], "a.example.com", 443, "*.example.com:443"),
    (["*.example.com:443"], "a.b.example.com", 443, "*.example.com:443"),
    (["*.example.com:443"], "example.com", 443, None),
    (["*.example.com:443"], "badexample.com", 443, None),
    (["*.example.com:443"], "a.example.com", 8443, None),
    (["127.0.0.1:8080"], "127.0.0.1", 8080, "127.0.0.1:8080"),
    (["127.0.0.1:8080"], "127.0.0.2", 8080, None),
    (["127.0.0.1:8080"], "localhost", 8080, None),
    (["[::1]:8080"], "0:0:0:0:0:0:0:1", 8080, "[::1]:8080"),
    (["a.test:1", "b.test:2"], "b.test", 2, "b.test:2"),
    ([], "a.test", 1, None),
])
def test_allowlist_matching(entries: list[str], host: str, port: int, want: str | None) -> None:
    assert match_allowlist(entries, host, port) == want


@pytest.mark.parametrize("bad", ["*:443", "*.com*:1", "a.*.example.com:443", "example.com", "example.com:0",
                                 "example.com:65536", "exa mple.com:1", "*.1.2.3.4:80", "[zz]:1", "h:+80"])
def test_bad_allowlist_entries_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_entry(bad)
    with pytest.raises(ConfigError):
        EgressProxy().allow(LOCAL, [bad], tenant="t", bridge="b", worker_id="w")


# --- pure: request parsing --------------------------------------------------------------


def test_parse_connect_head() -> None:
    req = parse_request_head(b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n"
                             b"User-Agent: x\r\n\r\n")
    assert (req.method, req.target, req.version) == ("CONNECT", "api.example.com:443", "HTTP/1.1")
    assert req.headers == (("Host", "api.example.com:443"), ("User-Agent", "x"))
    assert parse_target(req.target) == ("api.example.com", 443)
    assert parse_target("[::1]:8443") == ("::1", 8443)
    assert parse_target("API.example.com.:443") == ("api.example.com", 443)


@pytest.mark.parametrize(("head", "fragment"), [
    (b"CONNECT a.test:443\r\n\r\n", "request line"),
    (b"CONNECT  a.test:443 HTTP/1.1\r\n\r\n", "request line"),
    (b"CONNECT a.test:443 HTTP/2.0\r\n\r\n", "unsupported version"),
    (b"CONNECT a.test:443 HTTP/1.1\r\nBad Header: x\r\n\r\n", "malformed header"),
    (b"CONNECT a.test:443 HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", "folding"),
    (b"CONNECT a.t\xc3\xa9st:443 HTTP/1.1\r\n\r\n", "ASCII"),
    (b"\r\n\r\n", "empty request"),
])
def test_malformed_heads(head: bytes, fragment: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_request_head(head)
    assert info.value.status == 400 and fragment in info.value.reason


@pytest.mark.parametrize("target", ["a.test", "a.test:", ":443", "a.test:0", "a.test:99999", "a_b.test:1",
                                    "user@a.test:443", "a.test:443/x", "[::1:443", "a.test:44a"])
def test_bad_connect_targets(target: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_target(target)
    assert info.value.status == 400


def test_plain_http_is_rewritten_to_origin_form() -> None:
    req = parse_request_head(b"GET http://Svc.Test:8080/a/b?q=1 HTTP/1.1\r\nHost: other.test\r\n"
                             b"Proxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\n"
                             b"Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\nAccept: */*\r\n\r\n")
    host, port, head = plain_http_target(req)
    assert (host, port) == ("svc.test", 8080)
    lines = head.decode().split("\r\n")
    assert lines[0] == "GET /a/b?q=1 HTTP/1.1"
    assert "Accept: */*" in lines and "Host: Svc.Test:8080" in lines and "Connection: close" in lines
    assert not any(x.lower().startswith(("proxy-", "x-drop", "host: other", "connection: keep"))
                   for x in lines)
    assert head.endswith(b"\r\n\r\n")
    assert plain_http_target(parse_request_head(b"GET http://svc.test HTTP/1.0\r\n\r\n"))[:2] == ("svc.test", 80)


@pytest.mark.parametrize(("line", "fragment"), [
    (b"GET /index.html HTTP/1.1", "this is a proxy"),
    (b"GET https://a.test/ HTTP/1.1", "CONNECT"),
    (b"GET ftp://a.test/ HTTP/1.1", "only CONNECT"),
    (b"GET http://u:p@a.test/ HTTP/1.1", "userinfo"),
])
def test_plain_http_refusals(line: bytes, fragment: str) -> None:
    with pytest.raises(RequestError) as info:
        plain_http_target(parse_request_head(line + b"\r\n\r\n"))
    assert info.value.status == 400 and fragment in info.value.reason


# --- the proxy on 127.0.0.1 -------------------------------------------------------------


class Upstream:
    """A listener on 127.0.0.1 that echoes with a prefix and counts connections."""

    def __init__(self, prefix: bytes = b"echo:") -> None:
        self.prefix = prefix
        self.connections = 0
        self.received: list[bytes] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Upstream:
        self.server = await asyncio.start_server(self._handle, LOCAL, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(4096):
                self.received.append(data)
                writer.write(self.prefix + data)
                await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def running(**kw: object) -> AsyncIterator[tuple[EgressProxy, list[EgressDecision]]]:
    decisions: list[EgressDecision] = []
    proxy = EgressProxy(LOCAL, 0, on_decision=decisions.append, **kw)  # type: ignore[arg-type]
    await proxy.start()
    try:
        yield proxy, decisions
    finally:
        await proxy.close()


async def request(proxy: EgressProxy, head: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
    writer.write(head)
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 5)
    return reader, writer, status


async def refused(proxy: EgressProxy, head: bytes) -> tuple[bytes, bytes]:
    """Status line and body of a refusal, and check the proxy then closed the connection."""
    reader, writer, status = await request(proxy, head)
    rest = await asyncio.wait_for(reader.read(), 5)  # read to EOF: the proxy closed it
    writer.close()
    return status, rest.split(b"\r\n\r\n", 1)[1]


def connect_head(port: int, host: str = LOCAL) -> bytes:
    return f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


@aio
async def test_allowed_connect_tunnels_bytes_both_ways() -> None:
    async with Upstream() as up, running() as (proxy, decisions):
        proxy.allow(LOCAL, [f"{LOCAL}:{up.port}"], tenant="acme", bridge="dspy", worker_id="w1")
        reader, writer, status = await request(proxy, connect_head(up.port))
        assert status == b"HTTP/1.1 200 Connection established\r\n"
        assert await reader.readline() == b"\r\n"
        writer.write(b"ping")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(9), 5) == b"echo:ping"
        writer.close()
        assert up.connections == 1 and up.received == [b"ping"]
        assert decisions == [EgressDecision(True, LOCAL, f"{LOCAL}:{up.port}", "allowlisted", "acme", "dspy",
                                            "w1", "CONNECT")]


@aio
async def test_denied_target_gets_403_and_the_upstream_sees_nothing() -> None:
    async with Upstream() as allowed, Upstream() as other, running() as (proxy, decisions):
        proxy.allow(LOCAL, [f"{LOCAL}:{allowed.port}"], tenant="acme", bridge="dspy", worker_id="w1")
        status, body = await refused(proxy, connect_head(other.port))
        assert status.startswith(b"HTTP/1.1 403 ")
        assert body == f"{LOCAL}:{other.port} is not on the egress allowlist of this worker\n".encode()
        # A name that is not literally on the list does not match, even if it resolves there.
        status, _ = await refused(proxy, connect_head(allowed.port, host="localhost"))
        assert status.startswith(b"HTTP/1.1 403 ")
        assert other.connections == 0 and allowed.connections == 0
        assert [(d.allowed, d.target, d.tenant, d.worker_id) for d in decisions] == [
            (False, f"{LOCAL}:{other.port}", "acme", "w1"), (False, f"localhost:{allowed.port}", "acme", "w1")]


@aio
async def test_unknown_source_is_refused() -> None:
    async with Upstream() as up, running() as (proxy, decisions):
        proxy.allow("10.9.9.9", [f"{LOCAL}:{up.port}"], tenant="acme", bridge="dspy", worker_id="w1")
        status, body = await refused(proxy, connect_head(up.port))
        assert status.startswith(b"HTTP/1.1 403 ") and b"not a registered worker" in body
        assert up.connections == 0
        assert decisions[0].allowed is False and decisions[0].tenant == ""


@aio
async def test_revoke_refuses_new_connections_and_cuts_open_tunnels() -> None:
    async with Upstream() as up, running() as (proxy, _):
        proxy.allow(LOCAL, [f"{LOCAL}:{up.port}"], tenant="acme", bridge="dspy", worker_id="w1")
        reader, writer, status = await request(proxy, connect_head(up.port))
        assert status.startswith(b"HTTP/1.1 200")
        await reader.readline()
        assert proxy.revoke(LOCAL, worker_id="someone-else") is False  # a newer owner keeps it
        assert proxy.grant(LOCAL) is not None
        assert proxy.revoke(LOCAL, worker_id="w1") is True
        assert proxy.grant(LOCAL) is None and LOCAL not in proxy.sources()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the open tunnel was cut
        writer.close()
        status, _ = await refused(proxy, connect_head(up.port))
        assert status.startswith(b"HTTP/1.1 403 ")
        assert up.connections == 1


@aio
async def test_plain_http_request_is_forwarded_in_origin_form() -> None:
    async with Upstream(prefix=b"") as up, running() as (proxy, decisions):
        proxy.allow(LOCAL, [f"{LOCAL}:{up.port}"], tenant="acme", bridge="custom", worker_id="w1")
        reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
        writer.write(f"GET http://{LOCAL}:{up.port}/x?y=1 HTTP/1.1\r\nProxy-Connection: keep-alive\r\n\r\n".encode())
        await writer.drain()
        echoed = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # the upstream echoes what it got
        writer.close()
        assert echoed.startswith(b"GET /x?y=1 HTTP/1.1\r\n")
        assert f"Host: {LOCAL}:{up.port}\r\n".encode() in echoed and b"Connection: close\r\n" in echoed
        assert b"Proxy-Connection" not in echoed
        assert decisions[0].allowed and decisions[0].method == "GET"


@aio
async def test_origin_form_and_https_absolute_uri_are_400() -> None:
    async with running() as (proxy, _):
        proxy.allow(LOCAL, ["a.test:443"], tenant="acme", bridge="custom", worker_id="w1")
        for head in (b"GET / HTTP/1.1\r\n\r\n", b"GET https://a.test/ HTTP/1.1\r\n\r\n"):
            status, body = await refused(proxy, head)
            assert status.startswith(b"HTTP/1.1 400 ") and body.endswith(b"\n") and body.count(b"\n") == 1


@aio
async def test_header_cap_and_header_timeout() -> None:
    async with running(max_header_bytes=1024, header_timeout_s=0.3) as (proxy, _):
        proxy.allow(LOCAL, ["a.test:443"], tenant="acme", bridge="custom", worker_id="w1")
        status, _ = await refused(proxy, b"CONNECT a.test:443 HTTP/1.1\r\nX: " + b"a" * 4096 + b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 431 ")
        status, _ = await refused(proxy, b"CONNECT a.test:443 HTTP/1.1\r\n")  # never finishes its head
        assert status.startswith(b"HTTP/1.1 408 ")


@aio
async def test_connection_cap_per_source() -> None:
    async with Upstream() as up, running(max_tunnels_per_source=2) as (proxy, _):
        proxy.allow(LOCAL, [f"{LOCAL}:{up.port}"], tenant="acme", bridge="custom", worker_id="w1")
        open_ = [await request(proxy, connect_head(up.port)) for _ in range(2)]
        assert all(s.startswith(b"HTTP/1.1 200") for _, _, s in open_)
        status, body = await refused(proxy, connect_head(up.port))
        assert status.startswith(b"HTTP/1.1 429 ") and b"too many" in body
        for _, w, _ in open_:
            w.close()
        for _ in range(100):  # the slots free up once the tunnels close
            if proxy.open_connections(LOCAL) == 0:
                break
            await asyncio.sleep(0.02)
        _, w, status = await request(proxy, connect_head(up.port))
        assert status.startswith(b"HTTP/1.1 200")
        w.close()


@aio
async def test_idle_tunnel_is_closed() -> None:
    async with Upstream() as up, running(idle_timeout_s=0.3) as (proxy, _):
        proxy.allow(LOCAL, [f"{LOCAL}:{up.port}"], tenant="acme", bridge="custom", worker_id="w1")
        reader, writer, status = await request(proxy, connect_head(up.port))
        assert status.startswith(b"HTTP/1.1 200")
        await reader.readline()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the proxy, not by us
        writer.close()


@aio
async def test_unreachable_target_is_502() -> None:
    async with Upstream() as up, running() as (proxy, _):
        port = up.port
    async with running() as (proxy, decisions):
        proxy.allow(LOCAL, [f"{LOCAL}:{port}"], tenant="acme", bridge="custom", worker_id="w1")
        status, body = await refused(proxy, connect_head(port))  # the listener is closed now
        assert status.startswith(b"HTTP/1.1 502 ") and b"cannot reach" in body
        assert decisions[0].allowed  # allowed by policy, then failed


@aio
async def test_name_resolving_to_loopback_is_refused() -> None:
    async with Upstream() as up, running() as (proxy, _):
        proxy.allow(LOCAL, [f"localhost:{up.port}"], tenant="acme", bridge="custom", worker_id="w1")
        status, body = await refused(proxy, connect_head(up.port, host="localhost"))
        assert status.startswith(b"HTTP/1.1 403 ") and b"loopback" in body
        assert up.connections == 0


@aio
async def test_audit_failure_refuses_an_allowed_request() -> None:
    def broken(decision: EgressDecision) -> None:
        raise OSError("disk full")

    async with Upstream() as up:
        proxy = EgressProxy(LOCAL, 0, on_decision=broken)
        await proxy.start()
        try:
            proxy.allow(LOCAL, [f"{LOCAL}:{up.port}"], tenant="acme", bridge="custom", worker_id="w1")
            status, _ = await refused(proxy, connect_head(up.port))
            assert status.startswith(b"HTTP/1.1 503 ")
            assert up.connections == 0
        finally:
            await proxy.close()


@aio
async def test_audit_rate_cap_counts_what_it_leaves_out() -> None:
    async with running(audit_per_minute=2) as (proxy, decisions):
        proxy.allow(LOCAL, ["a.test:443"], tenant="acme", bridge="custom", worker_id="w1")
        for _ in range(5):
            await refused(proxy, connect_head(9, host="b.test"))
        assert len(decisions) == 2 and proxy.counts["denied"] == 5
        proxy._sources[LOCAL].tokens = 1.0  # a minute later
        await refused(proxy, connect_head(9, host="b.test"))
        assert decisions[-1].suppressed == 3


@aio
async def test_a_new_grant_for_a_reused_address_replaces_the_old() -> None:
    async with running() as (proxy, _):
        proxy.allow(LOCAL, ["a.test:443"], tenant="acme", bridge="custom", worker_id="w1")
        proxy.allow(LOCAL, ["b.test:443"], tenant="other", bridge="custom", worker_id="w2")
        assert proxy.grant(LOCAL) == ("b.test:443",)
        assert proxy.sources()[LOCAL] == {"tenant": "other", "bridge": "custom", "worker_id": "w2"}
        assert proxy.revoke(LOCAL, worker_id="w1") is False  # the old worker's revoke is too late
        assert proxy.grant(LOCAL) == ("b.test:443",)


# --- Configure env in the runtime ---------------------------------------------------------


def test_configure_sets_only_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(k, raising=False)
    d = Dispatcher(MockBridge(), max_message_bytes=1 << 20)
    with pytest.raises(ConfigError) as info:
        d.configure("acme", {}, {"LD_PRELOAD": "/tmp/x.so"})
    assert "LD_PRELOAD" in str(info.value) and not d.configured
    with pytest.raises(ConfigError):
        d.configure("acme", {}, {"HTTPS_PROXY": "http://x\nEVIL=1"})
    import os

    assert "HTTPS_PROXY" not in os.environ
    monkeypatch.setattr(os, "environ", dict(os.environ))  # keep the test process clean
    d.configure("acme", {}, {"HTTPS_PROXY": "http://172.18.0.1:3128", "NO_PROXY": ""})
    assert os.environ["HTTPS_PROXY"] == "http://172.18.0.1:3128" and os.environ["NO_PROXY"] == ""
    assert d.configured and d.bridge.tenant == "acme"


# --- the firewall's command lines (fake iptables) ---------------------------------------------


class FakeIptables:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv):  # noqa: ANN001
        import subprocess

        self.calls.append(list(argv))
        rc = 1 if argv[3] in ("-C", "-D") else 0  # no jump exists yet
        return subprocess.CompletedProcess(argv, rc, "", "")


def test_egress_names_fit_kernel_limits() -> None:
    names = egress_names("0123456789abcdef")
    assert names == EgressNames("mlbridge-egress-0123456789abcdef", "mlbeg-012345678", "MLB-EGRESS-0123456789abcdef")
    assert len(names.interface) <= 15 and len(names.chain) <= 28
    assert egress_names(None).network == "mlbridge-egress-default"


def test_firewall_allows_only_the_proxy_port() -> None:
    fake = FakeIptables()
    fw = Firewall(egress_names("abc"), runner=fake)
    fw.install("172.18.0.1", 3128)
    v4 = [c[3:] for c in fake.calls if c[0] == "iptables"]
    assert ["-A", "MLB-EGRESS-abc", "-d", "172.18.0.1/32", "-p", "tcp", "--dport", "3128", "-j", "ACCEPT"] in v4
    assert v4.index(["-A", "MLB-EGRESS-abc", "-j", "DROP"]) > v4.index(
        ["-A", "MLB-EGRESS-abc", "-d", "172.18.0.1/32", "-p", "tcp", "--dport", "3128", "-j", "ACCEPT"])
    for hook, direction in (("INPUT", "-i"), ("FORWARD", "-i"), ("FORWARD", "-o")):
        assert ["-I", hook, "1", direction, "mlbeg-abc", "-j", "MLB-EGRESS-abc"] in v4
    assert all(c[1:3] == ["-w", "10"] for c in fake.calls)
    fake.calls.clear()
    fw.remove()
    assert ["iptables", "-w", "10", "-X", "MLB-EGRESS-abc"] in fake.calls


def test_firewall_check_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import shutil
    import subprocess

    ok = Firewall(egress_names("abc"), runner=lambda argv: subprocess.CompletedProcess(argv, 0, "", ""))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ConfigError, match="not running as root"):
        ok.check()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="iptables is not installed"):
        ok.check()
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/sbin/{name}")
    broken = Firewall(egress_names("abc"),
                      runner=lambda argv: subprocess.CompletedProcess(argv, 3, "", "can't initialize iptables"))
    with pytest.raises(ConfigError, match="can't initialize iptables"):
        broken.check()
    ok.check()


class FakeEngine:
    """Just enough of the docker backend's Engine for EgressNetwork."""

    def __init__(self, networks: dict[str, dict[str, Any]]) -> None:
        self.networks = networks  # container's attached networks
        self.calls: list[tuple[str, ...]] = []
        self.created: dict[str, Any] = {}

    def inspect_network(self, name: str) -> dict[str, Any] | None:
        return self.created or None

    def create_network(self, name: str, **kw: Any) -> None:
        self.calls.append(("create", name))
        self.created = {"Id": "n1", "Name": name, "Internal": kw["internal"], "Options": kw["options"],
                        "Labels": kw["labels"], "IPAM": {"Config": [{"Subnet": "172.30.0.0/16",
                                                                     "Gateway": "172.30.0.1"}]}}

    def inspect(self, cid: str) -> dict[str, Any]:
        return {"NetworkSettings": {"Networks": dict(self.networks)}}

    def disconnect(self, cid: str, net: str, **kw: Any) -> None:
        self.calls.append(("disconnect", net))
        self.networks.pop(net, None)

    def connect(self, cid: str, net: str) -> None:
        self.calls.append(("connect", net))
        self.networks["mlbridge-egress-abc"] = {"IPAddress": "172.30.0.7"}


def test_network_moves_a_worker_off_none_only_once_firewalled(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from orchestrator.backends.docker.egress import EgressNetwork

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(Firewall, "check", lambda self: None)
    api = FakeEngine({"none": {}})
    net = EgressNetwork(api, "abc", runner=FakeIptables())  # type: ignore[arg-type]
    assert net.open() == "172.30.0.1"
    opts = api.created["Options"]
    assert api.created["Internal"] is True and opts["com.docker.network.bridge.enable_icc"] == "false"
    assert opts["com.docker.network.bridge.name"] == "mlbeg-abc"
    from runtimes.wire.errors import Unavailable

    with pytest.raises(Unavailable, match="firewall is not installed"):
        net.connect("c" * 64)  # never on the network before the firewall is up
    net.protect(3128)
    assert net.connect("c" * 64) == "172.30.0.7"
    assert api.calls[-2:] == [("disconnect", "none"), ("connect", "n1")]
    other = FakeEngine({"bridge": {}})
    other.created = api.created
    net2 = EgressNetwork(other, "abc", runner=FakeIptables())  # type: ignore[arg-type]
    net2.open()
    net2.protect(3128)
    with pytest.raises(ConfigError, match="network\\(s\\) bridge"):
        net2.connect("d" * 64)  # a worker with open networking is refused, not half-confined


def test_process_backend_warns_that_egress_is_not_enforced(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    import hashlib
    import logging

    from tests.harness import ServerThread, make_config

    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""version: 1
defaults:
  bridges: [mock]
  rules: [{{name: all, effect: allow}}]
tenants:
  acme:
    tokens: ["sha256:{hashlib.sha256(b'acme-token-123456').hexdigest()}"]
    network: {{mock: {{allowlist: ["llm.example.internal:443"]}}}}
""")
    policy.chmod(0o600)
    cfg = make_config(tmp_path, policy=str(policy), bridges={"mock": {"runtime": "mock", "pool_size": 1}})
    caplog.set_level(logging.WARNING, logger="mlbridge.policy")
    with ServerThread(cfg) as srv:
        egress = srv.app.egress
        assert egress is not None and egress.proxy is None
        assert egress.bridges() == {"mock": ["acme"]}
        worker = next(iter(srv.orch.pools["mock"].workers.values()))
        assert srv.run(egress.attach("acme", worker)) == {}
    warnings = [r.getMessage() for r in caplog.records if "NOT ENFORCED" in r.getMessage()]
    assert len(warnings) == 1 and "tenants acme" in warnings[0] and "process backend" in warnings[0]


def test_channel_firewall_passes_only_replies_and_rejects_the_rest() -> None:
    fake = FakeIptables()
    names = network_names("channel", "abc")
    assert names == EgressNames("mlbridge-channel-abc", "mlbch-abc", "MLB-CHAN-abc")
    fw = Firewall(names, runner=fake)
    fw._v6 = True  # as check() finds on a host with IPv6
    fw.install_rules([["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"]],
                     [["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"]],
                     final=(("REJECT", "--reject-with", "icmp-host-prohibited"),
                            ("REJECT", "--reject-with", "icmp6-adm-prohibited")))
    for tool, reject in (("iptables", "icmp-host-prohibited"), ("ip6tables", "icmp6-adm-prohibited")):
        rules = [c[3:] for c in fake.calls if c[0] == tool and c[3] == "-A"]
        assert rules == [["-A", "MLB-CHAN-abc", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
                         ["-A", "MLB-CHAN-abc", "-j", "REJECT", "--reject-with", reject]], tool
        hooks = [c[3:] for c in fake.calls if c[0] == tool and c[3] == "-I"]
        assert ["-I", "INPUT", "1", "-i", "mlbch-abc", "-j", "MLB-CHAN-abc"] in hooks
        assert ["-I", "FORWARD", "1", "-o", "mlbch-abc", "-j", "MLB-CHAN-abc"] in hooks
