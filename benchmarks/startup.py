"""Startup: how long a new tenant waits, per bridge, beside docker's own floor, in one run.

With the docker backend and each bridge's shipped configuration (its image and limits):

  - baselines: `docker run --rm IMAGE python3 -c pass`, and a container run to
    completion through the docker SDK per call (a sandbox that starts one per run);
  - a single cold start to the first answer (a claim that finds no ready spare,
    then `common:ping`), per bridge: from a held worker (the container started
    ahead, its runtime waiting; the default), and from nothing;
  - the first framework call on a claimed spare, per bridge, beside the mock
    bridge's (frameworks are imported in the spare before the claim);
  - the first model a tenant loads on a claimed transformers spare, with the
    model preloaded in the spare (`preload_models`) and without;
  - a burst of 20 new tenants arriving within one second, on the mock bridge's
    default pool: claim latency p50/p99 and how many met a ready spare, for the
    first burst the pool sees and for the next one, once it has learned.

    python -m benchmarks.startup [--runs 10] [--bridges mock,custom,dspy,langchain,transformers]
                                 [--sections baselines,cold,first,preload,burst]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker

from benchmarks._common import machine, percentiles
from orchestrator.backends.docker import DockerBackend
from orchestrator.claims import NO_SETTINGS, ClaimPipeline
from orchestrator.config import BridgeConfig, Config, load_config
from orchestrator.images import image_tag
from orchestrator.models import ModelCatalog, ModelStore
from orchestrator.models.tiny import make_tiny_model
from orchestrator.pool import Pool
from orchestrator.registry import Registry
from runtimes.wire.proto import runtime_pb2 as rpb

BRIDGES = ["mock", "custom", "dspy", "langchain", "transformers"]
# A call that makes each framework do something (the mock bridge's is the yardstick).
FIRST_CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "mock": ("mock:echo", {"x": 1}),
    "custom": ("custom:run", {"code": "def main(inputs):\n    return {'ok': True}\n"}),
    "dspy": ("dspy:configure_lm", {"provider": "dummy", "model": "dummy/bench", "answers": [{"answer": "ok"}]}),
    "langchain": ("langchain:invoke", {"runnable": {"prompt": {"template": "Say {x}"},
                                                    "model": {"provider": "fake", "responses": ["ok"]},
                                                    "parser": "str"}, "input": {"x": "ok"}}),
    "transformers": ("transformers:devices", {}),
}
BURST = 20


def _pool(backend: DockerBackend, name: str, cfg: BridgeConfig, **over: Any) -> Pool:
    cfg = cfg.model_copy(update=over)
    claims = ClaimPipeline(backend, Registry(":memory:"), NO_SETTINGS)
    return Pool(name, cfg, backend, orchestrator_id=f"bench-{uuid.uuid4().hex[:6]}", max_message_bytes=16 << 20,
                claims=claims)


async def _call(pool: Pool, tenant: str, command: str, args: dict[str, Any]) -> None:
    worker = await pool.acquire(tenant)
    assert worker.session is not None
    reply = await worker.session.request(rpb.CallRequest(call_id=uuid.uuid4().hex, command=command,
                                                         args_json=json.dumps(args)))
    if not reply.ok:
        raise RuntimeError(f"{pool.name}: {command} failed: {reply.error.code} {reply.error.message}")


async def _settled(pool: Pool, *, spares: int = 0, held: int = 0, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while (len(pool._spares) < spares or len(pool._held) < held or pool._starting or pool._holding
           or pool._spare_starts):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pool.name}: pool did not settle")
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # let the engine finish what it was doing


async def cold_start(backend: DockerBackend, name: str, cfg: BridgeConfig, runs: int, *, held: bool) -> list[float]:
    pool = _pool(backend, name, cfg, pool_size=0, max_spares=0, held=1 if held else 0)
    await pool.start()
    out = []
    try:
        for i in range(runs):
            await _settled(pool, held=1 if held else 0)
            tenant = f"cold-{i}"
            t = time.perf_counter()
            await _call(pool, tenant, "common:ping", {})
            out.append((time.perf_counter() - t) * 1000)
            await pool.release_tenant(tenant)
        assert (pool.held_starts if held else pool.cold_starts) == runs, "the start did not take the path measured"
    finally:
        await pool.stop(drain_s=0)
    return out


async def first_call(backend: DockerBackend, name: str, cfg: BridgeConfig,
                     runs: int) -> tuple[list[float], list[float]]:
    """Claim a ready spare and make one framework call, then the same call again (the steady
    state); the spare is replaced between runs."""
    command, args = FIRST_CALLS[name]
    pool = _pool(backend, name, cfg, pool_size=1, max_spares=1, held=0)
    await pool.start()
    first, again = [], []
    try:
        for i in range(runs):
            await _settled(pool, spares=1)
            tenant = f"first-{i}"
            t = time.perf_counter()
            await _call(pool, tenant, command, args)
            first.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await _call(pool, tenant, command, args)
            again.append((time.perf_counter() - t) * 1000)
            await pool.release_tenant(tenant)
    finally:
        await pool.stop(drain_s=0)
    return first, again


# A MiniLM-sized classifier (6 layers, hidden 384), random weights: big enough that loading it shows.
PRELOAD_MODEL = {"hidden": 384, "layers": 6}


async def preload_first_model(cfg: BridgeConfig, runs: int) -> dict[bool, list[float]]:
    """Claim a transformers spare and create a ``model`` resource of the store's model, with the
    model preloaded in the spare and without."""
    tmp = Path(tempfile.mkdtemp(prefix="mlb-bench-"))
    store = ModelStore(tmp / "store")
    store.add(make_tiny_model(tmp / "model", "bert-classifier", **PRELOAD_MODEL), "bench-bert")
    backend = DockerBackend(model_store=tmp / "store")
    await backend.prepare(Config(bridges={"transformers": cfg}, model_store=tmp / "store"))
    catalog = ModelCatalog(store, None, backend)
    out: dict[bool, list[float]] = {}
    try:
        for preload in (False, True):
            bcfg = cfg.model_copy(update={"pool_size": 1, "max_spares": 1, "held": 0,
                                          "preload_models": ["bench-bert"] if preload else []})
            pool = Pool("transformers", bcfg, backend, orchestrator_id=f"bench-{uuid.uuid4().hex[:6]}",
                        max_message_bytes=16 << 20,
                        claims=ClaimPipeline(backend, Registry(":memory:"), NO_SETTINGS, models=catalog))
            await pool.start()
            times = out[preload] = []
            try:
                for i in range(runs):
                    await _settled(pool, spares=1)
                    tenant = f"model-{i}"
                    t = time.perf_counter()
                    worker = await pool.acquire(tenant)
                    assert worker.session is not None
                    reply = await worker.session.request(rpb.CallRequest(
                        call_id=uuid.uuid4().hex, command="common:create_resource", resource_type="model",
                        resource_id="m1", args_json=json.dumps({"model": "bench-bert"}), tenant=tenant))
                    times.append((time.perf_counter() - t) * 1000)
                    if not reply.ok:
                        raise RuntimeError(f"creating the model failed: {reply.error.message}")
                    if json.loads(reply.result_json).get("info", {}).get("preloaded", False) != preload:
                        raise RuntimeError("the model was not taken from where it was measured")
                    await pool.release_tenant(tenant)
            finally:
                await pool.stop(drain_s=0)
    finally:
        await backend.close()
    return out


async def _burst(pool: Pool, tag: str) -> tuple[list[float], int]:
    offsets = sorted(random.uniform(0, 1.0) for _ in range(BURST))
    start = time.perf_counter()
    latencies: list[float] = []
    met = 0

    async def tenant(i: int, at: float) -> None:
        nonlocal met
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        t = time.perf_counter()
        worker = await pool.acquire(f"{tag}-{i}")
        latencies.append((time.perf_counter() - t) * 1000)
        met += worker.origin == "spare"

    await asyncio.gather(*(tenant(i, at) for i, at in enumerate(offsets)))
    return latencies, met


async def burst(backend: DockerBackend, cfg: BridgeConfig) -> list[tuple[str, list[float], int, str]]:
    pool = _pool(backend, "mock", cfg, max_workers=128)
    await pool.start()
    out = []
    try:
        await _settled(pool, spares=cfg.pool_size, held=cfg.held)
        before = f"{len(pool._spares)} spares, {len(pool._held)} held"
        lat, met = await _burst(pool, "first")
        out.append(("first burst the pool sees", lat, met, before))
        for t in [w.tenant for w in list(pool.workers.values()) if w.tenant]:
            await pool.release_tenant(t)
        await _settled(pool, spares=pool.spare_target(), held=cfg.held, timeout=180)
        before = f"{len(pool._spares)} spares (target {pool.spare_target()}), {len(pool._held)} held"
        lat, met = await _burst(pool, "second")
        out.append(("next burst, within spare_window_s", lat, met, before))
    finally:
        await pool.stop(drain_s=0)
    return out


def docker_run_floor(image: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c", "pass"],
                       check=True, capture_output=True)
        out.append((time.perf_counter() - t) * 1000)
    return out


def docker_sdk_per_call(image: str, runs: int) -> list[float]:
    client = docker.from_env()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        client.containers.run(image, entrypoint=["python3", "-c", "pass"], network_mode="none", remove=True)
        out.append((time.perf_counter() - t) * 1000)
    client.close()
    return out


def line(name: str, samples: list[float], note: str = "") -> str:
    p = percentiles(samples)
    return (f"{name:<58} p50 {p['p50']:8.1f}  p90 {p['p90']:8.1f}  min {min(samples):8.1f}  "
            f"n {len(samples):<3} {note}").rstrip()


async def main(runs: int, bridges: list[str], sections: set[str]) -> None:
    config: Config = load_config(None, env={})
    cfgs = {b: config.bridges[b].model_copy(update={"max_workers": 64}) for b in bridges}
    backend = DockerBackend()
    await backend.prepare(config.model_copy(update={"bridges": cfgs}))
    mock_image = image_tag("mock")
    print(f"machine: {machine()}")
    print(f"runs: {runs} (heavy bridges: fewer); shipped config per bridge; times in ms")
    floor = docker_run_floor(mock_image, runs) if sections & {"baselines", "cold"} else []
    if "baselines" in sections:
        sdk = docker_sdk_per_call(mock_image, runs)
        print(line("baseline: `docker run --rm IMAGE python3 -c pass` (mock image)", floor))
        print(line("baseline: docker SDK, one container per call (run, wait, rm)", sdk))
        print()
    cold: dict[str, list[float]] = {}
    if "cold" in sections:
        print("single cold start to first answer (claim with no ready spare + common:ping)")
    for b in bridges if "cold" in sections else []:
        n = runs if b in ("mock", "custom") else max(3, runs // 3)
        cold[b] = await cold_start(backend, b, cfgs[b], n, held=True)
        limits = cfgs[b].limits
        print(line(f"  {b}: from a held worker", cold[b], f"(cpus {limits.cpus:g}, memory {limits.memory})"))
        print(line(f"  {b}: from nothing (no held worker)", await cold_start(backend, b, cfgs[b], n, held=False)))
    for b in ("mock", "custom"):
        if b in cold:
            p50 = percentiles(cold[b])["p50"]
            floor50 = percentiles(floor)["p50"]
            print(f"  {b} held p50 / docker run floor p50: {p50 / floor50:.2f}x  (targets: p50 < 200 ms, < 1x)")
    first: dict[str, list[float]] = {}
    if "first" in sections:
        print()
        print("first framework call on a claimed spare (claim + the call)")
    for b in bridges if "first" in sections else []:
        first[b], again = await first_call(backend, b, cfgs[b], max(3, runs // 2))
        print(line(f"  {b}: {FIRST_CALLS[b][0]}", first[b]))
        print(line("    the same call again (steady state)", again))
    if "mock" in first:
        base = percentiles(first["mock"])["p50"]
        for b in bridges:
            if b != "mock":
                print(f"  {b} / mock p50: {percentiles(first[b])['p50'] / base:.2f}x  (target < 2x)")
    if "transformers" in bridges and "preload" in sections:
        print()
        n = max(3, runs // 2)
        print(f"first model on a claimed transformers spare (claim + create a model resource; "
              f"{PRELOAD_MODEL['layers']}-layer, hidden-{PRELOAD_MODEL['hidden']} BERT classifier)")
        loads = await preload_first_model(cfgs["transformers"], n)
        print(line("  read from the model store on create (no preload)", loads[False]))
        print(line("  preloaded in the spare (preload_models)", loads[True]))
        print(f"  preloaded / read p50: {percentiles(loads[True])['p50'] / percentiles(loads[False])['p50']:.2f}x")
    if "mock" in bridges and "burst" in sections:
        print()
        mock = cfgs["mock"]
        print(f"burst of {BURST} new tenants within 1 s, mock bridge (pool_size {mock.pool_size}, "
              f"max_spares {mock.max_spares}, held {mock.held}); claim latency")
        for label, lat, met, before in await burst(backend, mock):
            print(line(f"  {label}", lat, f"met a ready spare: {met}/{BURST}  [{before}]"))
            print(f"  {'':<56} p99 {percentiles(lat)['p99']:8.1f}  (targets: >= 18 met, p99 < 250)")
    await backend.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--bridges", default=",".join(BRIDGES))
    ap.add_argument("--sections", default="baselines,cold,first,preload,burst")
    a = ap.parse_args()
    asyncio.run(main(a.runs, [b for b in a.bridges.split(",") if b], set(a.sections.split(","))))
