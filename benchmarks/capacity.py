"""Capacity: what sizes one node, with the docker backend, in one run.

  - memory: one orchestrator (in this process) with every bridge's shipped
    configuration (orchestrator/default_config.yaml); the memory of a ready
    spare and a held worker per bridge, as the backend's ``stats`` reports it
    (the container's cgroup less page cache, as ``docker stats`` counts it,
    and with page cache); each bridge's worker claimed, after its first
    framework call; a claimed transformers worker with a 6-layer, hidden-384
    BERT classifier loaded from the model store;
  - the control channel: three orchestrators in their own processes, all up
    at once, with a policy of tenants: ``worker_channel: unix``, ``tcp-mtls``,
    and unix with the audit log on. In rounds that take them in turn: calls/s
    of 32 concurrent clients (4 tenants x 8, ``mock:echo``), their latency, and
    the CPU of the orchestrator, its workers and the clients over the window;
    then one client calling each in turn; then new tenants claiming a warm
    spare (their first call, the claim included) on unix and tcp-mtls
    alternately. Every ratio printed (tcp-mtls / unix, audit / unix) comes
    from one run;
  - cold starts (a new tenant that finds no ready spare: from a held worker,
    and from nothing) on both channels, alternately; and each orchestrator's
    RSS with the workers it ended with.

    python -m benchmarks.capacity [--quick] [--parts memory,channels,cold]

A full run takes about 4 minutes on 2 cores, ``--quick`` about 1.5.
``--backend process`` runs the same code over plain processes (no sandbox):
for trying the benchmark itself, not for sizing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks._common import ROOT, free_port, machine, percentiles, wait_port
from benchmarks.startup import FIRST_CALLS
from orchestrator import MLBridge
from orchestrator.backends.base import SupportsModels
from orchestrator.client.aio import AsyncMLBridge
from orchestrator.config import load_config
from orchestrator.images import image_tag
from tests.harness import ServerThread

BRIDGES = ["mock", "custom", "dspy", "langchain", "transformers"]
CHANNELS = ("unix", "tcp-mtls")
# Served orchestrators: label -> (worker_channel, audit log on). The audit variant only serves load.
VARIANTS = {"unix": ("unix", False), "tcp-mtls": ("tcp-mtls", False), "unix + audit": ("unix", True)}
CLIENTS, LOAD_TENANTS = 32, 4
ARGS = {"x": 1}
MODEL = {"hidden": 384, "layers": 6}
# The cold-start bridges: the mock runtime with no spares, started from a held worker or from nothing.
COLD = {"mock-held": 2, "mock-nothing": 0}
MB = 1e6
HELD = {"mock": load_config(None, env={}).bridges["mock"].held, **COLD}


@dataclass(frozen=True)
class Plan:
    rounds: int = 3
    seconds: float = 8.0
    warmup_s: float = 1.0
    claims: int = 8  # new tenants per channel per round
    single: int = 1000  # calls of one client to each orchestrator, interleaved
    colds: int = 6  # cold starts per channel per kind
    settle_s: float = 3.0


QUICK = Plan(rounds=1, seconds=4.0, warmup_s=0.5, claims=5, single=300, colds=3, settle_s=2.0)


def shipped(bridge: str, **over: Any) -> dict[str, Any]:
    """``bridge``'s shipped configuration (as set in the default config file), with ``over`` on top."""
    cfg = load_config(None, env={}).bridges[bridge]
    return {**cfg.model_dump(mode="json", exclude_unset=True), **over}


def line(name: str, samples: list[float]) -> str:
    p = percentiles(samples)
    return f"  {name:<44} p50 {p['p50']:7.1f}  p90 {p['p90']:7.1f}  min {min(samples):7.1f}  n {len(samples)}"


# -- memory: one orchestrator in this process, every bridge ----------------------------------------


async def _stats(backend: Any, handle: Any) -> dict[str, Any]:
    try:
        return dict(await backend.stats(handle, max_age_s=0))
    except TypeError:  # the process backend reads /proc each time
        return dict(await backend.stats(handle))


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


