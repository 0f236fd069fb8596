"""Serving a tiny text classifier: mlbridge beside MLServer, LitServe and the pipeline in process.

In one run, one model (``make_tiny_model(dir, "bert-classifier")``: a
2-layer, hidden-64 BERT with a WordPiece tokenizer trained here) is served by

1. the pipeline called directly in process (the baseline, and the source of
   every expected answer);
2. mlbridge: ``mlbridge serve`` with a ``transformers`` worker serving a
   ``pipeline`` resource, batching off and on (process backend; also the
   docker backend when its image exists and ``--docker`` allows);
3. MLServer 1.7 with its Hugging Face runtime, adaptive batching on;
4. LitServe with its batching on;

each at 1 and 32 concurrent clients (throughput, p50, p99), every reply
checked against the in-process answer. Fairness: every server process, and
everything it starts, runs on one core (``taskset``) with one torch thread;
the clients run on the other core; all are driven by the same load
generator (``benchmarks/peers/load.py``), each in its own native protocol.
Servers not being measured are paused (SIGSTOP), and the servers take turns
round by round, so background load on the machine falls on all of them
alike. Then: cold start of a transformers worker to its first answer.

Targets (issue 11): at 32 clients mlbridge with batching serves more
requests per second than the best peer; at 1 client its p50 is below the
fastest peer's; no wrong answer (any wrong answer makes the run exit 1).

    python -m benchmarks.peers.venvs            # once: the peers' venvs
    python -m benchmarks.transformers [--quick] [--rounds 3] [--seconds 6] [--docker auto|on|off]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, machine, percentiles
from benchmarks.peers import servers, venvs
from benchmarks.peers.load import (
    TOLERANCE,
    Answer,
    MakeCaller,
    Result,
    drive,
    litserve_http,
    mlserver_rest,
)
from benchmarks.peers.mlbridge_side import (
    MLBridgeSide,
    cold_starts,
    docker_image_ready,
    served_mlbridge,
)
from benchmarks.peers.servers import Batching


@dataclass
class Target:
    """One server configuration the clients drive."""

    name: str
    protocol: str
    make: MakeCaller
    pause: Callable[[], None] = lambda: None
    resume: Callable[[], None] = lambda: None
    cpu: Callable[[], dict[str, float]] | None = None
    is_peer: bool = False
    is_mlbridge_batching: bool = False
    results: dict[int, list[Result]] = field(default_factory=dict)


def baseline(model_dir: Path, cpu: int, seconds: float) -> dict[str, Any]:
    """The in-process pipeline, measured in a process pinned like the servers (``peers/inprocess.py``)."""
    out = subprocess.run(["taskset", "-c", str(cpu), sys.executable, "-m", "benchmarks.peers.inprocess",
                          str(model_dir), str(seconds)], cwd=ROOT, env={**os.environ, **servers.ONE_THREAD},
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"in-process baseline failed:\n{out.stderr[-3000:]}")
    measured: dict[str, Any] = json.loads(out.stdout)
    return measured


@contextlib.contextmanager
def all_servers(a: argparse.Namespace, model_dir: Path, tmp: Path) -> Iterator[list[Target]]:
    """Every server of the run started (pinned), then paused until its turn; yields the targets."""
    batching = Batching(a.batch_size, a.batch_time_ms)
    peer_batching = Batching(a.batch_size, a.peer_batch_time_ms)
    backends = ["process"] + (["docker"] if a.docker_on else [])
    with contextlib.ExitStack() as stack:
        targets: list[Target] = []
        for backend in [] if a.no_mlbridge else backends:
            side: MLBridgeSide = stack.enter_context(served_mlbridge(model_dir, backend, a.server_cpu, tmp))
            label = "mlbridge, docker (hardened, cpus 1, pinned)" if backend == "docker" else "mlbridge, process backend"
            off, on = side.pipelines(batching)
            targets.append(Target(f"{label}, batching off", "gRPC (mlbridge client)", side.caller(off),
                                  side.pause, side.resume, side.cpu))
            targets.append(Target(f"{label}, batching on", "gRPC (mlbridge client)", side.caller(on),
                                  side.pause, side.resume, side.cpu, is_mlbridge_batching=backend == "process"))
        if not a.no_peers:
            mls, mls_port = stack.enter_context(servers.mlserver(model_dir, a.server_cpu, tmp, peer_batching))
            targets.append(Target("MLServer 1.7 HF runtime, adaptive batching", "V2 REST (HTTP/1.1 JSON)",
                                  mlserver_rest(mls_port, servers.MLSERVER_MODEL), mls.pause, mls.resume,
                                  functools.partial(servers.tree_cpu, mls.proc.pid), is_peer=True))
            lit, lit_port = stack.enter_context(servers.litserve(model_dir, a.server_cpu, tmp, peer_batching))
            targets.append(Target("LitServe, batching on", "HTTP/1.1 JSON", litserve_http(lit_port),
                                  lit.pause, lit.resume, functools.partial(servers.tree_cpu, lit.proc.pid),
                                  is_peer=True))
        for t in targets:
            t.pause()
        yield targets


def measure(targets: list[Target], texts: list[str], expected: dict[str, Answer], a: argparse.Namespace) -> None:
    """Each target at each concurrency, round by round, the others paused meanwhile."""
    for r in range(a.rounds):
        for t in targets if r % 2 == 0 else targets[::-1]:
            t.resume()
            try:
                for clients in a.clients:
                    res = drive(t.make, clients, texts, expected, warmup_s=a.warmup, seconds=a.seconds,
                                server_cpu=t.cpu, core_busy=functools.partial(servers.core_busy, a.server_cpu))
                    t.results.setdefault(clients, []).append(res)
                    print(f"  round {r + 1}: {t.name:<58} {clients:>3} clients {res.rps:8.0f} req/s "
                          f"p50 {res.p50:7.2f} ms  wrong {len(res.wrong)}", file=sys.stderr, flush=True)
            finally:
                t.pause()


def med(results: list[Result], attr: str) -> float:
    return float(statistics.median(getattr(r, attr) for r in results))


def _cpu(results: list[Result]) -> tuple[str, str]:
    """Median server CPU ms per request (with its parts when several) and the share of a core it used."""
    measured = [r for r in results if r.server_cpu and r.latencies_ms]
    if not measured:
        return "", ""
    parts = list(measured[0].server_cpu)
    per = {p: statistics.median(r.cpu_ms_per_request(p) or 0.0 for r in measured) for p in parts}
    total = f"{sum(per.values()):.2f}" + (" (" + "+".join(f"{v:.2f}" for v in per.values()) + ")" if len(per) > 1 else "")
    share = statistics.median(sum(r.server_cpu.values()) / r.seconds for r in measured)
    return total, f"{share:.0%}"


def report(targets: list[Target], base: dict[str, Any], a: argparse.Namespace) -> int:
    """Print the table, ratios and targets; return the number of wrong answers."""
    bp = percentiles(base["latencies_ms"])
    head = (f"{'server':<60} {'protocol':<23} {'clients':>7} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'wrong':>5} "
            f"{'batch':>5}  {'srv CPU ms/req':<18} {'srv core':>8} {'others':>6} {'cli core':>8}")
    print(head)
    print(f"{'in-process pipeline (baseline), one call per text':<60} {'(none)':<23} {1:>7} "
          f"{len(base['latencies_ms']) / a.seconds:7.0f} {bp['p50']:7.2f} {bp['p99']:7.2f} {0:>5} {1:>5}")
    print(f"{'in-process pipeline, 32 texts per call (the core ceiling)':<60} {'(none)':<23} {'':>7} "
          f"{base['batched_rps']:7.0f} {'':>7} {'':>7} {0:>5} {32:>5}")
    wrong = 0
    for t in targets:
        for clients, results in sorted(t.results.items()):
            batches = [b for r in results for b in r.batches]
            mean_batch = f"{sum(batches) / len(batches):5.1f}" if batches else f"{'':>5}"
            n_wrong = sum(len(r.wrong) for r in results)
            wrong += n_wrong
            cpu, share = _cpu(results)
            others = [r.others for r in results if r.others is not None]
            other = f"{statistics.median(others):6.0%}" if others else f"{'':>6}"
            print(f"{t.name:<60} {t.protocol:<23} {clients:>7} {med(results, 'rps'):7.0f} {med(results, 'p50'):7.2f} "
                  f"{med(results, 'p99'):7.2f} {n_wrong:>5} {mean_batch}  {cpu:<18} {share:>8} {other} "
                  f"{med(results, 'client_cpu'):8.0%}")
    print("batch: mean requests per model invocation (mlbridge's reply metadata; the peers do not say). "
          "srv CPU ms/req: server CPU per answered request (mlbridge: orchestrator+worker), less sensitive to "
          "other load than req/s; srv core / others / cli core: share of the server core used by the server / "
          "by other processes of the machine (noise), share of a core used by the clients")
    for t in targets:
        for results in t.results.values():
            for why in [w for r in results for w in r.wrong][:10]:
                print(f"WRONG ({t.name}): {why}")
    noisy = max((r.others or 0.0 for t in targets for rs in t.results.values() for r in rs), default=0.0)
    if noisy > 0.15:
        print(f"WARNING: other processes took up to {noisy:.0%} of the server core during a measurement; "
              f"req/s and latency are not comparable across rows then: rerun on a quiet machine")
    _targets(targets, a, wrong)
    return wrong


def _targets(targets: list[Target], a: argparse.Namespace, wrong: int) -> None:
    peers = [t for t in targets if t.is_peer]
    ours = next((t for t in targets if t.is_mlbridge_batching), None)
    hi, lo = max(a.clients), min(a.clients)
    if not peers or ours is None:
        print(f"wrong answers: {wrong}; no ratios (--no-peers or --no-mlbridge)")
        return
    best = max(peers, key=lambda t: med(t.results[hi], "rps"))
    fastest = min(peers, key=lambda t: med(t.results[lo], "p50"))
    rps, best_rps = med(ours.results[hi], "rps"), med(best.results[hi], "rps")
    p50, best_p50 = med(ours.results[lo], "p50"), med(fastest.results[lo], "p50")
    print(f"ratios against the best peer in this run ({ours.name}):")
    print(f"  {hi} clients: {rps:.0f} req/s vs {best.name} {best_rps:.0f} req/s = {rps / best_rps:.2f}x "
          f"(target > 1.00x): {'MET' if rps > best_rps else 'MISSED'}")
    print(f"  {lo} client: p50 {p50:.2f} ms vs {fastest.name} {best_p50:.2f} ms = {p50 / best_p50:.2f}x "
          f"(target < 1.00x): {'MET' if p50 < best_p50 else 'MISSED'}")
    print(f"  wrong answers: {wrong} (target 0): {'MET' if wrong == 0 else 'MISSED'}")
    cheapest = min(peers, key=lambda t: _cpu_ms(t.results[hi]))
    ours_cpu, peer_cpu = _cpu_ms(ours.results[hi]), _cpu_ms(cheapest.results[hi])
    print(f"  {hi} clients, server CPU per request (steadier than req/s under other load): {ours_cpu:.2f} ms vs "
          f"{cheapest.name} {peer_cpu:.2f} ms = {ours_cpu / peer_cpu:.2f}x; a full core would serve about "
          f"{1000 / ours_cpu:.0f} vs {1000 / peer_cpu:.0f} req/s")


def _cpu_ms(results: list[Result]) -> float:
    return statistics.median(r.cpu_ms_per_request() or float("nan") for r in results)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short smoke run (one round, short windows)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every server in turn; medians are reported")
    ap.add_argument("--seconds", type=float, default=6.0, help="measured window per server and concurrency")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each window")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--batch-size", type=int, default=32, help="max batch size, mlbridge and the peers alike")
    ap.add_argument("--batch-time-ms", type=float, default=5.0, help="mlbridge's max_batch_time_ms")
    ap.add_argument("--peer-batch-time-ms", type=float, default=5.0,
                    help="MLServer's max_batch_time and LitServe's batch_timeout, in ms")
    ap.add_argument("--docker", choices=["auto", "on", "off"], default="auto",
                    help="also the docker backend (auto: when its image exists; never with --quick)")
    ap.add_argument("--cold-starts", type=int, default=3, help="cold starts of a transformers worker to measure")
    ap.add_argument("--no-peers", action="store_true", help="mlbridge and the baseline only")
    ap.add_argument("--no-mlbridge", action="store_true", help="the peers and the baseline only")
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--client-cpu", type=int, default=0)
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds, a.seconds, a.warmup, a.cold_starts = 1, 2.0, 1.0, 1
    a.docker_on = a.docker == "on" or (a.docker == "auto" and not a.quick and docker_image_ready())
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    if not a.no_peers:
        for peer in venvs.PEERS:
            venvs.ensure(peer)
    os.sched_setaffinity(0, {a.client_cpu})  # this process (the clients) stays off the server core
    from transformers.utils import logging as hf_logging

    from orchestrator.models.tiny import make_tiny_model

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    with tempfile.TemporaryDirectory(prefix="mlb-bench-tf-") as tmpdir:
        tmp = Path(tmpdir)
        model_dir = make_tiny_model(tmp / "tiny-bert", "bert-classifier")
        base = baseline(model_dir, a.server_cpu, a.seconds)
        texts = base["texts"]
        expected = {t: Answer(x["label"], x["score"]) for t, x in zip(texts, base["answers"], strict=True)}
        with all_servers(a, model_dir, tmp) as targets:
            measure(targets, texts, expected, a)
        cold = "" if a.no_mlbridge else cold_starts(model_dir, "docker" if a.docker_on else "process",
                                                    a.server_cpu, tmp, a.cold_starts, texts[0], expected[texts[0]])
        print(f"machine: {machine()}")
        print(f"model: tiny BERT classifier (2 layers, hidden 64, {len(texts)} texts whose in-process answers lie "
              f">= {3 * TOLERANCE:g} apart; a reply passes with the same label and its score within {TOLERANCE:g})")
        print(f"servers: each on cpu {a.server_cpu} (taskset, everything it starts), 1 torch thread; clients on cpu "
              f"{a.client_cpu}; {a.rounds} round(s) of {a.seconds:g} s after {a.warmup:g} s warm-up each, medians; "
              f"batching: max {a.batch_size} requests, mlbridge {a.batch_time_ms:g} ms, "
              f"peers {a.peer_batch_time_ms:g} ms")
        wrong = report(targets, base, a)
        if cold:
            print(cold)
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
