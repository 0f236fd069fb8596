"""The docker backend's egress network, and the host firewall around it.

A worker whose tenant's policy grants an allowlist for its bridge leaves
network ``none`` when it is claimed and joins one internal docker network,
``mlbridge-egress-<scope>`` (``internal``: no route off the host; inter-container
traffic off, ``enable_icc=false``). The host side of that network's bridge is
its gateway address, where the orchestrator's egress proxy
(:mod:`orchestrator.egress`) listens. Docker would still let a container on
the network reach *every* service of the host on that address (and other
host addresses), so :class:`Firewall` adds a dedicated iptables chain:

    INPUT   -i <bridge if> -> MLB-EGRESS-<scope>
    FORWARD -i <bridge if> -> MLB-EGRESS-<scope>
    FORWARD -o <bridge if> -> MLB-EGRESS-<scope>
    MLB-EGRESS-<scope>: -d <gateway> -p tcp --dport <proxy port> ACCEPT; DROP

and the same chain in ip6tables with DROP alone (the proxy listens on IPv4).
Replies of the proxy leave through OUTPUT, which is untouched. Without a
working iptables (as root) allowlists are refused (:class:`ConfigError`),
never run unprotected.

Workers on the network are started with the gateway as their only DNS
server: docker's embedded resolver then forwards from the container's
namespace to an address the firewall drops, so DNS is no way out either
(older engines forward from the host's namespace when the host resolver is
on loopback, CVE-2024-29018). Workers need no DNS: the proxy resolves names.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runtimes.wire.errors import ConfigError, Unavailable

from ..base import LABEL_PREFIX
from .engine import Engine

__all__ = ["CHANNEL_LABEL", "EGRESS_LABEL", "ChannelNetwork", "EgressNames", "EgressNetwork", "Firewall",
           "egress_names", "network_names"]

log = logging.getLogger("mlbridge.backend.docker.egress")

EGRESS_LABEL = f"{LABEL_PREFIX}egress"
CHANNEL_LABEL = f"{LABEL_PREFIX}channel"
ICC_OPTION = "com.docker.network.bridge.enable_icc"
NAME_OPTION = "com.docker.network.bridge.name"
MASQ_OPTION = "com.docker.network.bridge.enable_ip_masquerade"
_IFNAMSIZ = 15  # Linux interface names: 15 bytes
_HOOKS = (("INPUT", "-i"), ("FORWARD", "-i"), ("FORWARD", "-o"))

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class EgressNames:
    network: str  # docker network name
    interface: str  # host bridge interface
    chain: str  # iptables chain


#: Each kind of network: (network name prefix, bridge interface prefix, chain prefix).
_KINDS = {"egress": ("mlbridge-egress", "mlbeg", "MLB-EGRESS"), "channel": ("mlbridge-channel", "mlbch", "MLB-CHAN")}


def network_names(kind: str, scope: str | None) -> EgressNames:
    """Names of an ``egress`` or ``channel`` network, derived from the backend's scope (``default`` without one)."""
    network, interface, chain = _KINDS[kind]
    tag = "".join(c for c in (scope or "default") if c.isalnum()).lower() or "default"
    return EgressNames(network=f"{network}-{tag}", interface=f"{interface}-{tag}"[:_IFNAMSIZ],
                       chain=f"{chain}-{tag}"[:28])


def egress_names(scope: str | None) -> EgressNames:
    """The egress network's names."""
    return network_names("egress", scope)


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)