async def _settled(srv: ServerThread, bridges: list[str], timeout: float = 180) -> None:
    """Every pool has its spares and held workers and starts nothing."""
    deadline = time.monotonic() + timeout
    while True:
        facts = [srv.orch.pools[b].facts() for b in bridges if b in srv.orch.pools]
        if all(f["spares"] >= min(1, f["spare_target"]) and f["held"] >= srv.orch.pools[b].cfg.held
               and not f["starting"] for b, f in zip(bridges, facts, strict=False)):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"pools did not settle: {facts}")
        await asyncio.sleep(0.1)


def memory(backend_name: str, plan: Plan) -> None:
    with tempfile.TemporaryDirectory(prefix="mlb-capacity-") as tmp:
        _memory(Path(tmp), backend_name, plan)


def _memory(tmp: Path, backend_name: str, plan: Plan) -> None:
    from orchestrator.models import ModelStore
    from orchestrator.models.tiny import make_tiny_model

    bridges = {b: shipped(b, pool_size=1, max_spares=1) for b in BRIDGES}
    cfg = load_config(None, env={}, state_dir=str(tmp / "state"), listen="127.0.0.1:0", backend=backend_name,
                      worker_channel="unix", bridges=bridges)
    store_model = backend_name == "docker"
    if store_model:
        store = ModelStore(cfg.model_store_path)
        with _quiet_stdout():  # the tokenizer's trainer writes blank progress lines to fd 1
            made = make_tiny_model(tmp / "model", "bert-classifier", **MODEL)
        on_disk = sum(p.stat().st_size for p in made.rglob("*") if p.is_file())
        store.add(made, "bench-bert")
    print(f"memory: one orchestrator, each bridge's shipped config (pool_size 1, its held workers); "
          f"{backend_name} backend; MB = 10^6 bytes; as `docker stats` counts it (cgroup, less page cache), and in "
          f"brackets with page cache (what the cgroup's limit counts)")
    with ServerThread(cfg) as srv:
        serving = [b for b in BRIDGES if b in srv.orch.pools]
        srv.run(_settled(srv, serving))
        time.sleep(plan.settle_s)  # idle: past start-up's allocations and the first GC
        backend = srv.orch.backend

        def mem(handle: Any) -> tuple[float, float]:
            with_cache = backend.usage(handle).get("memory_bytes", 0) / MB
            return srv.run(_stats(backend, handle)).get("memory_bytes", 0) / MB, with_cache

        print(f"  {'bridge':<14}{'ready spare':>20}{'held worker':>13}{'claimed, 1st call':>21}{'limit':>8}"
              f"  first call")
        claimed_mb: dict[str, float] = {}
        for b in serving:
            pool = srv.orch.pools[b]
            idle = mem(next(w for w in pool._spares if w.state == "ready").handle)
            held = [mem(h)[0] for h in list(pool._held)]
            command, args = FIRST_CALLS[b]
            with MLBridge.connect(srv.target) as mb:
                mb.call(b, command, args)
            time.sleep(1.0)
            after = mem(next(w for w in pool.workers.values() if w.tenant).handle)
            claimed_mb[b] = after[0]
            held_txt = f"{statistics.median(held):10.1f} MB" if held else f"{'-':>13}"
            print(f"  {b:<14}{idle[0]:9.1f} MB ({idle[1]:5.1f}){held_txt}{after[0]:10.1f} MB ({after[1]:5.1f})"
                  f"{pool.cfg.limits.memory:>8}  {command}")
        if store_model and "transformers" in serving and isinstance(backend, SupportsModels):
            pool = srv.orch.pools["transformers"]
            claimed = next(w for w in pool.workers.values() if w.tenant)
            with MLBridge.connect(srv.target) as mb:
                t = time.perf_counter()
                mb.create_resource("transformers", "model", {"model": "bench-bert"})
                took = (time.perf_counter() - t) * 1000
            time.sleep(1.0)
            loaded = mem(claimed.handle)
            print(f"  transformers, claimed, + a 6-layer hidden-384 BERT classifier ({on_disk / MB:.0f} MB on disk) "
                  f"created as a `model` resource in {took:.0f} ms: {loaded[0]:.1f} MB ({loaded[1]:.1f}), "
                  f"+{loaded[0] - claimed_mb['transformers']:.1f} MB")


