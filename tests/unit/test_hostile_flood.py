"""10,000 malformed and hostile requests to a real ``mlbridge serve``: clean codes, a quiet log, bounded memory.

The orchestrator runs as a subprocess (process backend, mock bridge, a
policy with a token, ``max_message_bytes`` 64 KiB so oversized requests stay
cheap), its log captured to a file. Several threads on several channels send
a deterministic mix of hostile requests to every public RPC: bytes that do
not parse, bad tokens, huge ids, deep JSON, NaN, lone surrogates, unknown
commands and bridges, payloads over the quota and over the message cap,
cancels and answers of unknown calls. Then: no INTERNAL and no UNKNOWN at
all (RESOURCE_EXHAUSTED only where the request was too big); the server
still answers ``mock:echo``; the log has no ERROR line and no traceback and
at most one line about requests that did not parse per window; and the
orchestrator's RSS after the flood is within :data:`RSS_BOUND_MIB` of its
RSS after a warm-up.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from benchmarks._common import free_port
from orchestrator.api.decode import REFUSED_LOG_EVERY_S
from orchestrator.proto import mlbridge_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "flood-token-0123456789"
MAX_MESSAGE_BYTES = 64 * 1024
QUOTA_PAYLOAD_BYTES = 32 * 1024
REQUESTS = 10_000
WARMUP = 600
THREADS = 8
CHANNELS = 4
#: How much the orchestrator's RSS may grow from after the warm-up to after the flood and a settle.
RSS_BOUND_MIB = 30
SETTLE_S = 3.0

SERVICE = pb.DESCRIPTOR.services_by_name["MLBridge"]
STREAMING = {m.name for m in SERVICE.methods if m.server_streaming}
REQUEST_TYPES = {m.name: getattr(pb, m.input_type.name) for m in SERVICE.methods}
GOOD = (("authorization", f"Bearer {TOKEN}"),)

POLICY = f"""
version: 1
defaults:
  bridges: [mock]
  rules:
    - {{name: no-slow-mock, effect: deny, commands: ["mock:spin", "mock:sleep", "mock:allocate", "mock:crash"]}}
    - {{name: everything-else, effect: allow}}
  quotas: {{max_concurrent_calls: 64, max_calls_per_minute: 1000000, max_resources: 50, max_payload_bytes: {QUOTA_PAYLOAD_BYTES}}}
  limits: {{call_timeout_s: 10}}
tenants:
  flood:
    tokens: ["sha256:{hashlib.sha256(TOKEN.encode()).hexdigest()}"]
"""


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    address: str
    log: Path

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("flood")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    policy.chmod(0o600)
    (tmp / "config.yaml").write_text(f"""default_bridge: mock
backend: process
state_dir: {tmp / 'state'}
policy: {policy}
max_message_bytes: {MAX_MESSAGE_BYTES}
bridges:
  mock:
    runtime: mock
    pool_size: 1