class Firewall:
    """The iptables (and ip6tables) rules that confine the egress network to the proxy port.

    Args:
        names: chain and interface names.
        runner: runs one command line (tests pass a fake).
    """

    def __init__(self, names: EgressNames, runner: Runner = _run, *,
                 purpose: str = "egress allowlists need iptables, run as root, to confine the egress network to "
                                "the proxy; install iptables and run the orchestrator as root, or remove the "
                                "allowlists from the policy (workers then stay on network none)") -> None:
        self.names = names
        self.purpose = purpose
        self._run = runner
        self._v6 = False
        self.installed = False

    def _tool(self, family: int) -> str:
        return "iptables" if family == 4 else "ip6tables"

    def _ipt(self, family: int, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run([self._tool(family), "-w", "10", *args])

    def _must(self, family: int, *args: str) -> None:
        r = self._ipt(family, *args)
        if r.returncode != 0:
            raise ConfigError(f"{self._tool(family)} {' '.join(args)} failed: {(r.stderr or r.stdout).strip()}")

    def check(self) -> None:
        """Fail unless iptables (and ip6tables, where the host has IPv6) can be changed.

        Raises:
            ConfigError: not root, a tool missing, or it does not work.
        """
        fix = self.purpose
        if os.geteuid() != 0:
            raise ConfigError(f"not running as root: {fix}")
        families = [4] + ([6] if os.path.exists("/proc/net/if_inet6") else [])
        for family in families:
            tool = self._tool(family)
            if shutil.which(tool) is None:
                raise ConfigError(f"{tool} is not installed: {fix}")
            try:
                r = self._ipt(family, "-S", "INPUT")
            except (OSError, subprocess.SubprocessError) as exc:
                raise ConfigError(f"{tool} does not run ({exc}): {fix}") from None
            if r.returncode != 0:
                raise ConfigError(f"{tool} does not work ({(r.stderr or r.stdout).strip()}): {fix}")
        self._v6 = 6 in families

    def install(self, gateway: str, port: int) -> None:
        """Let the interface's traffic reach ``gateway:port`` (IPv4) and nothing else."""
        self.install_rules([["-d", f"{gateway}/32", "-p", "tcp", "--dport", str(port)]], [])
        log.info("egress firewall: %s may reach only %s:%d (chain %s)", self.names.interface, gateway, port,
                 self.names.chain)

    def install_rules(self, v4: Sequence[Sequence[str]], v6: Sequence[Sequence[str]], *,
                      final: tuple[Sequence[str], Sequence[str]] = (("DROP",), ("DROP",))) -> None:
        """(Re)write the chain, ACCEPT for each rule's match then ``final`` (v4, v6: DROP by default), and
        hook it in front of INPUT and FORWARD for the interface."""
        chain, iface = self.names.chain, self.names.interface
        for family in (4, 6) if self._v6 else (4,):
            if self._ipt(family, "-N", chain).returncode != 0:
                self._must(family, "-F", chain)  # left by a killed orchestrator: rewrite it
            for rule in v4 if family == 4 else v6:
                self._must(family, "-A", chain, *rule, "-j", "ACCEPT")
            self._must(family, "-A", chain, "-j", *final[0 if family == 4 else 1])
            for hook, direction in _HOOKS:
                if self._ipt(family, "-C", hook, direction, iface, "-j", chain).returncode != 0:
                    self._must(family, "-I", hook, "1", direction, iface, "-j", chain)
        self.installed = True

    def remove(self) -> None:
        """Unhook and delete the chain (quietly: what is not there is fine)."""
        chain, iface = self.names.chain, self.names.interface
        for family in (4, 6):
            try:
                for hook, direction in _HOOKS:
                    for _ in range(16):  # every copy of the jump
                        if self._ipt(family, "-D", hook, direction, iface, "-j", chain).returncode != 0:
                            break
                self._ipt(family, "-F", chain)
                self._ipt(family, "-X", chain)
            except (OSError, subprocess.SubprocessError):
                continue
        self.installed = False

    def rules(self) -> str:
        """``iptables -S <chain>`` (for tests and diagnostics); ``""`` when it does not exist."""
        r = self._ipt(4, "-S", self.names.chain)
        return r.stdout if r.returncode == 0 else ""


class EgressNetwork:
    """The internal docker network for workers with an allowlist (blocking docker calls).

    Args:
        engine: the Docker engine.
        scope: the backend's scope; names the network, bridge interface and chain.
        labels: labels for the network (the backend's scope label).
        runner: runs iptables command lines (tests pass a fake).
    """

    kind = "egress"
    label = EGRESS_LABEL
    purpose: str | None = None  # what the firewall check says is needed; the egress wording by default

    def __init__(self, engine: Engine, scope: str | None, labels: dict[str, str] | None = None,
                 runner: Runner = _run) -> None:
        self._engine = engine
        self.names = network_names(self.kind, scope)
        self.labels = {**(labels or {}), self.label: "1"}
        self.firewall = Firewall(self.names, runner, **({"purpose": self.purpose} if self.purpose else {}))
        self.network_id = ""
        self.subnet = ""
        self.gateway = ""
        #: Other networks a worker may be on when it joins this one (the control channel's, itself confined).
        self.also_allowed: set[str] = set()

    def open(self) -> str:
        """Create the network (or adopt the one a killed orchestrator left); return the gateway IP.

        Raises:
            ConfigError: iptables unusable, or a network of that name that is not
                an internal mlbridge egress network.
        """
        self.firewall.check()
        engine = self._engine
        name = self.names.network
        info = engine.inspect_network(name)
        if info is None:
            options = {ICC_OPTION: "false", NAME_OPTION: self.names.interface, MASQ_OPTION: "false"}
            engine.create_network(name, internal=True, options=options, labels=self.labels)
            info = engine.inspect_network(name)
            if info is None:
                raise Unavailable(f"docker network {name!r} vanished right after it was created")
        opts = info.get("Options") or {}
        if (not info.get("Internal") or opts.get(ICC_OPTION) != "false"
                or opts.get(NAME_OPTION) != self.names.interface
                or (info.get("Labels") or {}).get(self.label) != "1"):
            raise ConfigError(f"docker network {name!r} exists but is not an internal mlbridge {self.kind} network "
                              f"(internal, {ICC_OPTION}=false, bridge {self.names.interface}); remove it "
                              f"with `docker network rm {name}`")
        configs = (info.get("IPAM") or {}).get("Config") or []
        v4 = [c for c in configs if c.get("Subnet") and ipaddress.ip_network(c["Subnet"]).version == 4]
        if not v4 or not v4[0].get("Gateway"):
            raise ConfigError(f"docker network {name!r} has no IPv4 subnet and gateway")
        self.network_id = str(info["Id"])
        self.subnet = str(v4[0]["Subnet"])
        self.gateway = str(v4[0]["Gateway"]).split("/", 1)[0]
        log.info("%s network %s: subnet %s, gateway %s, bridge %s", self.kind, name, self.subnet, self.gateway,
                 self.names.interface)
        return self.gateway

    def protect(self, port: int) -> None:
        """Install the firewall for the proxy on ``port`` (before any worker joins)."""
        if not self.gateway:
            raise Unavailable("the egress network is not open")
        self.firewall.install(self.gateway, port)

    def connect(self, container_id: str) -> str:
        """Move a running container from network ``none`` onto the egress network; return its IP.

        Raises:
            ConfigError: the container is on a network other than ``none`` (its
                egress would not go through the proxy alone).
        """
        if not self.firewall.installed:
            raise Unavailable("the egress firewall is not installed; refusing to connect a worker")
        engine = self._engine
        attached = self._networks(container_id)
        others = sorted(set(attached) - {"none", self.names.network, *self.also_allowed})
        if others:
            raise ConfigError(f"container {container_id[:12]} is on network(s) {', '.join(others)}; egress "
                              "allowlists need bridges whose workers start on network none")
        if "none" in attached:
            engine.disconnect(container_id, "none")
        if self.names.network not in attached:
            engine.connect(container_id, self.network_id)
        ip = (self._networks(container_id).get(self.names.network) or {}).get("IPAddress") or ""
        if not ip:
            raise Unavailable(f"container {container_id[:12]} got no address on {self.names.network}")
        return str(ip)

    def _networks(self, container_id: str) -> dict[str, dict[str, str]]:
        attrs = self._engine.inspect(container_id)
        if attrs is None:
            raise Unavailable(f"container {container_id[:12]} is gone")
        return dict((attrs.get("NetworkSettings") or {}).get("Networks") or {})

    def close(self) -> None:
        """Remove the network (disconnecting anything left on it), then the firewall."""
        if self.network_id:
            engine = self._engine
            try:
                info = engine.inspect_network(self.network_id) or {}
                for cid in (info.get("Containers") or {}):
                    try:
                        engine.disconnect(cid, self.network_id, force=True)
                    except Unavailable:
                        continue
                engine.remove_network(self.network_id)
            except Unavailable as exc:
                # Something is still on it: keep the firewall, so it stays confined.
                log.error("could not remove egress network %s (its firewall chain %s stays): %s",
                          self.names.network, self.names.chain, exc)
                return
        self.firewall.remove()
        self.network_id = ""


class ChannelNetwork(EgressNetwork):
    """The internal network of the tcp-mtls control channel (``worker_channel: tcp-mtls``).

    Workers start on it (not on ``none``) and listen there for the orchestrator,
    which dials them from the host. Like the egress network it is internal, with
    inter-container traffic off, and its firewall chain drops whatever its
    workers send to the host or beyond, except the replies on connections the
    host opened (conntrack ESTABLISHED): a worker can reach neither another
    worker's port nor any service of the host. What it sends is rejected, not
    dropped, so a worker with no egress fails at once ("no route to host"), as
    on network ``none``, instead of waiting out a timeout.
    """

    kind = "channel"
    label = CHANNEL_LABEL
    purpose = ("worker_channel tcp-mtls needs iptables, run as root, to keep workers on the channel network "
               "from reaching the host and each other; install iptables and run the orchestrator as root, or "
               "use worker_channel: unix")

    def protect(self, port: int = 0) -> None:
        """Install the firewall: replies to the host's connections pass, nothing else (``port`` is unused)."""
        if not self.gateway:
            raise Unavailable("the channel network is not open")
        established = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"]
        self.firewall.install_rules([established], [established], final=(
            ("REJECT", "--reject-with", "icmp-host-prohibited"), ("REJECT", "--reject-with", "icmp6-adm-prohibited")))
        log.info("channel firewall: %s carries only replies to the orchestrator (chain %s)",
                 self.names.interface, self.names.chain)
