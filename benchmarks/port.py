"""What ``mlbridge port`` costs: the Python gRPC client vs the mux and DSPex port protocols.

One orchestrator (process backend, mock bridge) serves all three, measured in
interleaved rounds so they share the background load:

- latency: one ``mock:echo`` at a time, p50/p90/p99 of each path;
- throughput: ``--inflight`` requests kept in flight (threads for the gRPC
  client; pipelined frames for the ports, as an Erlang process would send them);
- attachments: a 1 MiB blob through ``mock:attach`` and back (raw bytes on the
  gRPC client and in mux frames).

Prints each figure and its ratio to the gRPC client measured in the same run.
This is the price an Elixir application pays for a port instead of a native
gRPC client; no target is set here, the figures are for docs/benchmarks.md.

    python -m benchmarks.port [--n 2000] [--rounds 3] [--inflight 32]
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks._common import ROOT, machine, percentiles, served_orchestrator
from orchestrator import MLBridge
from orchestrator.port.mux import decode, encode

ARGS = {"x": 1}
BLOB = bytes(range(256)) * 4096  # 1 MiB


class PortClient:
    """A port subprocess with a reader thread; ``send`` frames, ``wait(id)`` for a reply."""

    def __init__(self, address: str, protocol: str) -> None:
        self.protocol = protocol
        self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "--address", address, "port",
                                      "--protocol", protocol, "--concurrency", "64"], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._cv = threading.Condition()
        self._replies: dict[Any, tuple[dict[str, Any], dict[str, bytes]]] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if protocol == "mux":
            self.wait(None)  # the greeting

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while len(head := out.read(4)) == 4:
            body = out.read(struct.unpack(">I", head)[0])
            if self.protocol == "mux":
                header, blobs = decode(body)
            else:
                header, blobs = json.loads(body), {}
            with self._cv:
                self._replies[header.get("id")] = (header, blobs)
                self._cv.notify_all()

    def send(self, rid: Any, command: str, args: dict[str, Any], attachments: dict[str, bytes] | None = None) -> None:
        if self.protocol == "mux":
            body = b"".join(encode({"id": rid, "op": "call", "bridge": "mock", "command": command, "args": args},
                                   attachments))
        else:
            body = json.dumps({"id": rid, "command": command, "args": args}).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(struct.pack(">I", len(body)) + body)
        self.proc.stdin.flush()

    def wait(self, rid: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
        with self._cv:
            while rid not in self._replies:
                if not self._cv.wait(60):
                    raise TimeoutError(f"no reply to {rid!r}")
            return self._replies.pop(rid)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def check(protocol: str, reply: dict[str, Any]) -> Any:
    ok = reply.get("ok") if protocol == "mux" else reply.get("success")
    assert ok is True, reply
    return reply["result"]


def timed(one: Callable[[], None], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        one()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="sequential calls per path per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inflight", type=int, default=32)
    ns = ap.parse_args()
    print(f"machine: {machine()}")
    with served_orchestrator("process") as addr:
        mb = MLBridge.connect(addr)
        ports = {p: PortClient(addr, p) for p in ("mux", "dspex")}
        counter = iter(range(10**9))

        def via_port(p: str) -> Callable[[], None]:
            def one() -> None:
                rid = next(counter)
                ports[p].send(rid, "mock:echo", ARGS)
                assert check(p, ports[p].wait(rid)[0]) == ARGS
            return one

        def via_grpc() -> None:
            assert mb.call("mock", "mock:echo", ARGS) == ARGS

        paths = {"grpc client": via_grpc, "mux port": via_port("mux"), "dspex port": via_port("dspex")}
        for one in paths.values():
            timed(one, 200)  # warm up: workers, channels, threads
        lat: dict[str, list[float]] = {k: [] for k in paths}
        tput: dict[str, list[float]] = {k: [] for k in paths}
        blob: dict[str, list[float]] = {"grpc client": [], "mux port": []}
        pool = ThreadPoolExecutor(ns.inflight)
        for _ in range(ns.rounds):
            for name, one in paths.items():
                lat[name] += timed(one, ns.n)
            # throughput: ns.n calls with ns.inflight in flight
            t0 = time.perf_counter()
            list(pool.map(lambda _: mb.call("mock", "mock:echo", ARGS), range(ns.n)))
            tput["grpc client"].append(ns.n / (time.perf_counter() - t0))
            for p, name in (("mux", "mux port"), ("dspex", "dspex port")):
                t0 = time.perf_counter()
                ids = [next(counter) for _ in range(ns.n)]
                for i, rid in enumerate(ids):
                    ports[p].send(rid, "mock:echo", ARGS)
                    if i >= ns.inflight:
                        check(p, ports[p].wait(ids[i - ns.inflight])[0])
                for rid in ids[-ns.inflight:]:
                    check(p, ports[p].wait(rid)[0])
                tput[name].append(ns.n / (time.perf_counter() - t0))
            for _ in range(20):
                t0 = time.perf_counter()
                res = mb.call_detailed("mock", "mock:attach", {}, attachments={"b": BLOB})
                assert res.attachments["b"] == BLOB[::-1]
                blob["grpc client"].append((time.perf_counter() - t0) * 1000)
                rid = next(counter)
                t0 = time.perf_counter()
                ports["mux"].send(rid, "mock:attach", {}, {"b": BLOB})
                _, blobs = ports["mux"].wait(rid)
                assert blobs["b"] == BLOB[::-1]
                blob["mux port"].append((time.perf_counter() - t0) * 1000)
        pool.shutdown()
        for p in ports.values():
            p.close()
        mb.close()

    base = percentiles(lat["grpc client"])["p50"]
    print(f"\nlatency, one call at a time (ms), {ns.rounds} x {ns.n} calls per path, mock:echo")
    print(f"{'':14}{'p50':>8}{'p90':>8}{'p99':>8}   p50 vs grpc client")
    for name, samples in lat.items():
        pc = percentiles(samples)
        print(f"{name:14}{pc['p50']:8.3f}{pc['p90']:8.3f}{pc['p99']:8.3f}   {pc['p50'] / base:5.2f}x")
    best = max(tput["grpc client"])
    print(f"\nthroughput with {ns.inflight} in flight (calls/s, best of {ns.rounds} rounds)")
    for name, rates in tput.items():
        print(f"{name:14}{max(rates):10.0f}   {max(rates) / best:5.2f}x")
    base_blob = percentiles(blob["grpc client"])["p50"]
    print("\n1 MiB attachment there and back (ms, p50)")
    for name, samples in blob.items():
        p50 = percentiles(samples)["p50"]
        print(f"{name:14}{p50:10.2f}   {p50 / base_blob:5.2f}x")


if __name__ == "__main__":
    main()