""")
    address = f"127.0.0.1:{free_port()}"
    log = tmp / "serve.log"
    env = {**os.environ, "MLBRIDGE_LOG_LEVEL": "INFO"}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", "--config", str(tmp / "config.yaml"),
                                 "--listen", address], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 120
        while b"serving" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlbridge serve did not come up:\n" + log.read_text()[-3000:])
            time.sleep(0.2)
        yield Server(proc, address, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# -- the hostile requests: (kind, method, bytes, metadata) -------------------------------------------------------
Hostile = tuple[str, str, bytes, tuple[tuple[str, str], ...]]
#: Kinds whose requests are too big by design: RESOURCE_EXHAUSTED is their right answer.
TOO_BIG = {"over-quota", "over-message-cap"}


def _garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 120)))
    if kind == 1:  # a string field that is not UTF-8
        return bytes([rng.randrange(1, 7) << 3 | 2, 2, 0xFF, 0xFE])
    if kind == 2:  # a length past the end
        return bytes([0x0A, 0xFF, 0xFF, 0x03]) + b"abc"
    if kind == 3:  # an over-long varint
        return b"\x08" + b"\xff" * 12
    return bytes([rng.randrange(1, 30) << 3 | rng.choice([3, 4, 6, 7]), 0])  # bad wire types


def _call(method: str = "Call", **fields: Any) -> tuple[str, bytes]:
    return method, pb.CallRequest(**fields).SerializeToString()


def hostile(rng: random.Random) -> Hostile:
    """One hostile request, drawn from ``rng``."""
    kind = rng.choice(["unparseable", "unparseable", "bad-token", "huge-id", "deep-json", "nan", "surrogate",
                       "unknown-name", "over-quota", "over-message-cap", "unknown-call", "odd-stats", "echo"])
    stream = rng.random() < 0.3
    call = "CallStream" if stream else "Call"
    md: tuple[tuple[str, str], ...] = GOOD
    if kind == "unparseable":
        method, data = rng.choice(sorted(REQUEST_TYPES)), _garbage(rng)
    elif kind == "bad-token":
        md = rng.choice([(), (("authorization", "Bearer wrong"),), (("authorization", "Basic " + "x" * 200),),
                         (("authorization", f"Bearer {TOKEN}x"),), (("authorization", "Bearer "),)])
        method, data = rng.choice([("ListBridges", b""), ("GetStats", b""),
                                   _call(call, bridge="mock", command="mock:echo", args_json="{}"),
                                   ("DeleteResource", pb.DeleteResourceRequest(resource_id="x").SerializeToString())])
    elif kind == "huge-id":
        char = rng.choice("xé漢")
        big = char * (rng.randrange(5_000, 20_000) // len(char.encode()))  # under 20 KB: twice fits the cap
        method, data = rng.choice([
            ("ExecuteResource", pb.ExecuteResourceRequest(resource_id=big, inputs_json="{}").SerializeToString()),
            ("ExecuteResourceStream", pb.ExecuteResourceRequest(resource_id=big).SerializeToString()),
            ("DeleteResource", pb.DeleteResourceRequest(resource_id=big).SerializeToString()),
            ("CreateResource", pb.CreateResourceRequest(bridge="mock", type="counter", resource_id=big,
                                                        config_json="{}").SerializeToString()),
            ("CreateResource", pb.CreateResourceRequest(bridge="mock", type=big).SerializeToString()),
            ("DescribeBridge", pb.DescribeBridgeRequest(bridge=big).SerializeToString()),
            ("Cancel", pb.CancelRequest(call_id=big).SerializeToString()),
            ("Answer", pb.AnswerRequest(call_id=big, request_id=big).SerializeToString()),
            _call(call, bridge=big, command="mock:echo"),
            _call(call, bridge="mock", command="mock:" + big),
            _call(call, bridge="mock", command="mock:echo", call_id=big, args_json="{}"),
        ])
    elif kind in ("deep-json", "nan", "surrogate"):
        depth = rng.randrange(101, 30_000)
        text = {"deep-json": '{"x": ' + "[" * depth + "]" * depth + "}",
                "nan": rng.choice(['{"x": NaN}', '{"x": [Infinity]}', '{"x": -Infinity}']),
                "surrogate": rng.choice(['{"x": "\\ud800"}', '{"\\udfff": 1}', '["\\uDBFF"]'])}[kind]
        method, data = rng.choice([
            _call(call, bridge="mock", command="mock:echo", args_json=text),
            ("CreateResource", pb.CreateResourceRequest(bridge="mock", type="counter",
                                                        config_json=text).SerializeToString()),
            ("ExecuteResource", pb.ExecuteResourceRequest(resource_id="nope", inputs_json=text).SerializeToString()),
            _call("Call", command="create_program", args_json=text),  # a DSPex legacy command
        ])
    elif kind == "unknown-name":
        method, data = rng.choice([
            _call(call, bridge="mock", command=rng.choice(["mock:nope", "nope", "mock:", ":", "common:nope"])),
            _call(call, bridge=rng.choice(["nope", "../mock", "MOCK", "\x00"]), command="mock:echo"),
            ("DescribeBridge", pb.DescribeBridgeRequest(bridge="nope").SerializeToString()),
            ("CreateResource", pb.CreateResourceRequest(bridge="mock", type="nope").SerializeToString()),
            ("ListResources", pb.ListResourcesRequest(bridge="nope", type="\x7f").SerializeToString()),
        ])
    elif kind == "over-quota":
        method, data = _call(call, bridge="mock", command="mock:echo",
                             args_json=json.dumps({"pad": "x" * rng.randrange(QUOTA_PAYLOAD_BYTES,
                                                                              MAX_MESSAGE_BYTES - 1024)}))
    elif kind == "over-message-cap":
        method, data = _call(call, bridge="mock", command="mock:echo",
                             args_json=json.dumps({"pad": "x" * (MAX_MESSAGE_BYTES + rng.randrange(1, 4096))}))
    elif kind == "unknown-call":
        method, data = rng.choice([
            ("Cancel", pb.CancelRequest(call_id=f"nope-{rng.randrange(10**9)}").SerializeToString()),
            ("Answer", pb.AnswerRequest(call_id=f"nope-{rng.randrange(10**9)}", request_id="r",
                                        result_json="{}", error="e").SerializeToString()),
            ("ExecuteResource", pb.ExecuteResourceRequest(resource_id="nope").SerializeToString()),
            ("DeleteResource", pb.DeleteResourceRequest(resource_id="nope").SerializeToString()),
        ])
    elif kind == "odd-stats":
        method, data = "GetStats", pb.GetStatsRequest(
            usage_tenant=rng.choice(["", "nope", "x" * 1000]),
            usage_since_unix_ms=rng.choice([-(2 ** 63), -1, 2 ** 63 - 1, 1])).SerializeToString()
    else:
        method, data = _call(call, bridge="mock", command="mock:echo", args_json='{"ok": true}')
    return kind, method, data, md


def raw(channel: grpc.Channel, method: str) -> Callable[..., Any]:
    """``method`` of the public service on ``channel``, taking the request as bytes."""
    make = channel.unary_stream if method in STREAMING else channel.unary_unary
    return make(f"/{SERVICE.full_name}/{method}", request_serializer=None, response_deserializer=None)


#: The first status message seen for each (kind, code), for the report.
FIRST: dict[tuple[str, str], str] = {}


def send(channel: grpc.Channel, method: str, data: bytes, md: tuple[tuple[str, str], ...], kind: str = "") -> str:
    call = raw(channel, method)
    try:
        if method in STREAMING:
            for _ in call(data, metadata=md, timeout=30):
                pass
        else:
            call(data, metadata=md, timeout=30)
    except grpc.RpcError as err:
        FIRST.setdefault((kind, err.code().name), f"{method}: {(err.details() or '')[:200]}")
        return str(err.code().name)
    return "OK"


def flood(address: str, requests: list[Hostile]) -> tuple[Counter[tuple[str, str]], float]:
    """Send ``requests`` from :data:`THREADS` threads over :data:`CHANNELS` channels; (kind, code) counts."""
    channels = [grpc.insecure_channel(address) for _ in range(CHANNELS)]
    counts: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()
    failures: list[BaseException] = []

    def work(i: int) -> None:
        mine: Counter[tuple[str, str]] = Counter()
        try:
            for kind, method, data, md in requests[i::THREADS]:
                mine[(kind, send(channels[i % CHANNELS], method, data, md, kind))] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)
        with lock:
            counts.update(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    took = time.monotonic() - started
    for c in channels:
        c.close()
    assert not failures, failures
    return counts, took


def echo_ok(address: str) -> None:
    with grpc.insecure_channel(address) as ch:
        reply = ch.unary_unary(f"/{SERVICE.full_name}/Call", request_serializer=pb.CallRequest.SerializeToString,
                               response_deserializer=pb.CallReply.FromString)(
            pb.CallRequest(bridge="mock", command="mock:echo", args_json='{"still":"serving"}'), metadata=GOOD,
            timeout=30)
        assert json.loads(reply.result_json) == {"still": "serving"}


def _table(counts: Counter[tuple[str, str]]) -> str:
    codes = sorted({c for _, c in counts})
    kinds = sorted({k for k, _ in counts})
    width = max(len(k) for k in kinds) + 2
    rows = ["".ljust(width) + "".join(c.rjust(20) for c in codes) + "total".rjust(8)]
    for k in kinds:
        rows.append(k.ljust(width) + "".join(str(counts.get((k, c), "")).rjust(20) for c in codes)
                    + str(sum(counts.get((k, c), 0) for c in codes)).rjust(8))
    rows.append("all".ljust(width) + "".join(str(sum(counts.get((k, c), 0) for k in kinds)).rjust(20)
                                             for c in codes) + str(sum(counts.values())).rjust(8))
    return "\n".join(rows)


def test_a_flood_of_hostile_requests_gets_clean_codes_a_quiet_log_and_bounded_memory(server: Server) -> None:
    echo_ok(server.address)
    rng = random.Random(20240607)
    started = time.monotonic()
    flood(server.address, [hostile(rng) for _ in range(WARMUP)])
    time.sleep(1.0)
    rss_before = server.rss_kib()

    requests = [hostile(rng) for _ in range(REQUESTS)]
    counts, took = flood(server.address, requests)
    print(f"\n{REQUESTS} hostile requests in {took:.1f} s ({REQUESTS / took:.0f}/s) from {THREADS} threads:\n"
          + _table(counts))

    bad = {(k, c): n for (k, c), n in counts.items() if c in ("INTERNAL", "UNKNOWN")
           or (c == "RESOURCE_EXHAUSTED" and k not in TOO_BIG)}
    assert not bad, f"unclean codes: {bad}; " + "; ".join(f"{k}: {FIRST.get(k)}" for k in bad)
    assert counts[("bad-token", "UNAUTHENTICATED")] == sum(n for (k, _), n in counts.items() if k == "bad-token")
    assert counts[("over-message-cap", "RESOURCE_EXHAUSTED")] == \
        sum(n for (k, _), n in counts.items() if k == "over-message-cap")
    assert counts[("echo", "OK")] == sum(n for (k, _), n in counts.items() if k == "echo")
    echo_ok(server.address)

    time.sleep(SETTLE_S)
    rss_after = server.rss_kib()
    growth = (rss_after - rss_before) / 1024
    print(f"orchestrator RSS: {rss_before / 1024:.1f} MiB after {WARMUP} warm-up requests, "
          f"{rss_after / 1024:.1f} MiB after the flood and {SETTLE_S:.0f} s ({growth:+.1f} MiB; bound "
          f"+{RSS_BOUND_MIB} MiB)")
    assert growth <= RSS_BOUND_MIB

    elapsed = time.monotonic() - started
    lines = server.log.read_text(errors="replace").splitlines()
    refused = [ln for ln in lines if "did not parse" in ln]
    windows = math.ceil(elapsed / REFUSED_LOG_EVERY_S) + 1
    print(f"log: {len(lines)} lines in all, {len(refused)} about requests that did not parse in {elapsed:.0f} s "
          f"(at most {windows}):\n" + "\n".join(refused))
    assert refused, "no log line about requests that did not parse"
    assert len(refused) <= windows
    errors = [ln for ln in lines if " ERROR " in ln or "Traceback" in ln or " CRITICAL " in ln]
    assert not errors, "\n".join(errors[:20])
    assert len(lines) < 200, "the log grows with hostile requests:\n" + "\n".join(lines[-50:])


def test_the_server_logs_no_line_per_bad_token(server: Server) -> None:
    """Bad tokens are counted (metrics, audit), not logged one line each."""
    before = len(server.log.read_text(errors="replace").splitlines())
    with grpc.insecure_channel(server.address) as ch:
        for i in range(200):
            assert send(ch, "ListBridges", b"", (("authorization", f"Bearer nope-{i}"),)) == "UNAUTHENTICATED"
    after = len(server.log.read_text(errors="replace").splitlines())
    assert after - before <= 2



def test_refusals_are_logged_once_per_window(caplog: pytest.LogCaptureFixture) -> None:
    import re

    from orchestrator.api.decode import RefusalLog

    now = [100.0]
    refused = RefusalLog(every_s=10, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="mlbridge.api"):
        for _ in range(1000):  # 25 s of refusals; no running loop here, so no timer: the next refusal logs
            refused.note("/m/Call", "why")
            now[0] += 0.025
        refused.flush()  # what the timer does at the end of a window
        refused.flush()  # nothing new: no line
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines  # at 0 s, 10 s, 20 s and the flush at 25 s
    assert lines[0].startswith("refused a request that did not parse (/m/Call: why)")
    counted = [int(m) for line in lines[1:] for m in re.findall(r"refused (\d+) request", line)]
    assert 1 + sum(counted) == 1000 and "1000 in all" in lines[-1]
