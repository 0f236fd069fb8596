"""The egress proxy: the only way out of a worker whose policy grants an allowlist.

An asyncio HTTP proxy on the host. A worker reaches it at the gateway address
of the internal docker egress network (:mod:`orchestrator.backends.docker_egress`,
which also makes sure the proxy port is the *only* thing the worker can reach).
Each worker is known by its source IP: :meth:`EgressProxy.allow` registers an
IP with its tenant's allowlist for the worker's bridge, :meth:`EgressProxy.revoke`
forgets it (and cuts its open tunnels) when the worker is destroyed.

What it speaks:

``CONNECT host:port HTTP/1.1``
    A TCP tunnel: what HTTPS clients do with ``HTTPS_PROXY`` (httpx, requests,
    urllib, litellm). The proxy sees the target name and port, never the TLS
    contents.
``GET http://host[:port]/path HTTP/1.1`` (any method, absolute ``http://`` URI)
    Plain HTTP: the request is forwarded to ``host:port`` (80 by default) in
    origin form with ``Connection: close``; hop-by-hop and ``Proxy-*`` headers
    are dropped and ``Host`` is set from the URI.

Anything else is answered with one status line, a one-line reason, and the
connection closed: ``403`` (source unknown, target not on its allowlist, or a
name that resolves to a loopback / link-local / unspecified / multicast
address), ``400`` (malformed, origin-form, ``https://`` without CONNECT),
``408`` / ``431`` (header timeout / size), ``429`` (too many connections from
that source), ``502`` / ``504`` (the target could not be reached / in time),
``503`` (the decision could not be audited).

Allowlist entries are ``host:port``: the host matches exactly (case-insensitive,
a trailing dot ignored, IP literals compared as addresses) or, written
``*.example.com``, any name *below* ``example.com`` (not ``example.com``
itself). Ports match exactly. Names are resolved by the proxy on the host.

Every decision (allow or deny, with the target, tenant, bridge and worker) goes
to ``on_decision``; the orchestrator writes it to the audit log. Payload bytes
are never looked at, logged or kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from runtimes.wire.errors import ConfigError

__all__ = [
    "EgressDecision",
    "EgressProxy",
    "ProxyRequest",
    "RequestError",
    "match_allowlist",
    "parse_entry",
    "parse_request_head",
    "parse_target",
]

log = logging.getLogger("mlbridge.egress")

RULE = "egress-allowlist"
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}$")
_PORT = re.compile(r"^[0-9]{1,5}$")
_VERSIONS = ("HTTP/1.0", "HTTP/1.1")
_MAX_HEADERS = 100
_PHRASES = {
    200: "Connection established",
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
# Dropped from forwarded plain-HTTP requests (RFC 9110 7.6.1, plus the proxy's own).
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization",
                         "proxy-authenticate", "te", "trailer", "upgrade"})


class RequestError(Exception):
    """A request the proxy answers with ``status`` and a one-line ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    """A parsed request head."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class EgressDecision:
    """One allow or deny, as it goes to the audit log (never any payload)."""

    allowed: bool
    source: str
    target: str  # "host:port" as the worker asked; "" when it could not be parsed
    reason: str
    tenant: str = ""
    bridge: str = ""
    worker_id: str = ""
    method: str = ""
    suppressed: int = 0  # earlier decisions of this source left out by the audit rate cap


@dataclass(frozen=True, slots=True)
class _Entry:
    host: str
    port: int
    wildcard: bool

    def matches(self, host: str, port: int) -> bool:
        if port != self.port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


@dataclass
class _Grant:
    entries: tuple[_Entry, ...]
    raw: tuple[str, ...]
    tenant: str
    bridge: str
    worker_id: str


@dataclass
class _Source:
    """Connections from one source IP and its audit budget."""

    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    tokens: float = 0.0
    refilled: float = field(default_factory=time.monotonic)
    suppressed: int = 0


def normalize_host(host: str) -> str:
    """Lower case, no trailing dot, no IPv6 brackets; IP literals in canonical form."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.endswith("."):
        host = host[:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _split_host_port(text: str, what: str) -> tuple[str, str]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1: end + 2] != ":":
            raise ValueError(f"{what} {text!r} is not [address]:port")
        return text[: end + 1], text[end + 2:]
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{what} {text!r} is not host:port")
    return host, port


