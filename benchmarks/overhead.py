"""Per-call overhead: raw single-hop gRPC echo vs client -> orchestrator -> runtime.

Both servers run in their own processes; the client is this process. Prints
p50/p99 of each and the ratio of end-to-end to raw. Target: end-to-end p50
within 2x raw with the process backend (``--backend docker`` measures a
hardened container instead).

    python -m benchmarks.overhead [--n 2000] [--backend process|docker]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import uuid

import grpc

from benchmarks._common import (
    machine,
    percentiles,
    raw_echo_server,
    served_orchestrator,
    time_calls,
)
from orchestrator import MLBridge
from runtimes.proto import runtime_pb2 as pb
from runtimes.proto import runtime_pb2_grpc as pb_grpc

ARGS = {"x": 1}


def measure_raw(n: int, warmup: int) -> dict[str, float]:
    with raw_echo_server() as addr, grpc.insecure_channel(addr) as ch:
        stub = pb_grpc.RuntimeStub(ch)
        payload = json.dumps(ARGS).encode()

        def one() -> None:
            reply = stub.Call(pb.CallRequest(call_id=uuid.uuid4().hex, command="mock:echo", args_json=payload))
            assert json.loads(reply.result_json) == ARGS

        return percentiles(time_calls(one, n, warmup))


def measure_e2e(n: int, warmup: int, backend: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as state, \
            served_orchestrator(backend, {"MLBRIDGE_BRIDGES__MOCK__POOL_SIZE": "1"}, state) as addr, \
            MLBridge.connect(addr) as mb:

        def one() -> None:
            assert mb.call("mock", "mock:echo", ARGS) == ARGS

        return percentiles(time_calls(one, n, warmup))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--backend", default="process", choices=["process", "docker"])
    a = ap.parse_args()
    raw = measure_raw(a.n, a.warmup)
    e2e = measure_e2e(a.n, a.warmup, a.backend)
    print(f"machine: {machine()}")
    print(f"calls: {a.n} each after {a.warmup} warm-up, sequential, one client")
    print(f"{'path':<44} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    print(f"{'raw single-hop gRPC echo':<44} {raw['p50']:8.3f} {raw['p90']:8.3f} {raw['p99']:8.3f}")
    label = f"end-to-end mock:echo ({a.backend} backend)"
    print(f"{label:<44} {e2e['p50']:8.3f} {e2e['p90']:8.3f} {e2e['p99']:8.3f}")
    print(f"ratio end-to-end / raw: p50 {e2e['p50'] / raw['p50']:.2f}x  p99 {e2e['p99'] / raw['p99']:.2f}x "
          f"(target p50 <= 2.00x)")


if __name__ == "__main__":
    main()
