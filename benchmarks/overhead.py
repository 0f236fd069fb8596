"""Per-call overhead: raw single-hop gRPC echo vs client -> orchestrator -> runtime.

Both servers run in their own processes at the same time; the client (this
process) alternates one raw call and one end-to-end call, so both see the
same background load. Prints p50/p90/p99 of each and the ratio. Targets:
end-to-end p50 within 2x raw (process backend; ``--backend docker`` measures a
hardened container), p99 under 3 ms. ``--concurrency N`` also measures
throughput with N concurrent clients against the same raw echo (target: at
least 40% of raw at 32 clients).

    python -m benchmarks.overhead [--n 3000] [--backend process|docker] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from collections.abc import Callable

import grpc

from benchmarks._common import machine, percentiles, raw_echo_server, served_orchestrator
from orchestrator import MLBridge
from runtimes.wire.proto import runtime_pb2 as pb
from runtimes.wire.proto import runtime_pb2_grpc as pb_grpc

ARGS = {"x": 1}
PAYLOAD = json.dumps(ARGS).encode()


def raw_caller(addr: str) -> tuple[Callable[[], None], Callable[[], None]]:
    ch = grpc.insecure_channel(addr)
    stub = pb_grpc.RuntimeStub(ch)

    def one() -> None:
        reply = stub.Call(pb.CallRequest(call_id=uuid.uuid4().hex, command="mock:echo", args_json=PAYLOAD))
        assert json.loads(reply.result_json) == ARGS

    return one, ch.close


def e2e_caller(addr: str) -> tuple[Callable[[], None], Callable[[], None]]:
    mb = MLBridge.connect(addr)

    def one() -> None:
        assert mb.call("mock", "mock:echo", ARGS) == ARGS

    return one, mb.close


def interleaved(raw: Callable[[], None], e2e: Callable[[], None], n: int, warmup: int) -> tuple[list[float], list[float]]:
    for _ in range(warmup):
        raw()
        e2e()
    r, e = [], []
    for i in range(n):
        # Alternate which goes first so neither always follows the other.
        order = ((raw, r), (e2e, e)) if i % 2 else ((e2e, e), (raw, r))
        for fn, out in order:
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1000)
    return r, e


def throughput(make: Callable[[], tuple[Callable[[], None], Callable[[], None]]], clients: int,
               seconds: float) -> float:
    """Calls per second with ``clients`` threads, each with its own channel."""
    callers = [make() for _ in range(clients)]
    for one, _ in callers:
        one()
    stop = time.monotonic() + seconds
    counts = [0] * clients

    def loop(i: int) -> None:
        one = callers[i][0]
        while time.monotonic() < stop:
            one()
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _, close in callers:
        close()
    return sum(counts) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--backend", default="process", choices=["process", "docker"])
    ap.add_argument("--concurrency", type=int, default=0, help="also measure throughput with N clients")
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as state, raw_echo_server() as raw_addr, \
            served_orchestrator(a.backend, {"MLBRIDGE_BRIDGES__MOCK__POOL_SIZE": "1"}, state) as e2e_addr:
        raw_one, raw_close = raw_caller(raw_addr)
        e2e_one, e2e_close = e2e_caller(e2e_addr)
        r, e = interleaved(raw_one, e2e_one, a.n, a.warmup)
        raw_close()
        e2e_close()
        rp, ep = percentiles(r), percentiles(e)
        print(f"machine: {machine()}")
        print(f"calls: {a.n} of each, interleaved, after {a.warmup} warm-up; one client")
        print(f"{'path':<44} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
        print(f"{'raw single-hop gRPC echo':<44} {rp['p50']:8.3f} {rp['p90']:8.3f} {rp['p99']:8.3f}")
        label = f"end-to-end mock:echo ({a.backend} backend)"
        print(f"{label:<44} {ep['p50']:8.3f} {ep['p90']:8.3f} {ep['p99']:8.3f}")
        print(f"ratio end-to-end / raw: p50 {ep['p50'] / rp['p50']:.2f}x  p99 {ep['p99'] / rp['p99']:.2f}x "
              f"(target p50 <= 2.00x; p99 target < 3 ms)")
        if a.concurrency:
            raw_tp = throughput(lambda: raw_caller(raw_addr), a.concurrency, a.seconds)
            e2e_tp = throughput(lambda: e2e_caller(e2e_addr), a.concurrency, a.seconds)
            print(f"throughput with {a.concurrency} clients: raw {raw_tp:,.0f}/s, end-to-end {e2e_tp:,.0f}/s, "
                  f"ratio {e2e_tp / raw_tp:.0%} (target >= 40%)")


if __name__ == "__main__":
    main()