def _check_host(host: str, what: str) -> str:
    if host.startswith("["):
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise ValueError(f"{what}: {host!r} is not an IPv6 address") from None
    name = host[:-1] if host.endswith(".") else host
    if not _HOSTNAME.match(name):
        raise ValueError(f"{what}: {host!r} is not a host name or IPv4 address")
    return normalize_host(name)


def _check_port(port: str, what: str) -> int:
    if not _PORT.match(port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{what}: port {port!r} is not 1-65535")
    return int(port)


def parse_entry(entry: str) -> _Entry:
    """An allowlist entry ``host:port``, ``*.domain:port`` or ``[v6]:port``.

    Raises:
        ValueError: anything else (a bare ``*``, a wildcard in the middle, a bad port).
    """
    host, port = _split_host_port(entry.strip(), "allowlist entry")
    wildcard = host.startswith("*.")
    if wildcard:
        host = host[2:]
    if "*" in host:
        raise ValueError(f"allowlist entry {entry!r}: only a leading '*.' is allowed")
    checked = _check_host(host, f"allowlist entry {entry!r}")
    if wildcard and _is_ip(checked):
        raise ValueError(f"allowlist entry {entry!r}: a wildcard needs a domain name")
    return _Entry(checked, _check_port(port, f"allowlist entry {entry!r}"), wildcard)


def parse_target(authority: str) -> tuple[str, int]:
    """A CONNECT target ``host:port`` (or ``[v6]:port``) as (normalized host, port).

    Raises:
        RequestError: 400 for anything that is not a plain host and port.
    """
    try:
        host, port = _split_host_port(authority, "target")
        return _check_host(host, "target"), _check_port(port, "target")
    except ValueError as exc:
        raise RequestError(400, str(exc)) from None


def match_allowlist(entries: Iterable[str | _Entry], host: str, port: int) -> str | None:
    """The first entry that admits ``host:port`` (as written), or ``None``.

    ``host`` is normalized first, so ``API.Example.com.`` matches ``api.example.com``.
    """
    host = normalize_host(host)
    for entry in entries:
        parsed = parse_entry(entry) if isinstance(entry, str) else entry
        if parsed.matches(host, port):
            return entry if isinstance(entry, str) else _format(parsed)
    return None


def _format(entry: _Entry) -> str:
    host = f"[{entry.host}]" if ":" in entry.host else entry.host
    return f"{'*.' if entry.wildcard else ''}{host}:{entry.port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_request_head(head: bytes) -> ProxyRequest:
    """The request line and headers of one request head (ending in a blank line).

    Raises:
        RequestError: 400 for a malformed head (bad request line, unknown
            version, obsolete line folding, a bad header name, too many headers).
    """
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise RequestError(400, "request head is not ASCII") from None
    lines = text.split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise RequestError(400, "empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not all(parts):
        raise RequestError(400, "request line is not 'METHOD target HTTP/1.x'")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise RequestError(400, "bad method")
    if version not in _VERSIONS:
        raise RequestError(400, f"unsupported version {version[:16]!r}; HTTP/1.0 or HTTP/1.1 only")
    if len(lines) - 1 > _MAX_HEADERS:
        raise RequestError(400, f"more than {_MAX_HEADERS} headers")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            raise RequestError(400, "obsolete header line folding")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name):
            raise RequestError(400, "malformed header line")
        if any(c in value for c in "\r\n\0"):
            raise RequestError(400, "control character in a header value")
        headers.append((name, value.strip(" \t")))
    return ProxyRequest(method, target, version, tuple(headers))


def plain_http_target(req: ProxyRequest) -> tuple[str, int, bytes]:
    """(host, port, head to send upstream) for a plain-HTTP absolute-URI request.

    Raises:
        RequestError: 400 for origin-form, ``https://`` or other schemes, userinfo,
            or a bad host or port.
    """
    if req.target.startswith("/"):
        raise RequestError(400, "this is a proxy: send CONNECT host:port, or an absolute http:// URI")
    try:
        url = urlsplit(req.target)
    except ValueError:
        raise RequestError(400, "malformed request URI") from None
    if url.scheme.lower() == "https":
        raise RequestError(400, "https:// goes through CONNECT host:443, not a plain request")
    if url.scheme.lower() != "http" or not url.netloc:
        raise RequestError(400, "only CONNECT and absolute http:// URIs are supported")
    if "@" in url.netloc:
        raise RequestError(400, "userinfo in the URI is not allowed")
    netloc = url.netloc if ":" in url.netloc.rsplit("]", 1)[-1] else f"{url.netloc}:80"
    host, port = parse_target(netloc)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    dropped = {v.strip().lower() for n, v in req.headers if n.lower() == "connection" for v in v.split(",")}
    lines = [f"{req.method} {path} {req.version}"]
    lines += [f"{n}: {v}" for n, v in req.headers
              if n.lower() not in _HOP_BY_HOP and n.lower() not in dropped and n.lower() != "host"]
    lines += [f"Host: {url.netloc}", "Connection: close"]
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


DecisionHook = Callable[[EgressDecision], Awaitable[None] | None]


class EgressProxy:
    """The host-side egress proxy (see the module docstring).

    Args:
        host: address to listen on (the egress network's gateway; ``127.0.0.1`` in tests).
        port: port to listen on; ``0`` picks a free one (read :attr:`port` after :meth:`start`).
        on_decision: called with every :class:`EgressDecision` before the proxy
            acts on it; awaited when it returns an awaitable. When it raises
            on an allowed request, the request is refused (503): nothing leaves
            unaudited.
        on_count: called with (allowed, tenant, bridge) for every decision, uncapped (metrics).
        max_header_bytes: cap on a request head (431 beyond).
        header_timeout_s: time a client has to send its request head (408 after).
        connect_timeout_s: time to resolve and connect to the target (504 after).
        idle_timeout_s: a tunnel with no bytes either way for this long is closed.
        max_tunnels_per_source: open connections one source IP may hold (429 beyond).
        max_connections: open connections in all.
        audit_per_minute: decisions per source per minute passed to
            ``on_decision`` (bursts up to this many); the rest are counted and
            reported with the next passed one as ``suppressed``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, on_decision: DecisionHook | None = None,
                 on_count: Callable[[bool, str, str], None] | None = None, max_header_bytes: int = 16 << 10, header_timeout_s: float = 10.0,
                 connect_timeout_s: float = 10.0, idle_timeout_s: float = 300.0,
                 max_tunnels_per_source: int = 64, max_connections: int = 1024,
                 audit_per_minute: int = 120) -> None:
        self.host = host
        self.port = port
        self.on_decision = on_decision
        self.on_count = on_count
        self.max_header_bytes = max_header_bytes
        self.header_timeout_s = header_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_tunnels_per_source = max_tunnels_per_source
        self.max_connections = max_connections
        self.audit_per_minute = audit_per_minute
        self._grants: dict[str, _Grant] = {}
        self._sources: dict[str, _Source] = {}
        self._server: asyncio.base_events.Server | None = None
        self._open = 0
        self.counts = {"allowed": 0, "denied": 0}

    # -- registration ----------------------------------------------------------------------
    def allow(self, source_ip: str, entries: Iterable[str], *, tenant: str, bridge: str, worker_id: str) -> None:
        """Let ``source_ip`` (one worker) reach ``entries``; replaces an earlier grant of that IP.

        Raises:
            ConfigError: an entry is not ``host:port`` / ``*.domain:port``.
        """
        raw = tuple(entries)
        try:
            parsed = tuple(parse_entry(e) for e in raw)
        except ValueError as exc:
            raise ConfigError(f"egress allowlist of tenant {tenant!r}, bridge {bridge!r}: {exc}") from None
        ip = str(ipaddress.ip_address(source_ip))
        old = self._grants.get(ip)
        if old is not None and old.worker_id != worker_id:
            self._cut(ip)  # the address now belongs to another worker
        self._grants[ip] = _Grant(parsed, raw, tenant, bridge, worker_id)

    def revoke(self, source_ip: str, *, worker_id: str | None = None) -> bool:
        """Forget ``source_ip`` and close its open connections.

        With ``worker_id``, only when the grant is that worker's (an address
        reused by a newer worker keeps the newer grant). Returns whether a grant was removed.
        """
        ip = str(ipaddress.ip_address(source_ip))
        grant = self._grants.get(ip)
        if grant is None or (worker_id is not None and grant.worker_id != worker_id):
            return False
        del self._grants[ip]
        self._cut(ip)
        self._sources.pop(ip, None)
        return True

    def grant(self, source_ip: str) -> tuple[str, ...] | None:
        """The allowlist registered for ``source_ip``, or ``None``."""
        g = self._grants.get(str(ipaddress.ip_address(source_ip)))
        return None if g is None else g.raw

    def sources(self) -> dict[str, dict[str, str]]:
        """Registered source IPs with their tenant, bridge and worker."""
        return {ip: {"tenant": g.tenant, "bridge": g.bridge, "worker_id": g.worker_id}
                for ip, g in self._grants.items()}

    def open_connections(self, source_ip: str) -> int:
        src = self._sources.get(str(ipaddress.ip_address(source_ip)))
        return 0 if src is None else len(src.writers)

    def _cut(self, ip: str) -> None:
        src = self._sources.get(ip)
        for writer in list(src.writers) if src else ():
            writer.transport.abort()

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://host:port``: the value of ``HTTPS_PROXY`` / ``HTTP_PROXY`` for workers."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> int:
        """Listen; return the port."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                  limit=self.max_header_bytes, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("egress proxy listening on %s", self.url)
        return self.port

    async def close(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
        for ip in list(self._sources):
            self._cut(ip)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        self._grants.clear()

    # -- one connection --------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        ip = _canonical_ip(str(peer[0]))
        src = self._sources.setdefault(ip, _Source(tokens=float(self.audit_per_minute)))
        src.writers.add(writer)
        self._open += 1
        try:
            if self._open > self.max_connections or len(src.writers) > self.max_tunnels_per_source:
                await self._reply(writer, 429, f"too many open connections from {ip}")
                return
            await self._serve(ip, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # noqa: BLE001 - one bad connection never stops the proxy
            log.exception("egress proxy: connection from %s failed", ip)
        finally:
            self._open -= 1
            src.writers.discard(writer)
            await _finish(writer)

    async def _serve(self, ip: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.header_timeout_s)
        except asyncio.LimitOverrunError:
            await self._reply(writer, 431, f"request head over {self.max_header_bytes} bytes")
            return
        except TimeoutError:
            await self._reply(writer, 408, f"no complete request head within {self.header_timeout_s:g}s")
            return
        except asyncio.IncompleteReadError:
            return
        grant = self._grants.get(ip)
        method, target = "", ""
        try:
            req = parse_request_head(head)
            method = req.method
            if req.method == "CONNECT":
                host, port = parse_target(req.target)
                upstream_head = b""
            else:
                host, port, upstream_head = plain_http_target(req)
            target = _hostport(host, port)
            if grant is None:
                raise RequestError(403, f"source {ip} is not a registered worker")
            if match_allowlist(grant.entries, host, port) is None:
                raise RequestError(403, f"{target} is not on the egress allowlist of this worker")
        except RequestError as err:
            await self._decide(ip, grant, False, target, err.reason, method)
            await self._reply(writer, err.status, err.reason)
            return
        try:
            await self._decide(ip, grant, True, target, "allowlisted", method)
        except Exception as exc:  # noqa: BLE001 - fail closed: nothing leaves unaudited
            log.error("egress proxy: could not record the decision for %s -> %s: %s", ip, target, exc)
            await self._reply(writer, 503, "the egress decision could not be audited")
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(self._connect(host, port), self.connect_timeout_s)
        except TimeoutError:
            await self._reply(writer, 504, f"{target} did not answer within {self.connect_timeout_s:g}s")
            return
        except RequestError as err:
            await self._reply(writer, err.status, err.reason)
            return
        except OSError as exc:
            await self._reply(writer, 502, f"cannot reach {target}: {exc.strerror or type(exc).__name__}")
            return
        try:
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                up_writer.write(upstream_head)
            await self._pipe(reader, writer, up_reader, up_writer)
        finally:
            await _finish(up_writer)

    async def _connect(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Resolve (names only) and connect; a name may not lead to loopback or link-local addresses."""
        if _is_ip(host):
            return await asyncio.open_connection(host, port)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise RequestError(502, f"cannot resolve {host}: {exc.strerror}") from None
        addrs = [str(info[4][0]) for info in infos]
        usable = [a for a in addrs if not _special(a)]
        if not usable:
            raise RequestError(403, f"{host} resolves only to loopback, link-local or other special addresses")
        last: OSError | None = None
        for addr in dict.fromkeys(usable):
            try:
                return await asyncio.open_connection(addr, port)
            except OSError as exc:
                last = exc
        assert last is not None
        raise last

    async def _pipe(self, a_reader: asyncio.StreamReader, a_writer: asyncio.StreamWriter,
                    b_reader: asyncio.StreamReader, b_writer: asyncio.StreamWriter) -> None:
        last = [time.monotonic()]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(1 << 16):
                    last[0] = time.monotonic()
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError):
                a_writer.transport.abort()
                b_writer.transport.abort()

        async def watchdog() -> None:
            tick = max(0.05, min(1.0, self.idle_timeout_s / 4))
            while time.monotonic() - last[0] < self.idle_timeout_s:
                await asyncio.sleep(tick)

        pumps = [asyncio.ensure_future(pump(a_reader, b_writer)), asyncio.ensure_future(pump(b_reader, a_writer))]
        dog = asyncio.ensure_future(watchdog())
        try:
            both: asyncio.Future[list[None]] = asyncio.gather(*pumps)
            await asyncio.wait([both, dog], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        finally:
            for task in (*pumps, dog):
                task.cancel()
            await asyncio.gather(*pumps, dog, return_exceptions=True)

    async def _decide(self, ip: str, grant: _Grant | None, allowed: bool, target: str, reason: str,
                      method: str) -> None:
        self.counts["allowed" if allowed else "denied"] += 1
        if self.on_count is not None:  # every decision, before the audit's rate cap (metrics)
            self.on_count(allowed, grant.tenant if grant else "", grant.bridge if grant else "")
        log.info("egress %s %s -> %s (%s)", "allow" if allowed else "deny", ip, target or "?", reason)
        if self.on_decision is None:
            return
        src = self._sources.setdefault(ip, _Source(tokens=float(self.audit_per_minute)))
        now = time.monotonic()
        src.tokens = min(float(self.audit_per_minute), src.tokens + (now - src.refilled) * self.audit_per_minute / 60)
        src.refilled = now
        if src.tokens < 1:
            src.suppressed += 1
            return
        src.tokens -= 1
        decision = EgressDecision(allowed=allowed, source=ip, target=target, reason=reason, method=method,
                                  tenant=grant.tenant if grant else "", bridge=grant.bridge if grant else "",
                                  worker_id=grant.worker_id if grant else "", suppressed=src.suppressed)
        src.suppressed = 0
        try:
            res = self.on_decision(decision)
            if asyncio.iscoroutine(res) or isinstance(res, asyncio.Future):
                await res
        except Exception:
            if allowed:
                raise
            log.exception("egress proxy: could not record a denial")

    async def _reply(self, writer: asyncio.StreamWriter, status: int, reason: str) -> None:
        line = reason.replace("\r", " ").replace("\n", " ")[:300] + "\n"
        body = line.encode("ascii", "replace")
        writer.write(f"HTTP/1.1 {status} {_PHRASES.get(status, 'Error')}\r\nContent-Type: text/plain\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.drain(), 5)


async def _finish(writer: asyncio.StreamWriter) -> None:
    """Close after what is buffered has gone out (a second at most), else drop it."""
    if writer.transport.is_closing() and writer.transport.get_write_buffer_size() == 0:
        writer.transport.abort()
        return
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
    except Exception:  # noqa: BLE001 - a peer that does not read, or one that reset
        writer.transport.abort()


def _canonical_ip(addr: str) -> str:
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _special(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast or ip.is_reserved