# -- the orchestrator's process, and its workers' CPU -----------------------------------------------


def _children(pid: int | str) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) * 1024 / MB
    return 0.0


@dataclass
class Orchestrator:
    """One served orchestrator (``mlbridge serve`` in its own process), its channel and its tenants."""

    label: str
    addr: str
    proc: subprocess.Popen[bytes]
    backend: str
    log: Path
    orch_id: str = ""
    started_rss: tuple[float, int] = (0.0, 0)
    next_tenant: int = 0
    last_claim: float = 0.0
    _ops: MLBridge | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self) -> dict[str, Any]:
        if self._ops is None:
            self._ops = MLBridge.connect(self.addr, "ops")
        return self._ops.stats()

    def close(self) -> None:
        if self._ops is not None:
            self._ops.close()
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def workers(self) -> list[str]:
        """Container ids (docker) or pids (process) of every worker this orchestrator runs, held ones too."""
        if self.backend != "docker":
            return [str(p) for p in _children(self.pid)]
        import docker

        from orchestrator.backends.docker.backend import ORCHESTRATOR_LABEL

        client = docker.from_env()
        try:
            return [str(c.id) for c in client.containers.list(filters={"label": f"{ORCHESTRATOR_LABEL}={self.orch_id}"})]
        finally:
            client.close()

    def workers_cpu_s(self, ids: list[str]) -> float:
        if self.backend != "docker":
            total = 0.0
            for pid in ids:
                with contextlib.suppress(OSError):
                    total += _cpu_s(int(pid))
            return total
        from orchestrator.backends.docker.state import cgroup_usage

        return sum(cgroup_usage(cid).get("cpu_ns", 0) for cid in ids) / 1e9

    def new_tenant(self) -> str:
        self.next_tenant += 1
        return f"t{self.next_tenant:03d}"


def write_policy(path: Path, tenants: int) -> Path:
    """Tenants ``ops``, ``load0..3`` and ``t001..``; each tenant's token is its name (a benchmark, not a secret)."""
    names = ["ops", *(f"load{i}" for i in range(LOAD_TENANTS)), *(f"t{i:03d}" for i in range(1, tenants + 1))]
    doc = {"version": 1,
           "defaults": {"bridges": ["*"], "rules": [{"name": "all", "effect": "allow"}],
                        "quotas": {"max_concurrent_calls": 64, "max_calls_per_minute": 1_000_000,
                                   "max_workers": 8}},
           "tenants": {n: {"tokens": ["sha256:" + hashlib.sha256(n.encode()).hexdigest()]} for n in names}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path


def serve(label: str, backend: str, state: Path, plan: Plan) -> Orchestrator:
    """``mlbridge serve`` with the mock bridge (and, without an audit log, the cold-start bridges), its output
    in a file (a pipe nobody reads would stall it once full)."""
    channel, audit = VARIANTS[label]
    tenants = plan.rounds * plan.claims + plan.colds * len(COLD) + 10
    bridges = {"mock": shipped("mock", max_workers=96)}
    if not audit:
        bridges |= {name: shipped("mock", image=image_tag("mock"), pool_size=0, max_spares=0, held=held,
                                  max_workers=96) for name, held in COLD.items()}
    config: dict[str, Any] = {
        "backend": backend, "worker_channel": channel, "state_dir": str(state / "state"),
        "policy": str(write_policy(state / "policy.yaml", tenants)), "default_bridge": "mock", "bridges": bridges}
    if audit:
        config["audit_log"] = str(state / "audit.jsonl")
    (state / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log = state / "orchestrator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", "--backend", backend,
                                 "--listen", f"127.0.0.1:{port}", "--config", str(state / "config.yaml")],
                                cwd=ROOT, env={**os.environ, "MLBRIDGE_LOG_LEVEL": "WARNING"},
                                stdout=out, stderr=subprocess.STDOUT)
    orch = Orchestrator(label, f"127.0.0.1:{port}", proc, backend, log)
    try:
        wait_port(port)
        orch.orch_id = orch.stats()["orchestrator_id"]
    except BaseException:
        orch.close()
        print(log.read_text()[-4000:], file=sys.stderr)
        raise
    return orch


