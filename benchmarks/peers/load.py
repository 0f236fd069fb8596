"""One load generator for every server: N closed-loop clients, each reply checked.

Every server in the transformers benchmark is driven by the same code: N
threads, each with its own connection in the server's native protocol, each
sending its next request as soon as its last reply is in (a closed loop, the
way N concurrent users behave). Only replies completed inside the measured
window count, after a warm-up the server gets to reach its steady state
(batching servers need a few full batches). Every reply is compared with the
in-process pipeline's answer for the same text: the label equal and the score
within ``TOLERANCE``; anything else, an error included, is a wrong answer,
kept with the text so it can be printed.

The callers: mlbridge's own gRPC Python client (``execute_resource`` on a
``pipeline`` resource, batch size read from the reply metadata), MLServer's V2
inference protocol over REST, LitServe's HTTP JSON endpoint.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks._common import percentiles

TOLERANCE = 1e-5


@dataclass(frozen=True)
class Answer:
    """One classification: the pipeline's top label and its score; ``batch`` if the server says."""

    label: str
    score: float
    batch: int | None = None


Caller = Callable[[str], Answer]
#: Opens one client (its own connection): the function that sends one text, and the one that closes it.
MakeCaller = Callable[[], tuple[Caller, Callable[[], None]]]


@dataclass
class Result:
    """What one server did at one concurrency."""

    clients: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    #: CPU seconds the server's parts (e.g. orchestrator, worker) used in the window; the clients' share of a core.
    server_cpu: dict[str, float] = field(default_factory=dict)
    client_cpu: float = 0.0
    #: Share of the server core that processes other than the server used in the window (noise).
    others: float | None = None

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.seconds

    @property
    def p50(self) -> float:
        return percentiles(self.latencies_ms)["p50"] if self.latencies_ms else float("nan")

    @property
    def p99(self) -> float:
        return percentiles(self.latencies_ms)["p99"] if self.latencies_ms else float("nan")

    def cpu_ms_per_request(self, part: str | None = None) -> float | None:
        """Server CPU milliseconds per answered request (all parts, or one): robust to a shared core."""
        if not self.server_cpu or not self.latencies_ms:
            return None
        used = sum(self.server_cpu.values()) if part is None else self.server_cpu[part]
        return used * 1000 / len(self.latencies_ms)

    @property
    def mean_batch(self) -> float | None:
        return sum(self.batches) / len(self.batches) if self.batches else None


def check(text: str, got: Answer, want: Answer) -> str | None:
    """Why ``got`` is not the in-process answer for ``text``, or None when it is."""
    if got.label == want.label and abs(got.score - want.score) <= TOLERANCE:
        return None
    return f"{text!r}: got {got.label} {got.score:.7f}, in-process {want.label} {want.score:.7f}"


