"""What metrics and tracing cost a call: the same orchestrator three ways, interleaved.

Three ``mlbridge serve`` processes (process backend, mock bridge) run at the
same time: plain; with the Prometheus endpoint on (``--metrics-listen``,
scraped once a second by this benchmark, as Prometheus would); and with
metrics plus tracing of every call (sample ratio 1; spans exported in
batches, by a background thread of the orchestrator, to OpenTelemetry's
in-memory exporter). One client alternates one call to each, so
all three see the same load. Prints p50/p90/p99 of each and the overhead
against plain, per round and as the median over rounds. Then, on one
orchestrator with both on, calls whose client sent a sampled or an unsampled
``traceparent`` (in random order): what tracing one call costs, free of the
differences between processes. Target: metrics, and tracing a call, each
cost under 5% of the p50 call latency.

    python -m benchmarks.observability [--n 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator

from benchmarks._common import ROOT, free_port, machine, percentiles
from orchestrator import MLBridge

ARGS = {"x": 1}


def serve_main(mode: str, port: int, metrics_port: int, state: str) -> None:
    """Child process: one orchestrator in ``mode`` (plain, metrics, traced)."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from orchestrator.config import load_config
    from orchestrator.observe import Tracing
    from orchestrator.serve import run

    overrides: dict[str, object] = {"listen": f"127.0.0.1:{port}", "state_dir": state, "backend": "process",
                                    "default_bridge": "mock",
                                    "bridges": {"mock": {"runtime": "mock", "pool_size": 1, "held": 0}}}
    if mode != "plain":
        overrides["metrics_listen"] = f"127.0.0.1:{metrics_port}"
    cfg = load_config(None, env={}, **overrides)
    exporter = InMemorySpanExporter()
    tracing = Tracing([exporter]) if mode == "traced" else None

    def ready(server: object) -> None:
        print("serving", flush=True)

    asyncio.run(run(cfg, on_ready=ready, tracing=tracing))
    if mode == "traced":
        print(f"spans: {len(exporter.get_finished_spans())}", flush=True)


@contextlib.contextmanager
def served(mode: str) -> Iterator[tuple[str, int]]:
    port, metrics_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as state:
        env = {**os.environ, "MLBRIDGE_LOG_LEVEL": "WARNING"}
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.observability", "--serve", mode, str(port),
                                 str(metrics_port), state], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "serving" in line:
                    break
            else:
                raise RuntimeError(f"the {mode} orchestrator exited before serving")
            yield f"127.0.0.1:{port}", metrics_port
        finally:
            proc.terminate()
            proc.wait(60)


def one_round(n: int, warmup: int, first: int = 0) -> tuple[dict[str, list[float]], int]:
    """Fresh orchestrators of every mode, called in turn; the latencies (ms) of each, and scrapes made.

    ``first`` rotates the order the orchestrators start in (so no mode always starts first)."""
    modes = ("plain", "metrics", "traced")
    order = modes[first % 3:] + modes[:first % 3]
    with contextlib.ExitStack() as stack:
        servers = {m: stack.enter_context(served(m)) for m in order}
        clients = {m: MLBridge.connect(addr) for m, (addr, _) in servers.items()}
        stop = threading.Event()
        scrapes = [0]

        def scrape() -> None:  # as Prometheus would, once a second, both endpoints that have one
            while not stop.wait(1.0):
                for m in ("metrics", "traced"):
                    urllib.request.urlopen(f"http://127.0.0.1:{servers[m][1]}/metrics", timeout=5).read()
                    scrapes[0] += 1

        scraper = threading.Thread(target=scrape, daemon=True)
        scraper.start()
        times: dict[str, list[float]] = {m: [] for m in modes}
        for i in range(warmup + n):
            order = modes[i % 3:] + modes[:i % 3]  # rotate who goes first
            for m in order:
                t = time.perf_counter()
                assert clients[m].call("mock", "mock:echo", ARGS) == ARGS
                if i >= warmup:
                    times[m].append((time.perf_counter() - t) * 1000)
        stop.set()
        scraper.join()
        for c in clients.values():
            c.close()
    return times, scrapes[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="calls to each orchestrator per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each with fresh orchestrators")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--serve", nargs=4, metavar=("MODE", "PORT", "METRICS_PORT", "STATE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve_main(a.serve[0], int(a.serve[1]), int(a.serve[2]), a.serve[3])
        return
    modes = ("plain", "metrics", "traced")
    labels = {"plain": "plain (no metrics, no tracing)", "metrics": "metrics (--metrics-listen, scraped 1/s)",
              "traced": "metrics + tracing (every call, in-memory)"}
    print(f"machine: {machine()}")
    print(f"{a.rounds} rounds; each: fresh orchestrators, {a.n} calls to each, interleaved, after {a.warmup} "
          f"warm-up; one client")
    print(f"{'round':<6} {'orchestrator':<44} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p50 vs plain':>13}")
    ratios: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(1, a.rounds + 1):
        times, _ = one_round(a.n, a.warmup, first=r - 1)
        p = {m: percentiles(times[m]) for m in modes}
        for m in modes:
            ratios[m].append(p[m]["p50"] / p["plain"]["p50"])
            over = (ratios[m][-1] - 1) * 100
            print(f"{r:<6} {labels[m]:<44} {p[m]['p50']:8.3f} {p[m]['p90']:8.3f} {p[m]['p99']:8.3f} "
                  f"{over:+12.1f}%")
    print()
    for m in ("metrics", "traced"):
        med = (statistics.median(ratios[m]) - 1) * 100
        print(f"median over rounds, {labels[m]}: {med:+.1f}% of the plain p50")
    print()
    print("what tracing one call costs, on one orchestrator with metrics and tracing on: calls whose client sent")
    print("a traceparent with the sampled flag set (traced) or cleared (not traced), in random order")
    ab = same_server_ab(a.n * 2, a.warmup)
    pa = {k: percentiles(v) for k, v in ab.items()}
    for k in ("not traced", "traced"):
        over = (pa[k]["p50"] / pa["not traced"]["p50"] - 1) * 100
        print(f"       {k:<44} {pa[k]['p50']:8.3f} {pa[k]['p90']:8.3f} {pa[k]['p99']:8.3f} {over:+12.1f}%")
    print("target: metrics, and tracing a call, each under +5% of the p50")


def same_server_ab(n: int, warmup: int) -> dict[str, list[float]]:
    """Latencies (ms) of traced and untraced calls to one orchestrator, decided per call by the client's flag."""
    import random

    import grpc

    from orchestrator.proto import mlbridge_pb2 as pb
    from orchestrator.proto import mlbridge_pb2_grpc as pb_grpc

    out: dict[str, list[float]] = {"traced": [], "not traced": []}
    with served("traced") as (addr, _), grpc.insecure_channel(addr) as channel:
        stub = pb_grpc.MLBridgeStub(channel)
        req = pb.CallRequest(bridge="mock", command="mock:echo", args_json='{"x": 1}')
        for i in range(warmup + n):
            for kind in random.sample(["traced", "not traced"], 2):
                flag = "01" if kind == "traced" else "00"
                md = (("traceparent", f"00-{random.getrandbits(128) | 1:032x}-{random.getrandbits(64) | 1:016x}-{flag}"),)
                t = time.perf_counter()
                stub.Call(req, metadata=md, timeout=30)
                if i >= warmup:
                    out[kind].append((time.perf_counter() - t) * 1000)
    return out


if __name__ == "__main__":
    main()