@contextlib.contextmanager
def orchestrators(backend: str, plan: Plan) -> Iterator[dict[str, Orchestrator]]:
    """One served orchestrator per variant, all up at once, each with its own state directory."""
    with contextlib.ExitStack() as stack:
        out: dict[str, Orchestrator] = {}
        for label in VARIANTS:
            # Under the working directory's disk, not a tmpfs: the audit log's fsync is part of what is measured.
            state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"mlb-capacity-{label}-",
                                                                         dir=Path.home() / ".cache")))
            out[label] = serve(label, backend, state, plan)
            stack.callback(out[label].close)
        try:
            for orch in out.values():
                for bridge in orch.stats()["bridges"]:
                    at_rest(orch, bridge, since_claim_s=0)
                orch.started_rss = (_rss_mb(orch.pid), len(orch.workers()))
            yield out
        except BaseException:
            for orch in out.values():
                print(f"--- {orch.label}: the last of {orch.log}", file=sys.stderr)
                print(orch.log.read_text()[-3000:], file=sys.stderr)
            raise


def at_rest(orch: Orchestrator, bridge: str, *, since_claim_s: float = 1.2, timeout: float = 120) -> None:
    """Wait until ``bridge``'s pool starts nothing and has its spares and held workers, and the last claim
    on ``orch`` is ``since_claim_s`` old (its refill and its container's rename are done)."""
    deadline = time.monotonic() + timeout
    time.sleep(max(0.0, orch.last_claim + since_claim_s - time.monotonic()))
    while True:
        f = orch.stats()["bridges"][bridge]
        if f["spares"] >= min(1, f["spare_target"]) and f["held"] >= HELD[bridge] and not f["starting"]:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{orch.label}: bridge {bridge} did not come to rest: {f}")
        time.sleep(0.05)
    time.sleep(0.2)


# -- throughput ------------------------------------------------------------------------------------


@dataclass
class Load:
    calls_per_s: float
    latencies_ms: list[float]
    orch_cpu: float  # cores
    workers_cpu: float  # cores
    client_cpu: float  # cores


async def _drive(addr: str, seconds: float, warmup_s: float) -> tuple[float, list[float]]:
    clients = [AsyncMLBridge.connect(addr, f"load{i % LOAD_TENANTS}") for i in range(CLIENTS)]

    async def loop(mb: AsyncMLBridge, until: float, out: list[float]) -> None:
        while time.perf_counter() < until:
            t = time.perf_counter()
            assert await mb.call("mock", "mock:echo", ARGS) == ARGS
            out.append((time.perf_counter() - t) * 1000)

    try:
        until = time.perf_counter() + warmup_s
        await asyncio.gather(*(loop(mb, until, []) for mb in clients))
        lat: list[float] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(loop(mb, t0 + seconds, lat) for mb in clients))
        return time.perf_counter() - t0, lat
    finally:
        await asyncio.gather(*(mb.close() for mb in clients))


def load(orch: Orchestrator, plan: Plan) -> Load:
    # First, so each load tenant has its worker before the window (and its claim is not timed).
    asyncio.run(_drive(orch.addr, 0.3, 0.0))
    orch.last_claim = time.monotonic()
    at_rest(orch, "mock")
    ids = orch.workers()
    o0, w0, c0, t0 = _cpu_s(orch.pid), orch.workers_cpu_s(ids), time.process_time(), time.perf_counter()
    elapsed, lat = asyncio.run(_drive(orch.addr, plan.seconds, plan.warmup_s))
    wall = time.perf_counter() - t0  # the warm-up is in the CPU readings too: divide by the whole wall time
    o1, w1, c1 = _cpu_s(orch.pid), orch.workers_cpu_s(ids), time.process_time()
    return Load(len(lat) / elapsed, lat, (o1 - o0) / wall, (w1 - w0) / wall, (c1 - c0) / wall)