def drive(make: MakeCaller, clients: int, texts: list[str], expected: dict[str, Answer], *,
          warmup_s: float, seconds: float, server_cpu: Callable[[], dict[str, float]] | None = None,
          core_busy: Callable[[], float] | None = None) -> Result:
    """Run ``clients`` closed-loop clients for ``warmup_s + seconds``; measure the last ``seconds``.

    ``server_cpu`` reads the CPU seconds each part of the server has used so
    far: with it the result says what a request costs the server in CPU,
    which holds even when other work shares the core; the client CPU share
    says whether the clients, not the server, were the limit. ``core_busy``
    reads the busy CPU seconds of the server's core: less the server's own,
    what other processes took from it meanwhile.
    """
    callers = [make() for _ in range(clients)]
    for i, (call, _) in enumerate(callers):  # connect each before the clock starts
        text = texts[i % len(texts)]
        if (why := check(text, call(text), expected[text])) is not None:
            raise AssertionError(f"first reply wrong, before any load: {why}")
    result = Result(clients, seconds)
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    t0 = 0.0  # set by the main thread at the barrier

    def client(i: int) -> None:
        call = callers[i][0]
        lat: list[float] = []
        wrong: list[str] = []
        batches: list[int] = []
        start.wait()
        measure_from, stop = t0 + warmup_s, t0 + warmup_s + seconds
        n = i
        while True:
            text = texts[n % len(texts)]
            n += clients
            t = time.perf_counter()
            if t >= stop:
                break
            try:
                got = call(text)
                why = check(text, got, expected[text])
            except Exception as exc:  # noqa: BLE001 - any failure is a wrong answer, printed with its text
                got, why = None, f"{text!r}: {type(exc).__name__}: {exc}"
            done = time.perf_counter()
            if t >= measure_from and done <= stop:
                lat.append((done - t) * 1000)
                if why is not None:
                    wrong.append(why)
                if got is not None and got.batch:
                    batches.append(got.batch)
        with lock:
            result.latencies_ms += lat
            result.wrong += wrong
            result.batches += batches

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    start.wait()
    time.sleep(max(0.0, t0 + warmup_s - time.perf_counter()))
    cpu0, srv0 = time.process_time(), server_cpu() if server_cpu else {}
    busy0 = core_busy() if core_busy else 0.0
    time.sleep(max(0.0, t0 + warmup_s + seconds - time.perf_counter()))
    result.client_cpu = (time.process_time() - cpu0) / seconds
    if server_cpu:
        result.server_cpu = {k: v - srv0[k] for k, v in server_cpu().items()}
    if core_busy and server_cpu:
        result.others = max(0.0, (core_busy() - busy0 - sum(result.server_cpu.values())) / seconds)
    for t in threads:
        t.join()
    for _, close in callers:
        close()
    return result


# -- callers, one per protocol ------------------------------------------------------------------------------------

def _http_caller(port: int, path: str, body: Callable[[str], bytes], parse: Callable[[bytes], Answer]) -> MakeCaller:
    """A keep-alive HTTP/1.1 JSON client per thread (the stdlib's: the least client CPU per request)."""

    def make() -> tuple[Caller, Callable[[], None]]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}

        def call(text: str) -> Answer:
            try:
                conn.request("POST", path, body(text), headers)
                reply = conn.getresponse()
                data = reply.read()
            except (OSError, http.client.HTTPException):
                conn.close()  # the next call reconnects; this one counts as wrong
                raise
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}: {data[:300]!r}")
            return parse(data)

        return call, conn.close

    return make


def mlserver_rest(port: int, model: str) -> MakeCaller:
    """MLServer's V2 inference protocol over REST: one BYTES input, one JSON-list output."""

    def body(text: str) -> bytes:
        return json.dumps({"inputs": [{"name": "array_inputs", "shape": [1], "datatype": "BYTES",
                                       "data": [text]}]}).encode()

    def parse(data: bytes) -> Answer:
        out = json.loads(json.loads(data)["outputs"][0]["data"][0])
        return Answer(out["label"], float(out["score"]))

    return _http_caller(port, f"/v2/models/{model}/infer", body, parse)


def litserve_http(port: int) -> MakeCaller:
    """LitServe's ``/predict`` endpoint, JSON in and out (the API in ``litserve_api.py``)."""

    def parse(data: bytes) -> Answer:
        out = json.loads(data)["output"][0]
        return Answer(out["label"], float(out["score"]))

    return _http_caller(port, "/predict", lambda text: json.dumps({"inputs": text}).encode(), parse)


def mlbridge_grpc(address: str, resource_id: str) -> MakeCaller:
    """mlbridge's Python client (gRPC): ``execute_resource`` on a ``pipeline`` resource."""
    from orchestrator import MLBridge
    from runtimes.wire.metadata import BATCH_SIZE

    def make() -> tuple[Caller, Callable[[], None]]:
        mb = MLBridge.connect(address, timeout=60)

        def call(text: str) -> Answer:
            reply = mb.execute_resource_detailed(resource_id, {"inputs": text})
            out = reply.result["output"][0]
            batch = reply.metadata.get(BATCH_SIZE)
            return Answer(out["label"], float(out["score"]), int(batch) if batch else None)

        return call, mb.close

    return make