# -- claims and cold starts ------------------------------------------------------------------------


def first_calls(orch: Orchestrator, bridge: str) -> tuple[float, float]:
    """A new tenant's first call on ``bridge`` (the claim included) and its second, in ms."""
    at_rest(orch, bridge)
    tenant = orch.new_tenant()
    with MLBridge.connect(orch.addr, tenant) as mb:
        mb.list_bridges()  # the connection and the token, outside the timing
        t = time.perf_counter()
        assert mb.call(bridge, "mock:echo", ARGS) == ARGS
        first = (time.perf_counter() - t) * 1000
        orch.last_claim = time.monotonic()
        t = time.perf_counter()
        assert mb.call(bridge, "mock:echo", ARGS) == ARGS
        second = (time.perf_counter() - t) * 1000
    return first, second


def ratio(a: list[float], b: list[float]) -> str:
    return f"{statistics.median(a) / statistics.median(b):.2f}x"


def channels(backend: str, plan: Plan, parts: set[str]) -> None:
    with orchestrators(backend, plan) as orchs:
        print(f"served orchestrators ({backend} backend), all up at once, each in its own process: "
              f"{', '.join(VARIANTS)}; a policy of tenants; the mock bridge's shipped config (cpus 0.5, "
              f"memory 256m)")
        if "channels" in parts:
            throughput(orchs, plan)
            one_client(orchs, plan.single)
            claims: dict[str, tuple[list[float], list[float]]] = {c: ([], []) for c in CHANNELS}
            for i in range(plan.rounds * plan.claims):
                for c in CHANNELS if i % 2 == 0 else CHANNELS[::-1]:
                    first, second = first_calls(orchs[c], "mock")
                    claims[c][0].append(first)
                    claims[c][1].append(second)
            print("claim of a warm spare by a new tenant: its first mock:echo (the claim included), then its second "
                  "call; times in ms")
            for c in CHANNELS:
                print(line(f"{c}: first call (claim + call)", claims[c][0]))
                print(line(f"{c}: second call", claims[c][1]))
            print(f"  tcp-mtls / unix first call p50: {ratio(claims['tcp-mtls'][0], claims['unix'][0])}")
        if "cold" in parts:
            colds: dict[tuple[str, str], list[float]] = {(c, b): [] for c in CHANNELS for b in COLD}
            for i in range(plan.colds):
                for c in CHANNELS if i % 2 == 0 else CHANNELS[::-1]:
                    for b in COLD:
                        colds[c, b].append(first_calls(orchs[c], b)[0])
            print("cold start: a new tenant's first mock:echo with no ready spare (pool_size 0, max_spares 0); "
                  "times in ms")
            for b, held in COLD.items():
                for c in CHANNELS:
                    what = "from a held worker" if held else "from nothing (held 0)"
                    print(line(f"{c}: {what}", colds[c, b]))
                print(f"  tcp-mtls / unix p50: {ratio(colds['tcp-mtls', b], colds['unix', b])}")
        print("orchestrator process RSS (VmRSS) and the workers it runs (containers or processes, held ones "
              "included)")
        for label, o in orchs.items():
            rss0, n0 = o.started_rss
            rss1, n1 = _rss_mb(o.pid), len(o.workers())
            per = f"; {(rss1 - rss0) / (n1 - n0) * 1000:.0f} KB more per worker" if n1 > n0 else ""
            print(f"  {label:<14} at start {rss0:6.1f} MB with {n0:3d} workers; at the end {rss1:6.1f} MB with "
                  f"{n1:3d}{per}")


def one_client(orchs: dict[str, Orchestrator], n: int) -> None:
    """One client, one call at a time to each orchestrator in turn (a tenant whose worker is claimed)."""
    clients = {label: MLBridge.connect(o.addr, "load0") for label, o in orchs.items()}
    out: dict[str, list[float]] = {label: [] for label in clients}
    try:
        for i in range(n + n // 10):
            labels = list(clients)
            for label in labels[i % len(labels):] + labels[:i % len(labels)]:
                t = time.perf_counter()
                assert clients[label].call("mock", "mock:echo", ARGS) == ARGS
                if i >= n // 10:  # the first tenth warms up
                    out[label].append((time.perf_counter() - t) * 1000)
    finally:
        for mb in clients.values():
            mb.close()
    print(f"one client, one call at a time, {n} calls to each orchestrator in turn (after {n // 10} warm-up)")
    print(f"  {'orchestrator':<14}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'p50 / unix':>12}")
    for label, samples in out.items():
        p = percentiles(samples)
        print(f"  {label:<14}{p['p50']:8.3f}{p['p90']:8.3f}{p['p99']:8.3f}{ratio(samples, out['unix']):>12}")


def throughput(orchs: dict[str, Orchestrator], plan: Plan) -> None:
    labels = list(VARIANTS)
    print(f"throughput: {CLIENTS} clients ({LOAD_TENANTS} tenants x {CLIENTS // LOAD_TENANTS}, one worker each), "
          f"mock:echo, {plan.seconds:g} s after {plan.warmup_s:g} s warm-up, the orchestrators in turn; CPU in "
          f"cores over the window")
    print(f"  {'round':<6}{'orchestrator':<14}{'calls/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'orch CPU':>10}"
          f"{'orch us/call':>14}{'workers CPU':>13}{'client CPU':>12}")
    loads: dict[str, list[Load]] = {c: [] for c in labels}
    for r in range(plan.rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            ld = load(orchs[label], plan)
            loads[label].append(ld)
            p = percentiles(ld.latencies_ms)
            print(f"  {r + 1:<6}{label:<14}{ld.calls_per_s:9,.0f}{p['p50']:8.2f}{p['p99']:8.2f}"
                  f"{ld.orch_cpu:10.2f}{ld.orch_cpu / ld.calls_per_s * 1e6:14.0f}{ld.workers_cpu:13.2f}"
                  f"{ld.client_cpu:12.2f}")

    summary = {label: {
        "calls/s": statistics.median(ld.calls_per_s for ld in loads[label]),
        "p50": statistics.median(percentiles(ld.latencies_ms)["p50"] for ld in loads[label]),
        "p99": statistics.median(percentiles(ld.latencies_ms)["p99"] for ld in loads[label]),
        "us": statistics.median(ld.orch_cpu / ld.calls_per_s * 1e6 for ld in loads[label]),
    } for label in labels}
    for label, m in summary.items():
        print(f"  median over rounds, {label:<14} {m['calls/s']:7,.0f} calls/s, p50 {m['p50']:6.2f} ms, "
              f"p99 {m['p99']:6.2f} ms, orchestrator CPU {m['us']:4.0f} us a call")
    base = summary["unix"]
    for label in labels[1:]:
        m = summary[label]
        print(f"  {label} / unix: calls/s {m['calls/s'] / base['calls/s']:.2f}x, p50 {m['p50'] / base['p50']:.2f}x, "
              f"p99 {m['p99'] / base['p99']:.2f}x, orchestrator CPU a call {m['us'] / base['us']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and samples (under 2 minutes)")
    ap.add_argument("--parts", default="memory,channels,cold")
    ap.add_argument("--backend", default="docker", choices=["docker", "process"])
    a = ap.parse_args()
    plan = QUICK if a.quick else Plan()
    parts = set(a.parts.split(","))
    began = time.monotonic()
    print(f"machine: {machine()}")
    if "memory" in parts:
        memory(a.backend, plan)
    if parts & {"channels", "cold"}:
        channels(a.backend, plan, parts)
    print(f"took {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
