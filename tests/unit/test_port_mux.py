"""``mlbridge port --protocol mux`` as a subprocess against a real orchestrator (process backend)."""

from __future__ import annotations

import json
import os
import signal
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import MLBridge
from orchestrator.port.mux import decode, encode
from tests.harness import PortChild, ServerThread, make_config

WAIT_S = 60


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    bridges = {"mock": {"runtime": "mock", "pool_size": 1, "max_workers": 4}}
    with ServerThread(make_config(tmp_path_factory.mktemp("mux"), bridges)) as s:
        yield s


def frame(header: dict[str, Any], attachments: dict[str, bytes] | None = None) -> bytes:
    body = b"".join(encode(header, attachments))
    return struct.pack(">I", len(body)) + body


class Mux(PortChild):
    """A mux port subprocess; each frame decoded into its header and attachments."""

    WAIT_S = WAIT_S

    def __init__(self, address: str, stderr_path: Path, *extra: str) -> None:
        super().__init__(address, stderr_path, "--protocol", "mux", *extra, decode=decode)
        self.hello = self.next()

    def send(self, header: dict[str, Any], attachments: dict[str, bytes] | None = None) -> None:
        self.send_raw(frame(header, attachments))

    def next(self) -> dict[str, Any]:
        """The next frame's header, with its attachments under ``_blobs``."""
        header, attachments = super().next()
        if attachments:
            header["_blobs"] = attachments
        return dict(header)

    def request(self, header: dict[str, Any], attachments: dict[str, bytes] | None = None) -> dict[str, Any]:
        """Send one request and return its final frame (nothing else may be in flight)."""
        self.send(header, attachments)
        got = self.next()
        assert got["id"] == header.get("id") and "ok" in got, got
        return got

    def ok(self, header: dict[str, Any], attachments: dict[str, bytes] | None = None) -> Any:
        got = self.request(header, attachments)
        assert got["ok"] is True, got
        return got["result"]


@pytest.fixture()
def mux(srv: ServerThread, tmp_path: Path) -> Iterator[Mux]:
    m = Mux(srv.target, tmp_path / "mux.stderr")
    try:
        yield m
    finally:
        m.kill()


def test_hello_names_the_protocol(mux: Mux) -> None:
    assert mux.hello["hello"]["protocol"] == "mlbridge-mux" and mux.hello["hello"]["version"] == 1
    assert mux.hello["hello"]["max_frame_bytes"] == 16 * 1024 * 1024
    assert mux.finish() == 0


def test_every_operation(mux: Mux) -> None:
    assert {b["name"] for b in mux.ok({"id": 1, "op": "list_bridges"})} == {"mock"}
    described = mux.ok({"id": 2, "op": "describe", "bridge": "mock"})
    assert "mock:echo" in {c["name"] for c in described["commands"]}
    echoed = mux.request({"id": 3, "op": "call", "bridge": "mock", "command": "mock:echo", "args": {"x": [1, "é"]}})
    assert echoed["result"] == {"x": [1, "é"]} and echoed["call_id"]
    rid = mux.ok({"id": 4, "op": "create_resource", "bridge": "mock", "type": "counter", "config": {"start": 5},
                  "resource_id": "c1"})
    assert rid == {"resource_id": "c1"}
    assert mux.ok({"id": 5, "op": "execute_resource", "resource_id": "c1", "inputs": {"add": 2}}) == {"value": 7}
    listed = mux.ok({"id": 6, "op": "list_resources", "bridge": "mock"})
    assert [(r["resource_id"], r["type"]) for r in listed] == [("c1", "counter")]
    assert mux.ok({"id": 7, "op": "stats"})["calls_total"] >= 2
    assert mux.ok({"id": 8, "op": "delete_resource", "resource_id": "c1"}) == {"deleted": True}
    missing = mux.request({"id": 9, "op": "execute_resource", "resource_id": "c1", "inputs": {}})
    assert missing["ok"] is False and missing["error"]["code"] == "NOT_FOUND"
    assert not missing["error"]["message"].startswith("NOT_FOUND:")  # the code travels beside the message
    assert mux.finish() == 0


def test_binary_attachments_travel_raw_both_ways(mux: Mux) -> None:
    blob = bytes(range(256)) * 64 + b"\xff\xfe\x00"
    got = mux.request({"id": "a", "op": "call", "bridge": "mock", "command": "mock:attach"},
                      {"bin": blob, "empty": b""})
    assert got["ok"] is True and got["result"] == {"sizes": {"bin": len(blob), "empty": 0}}
    assert got["attachments"] == [["bin", len(blob)], ["empty", 0]] or sorted(got["attachments"]) == [
        ["bin", len(blob)], ["empty", 0]]
    assert got["_blobs"]["bin"] == blob[::-1]
    assert mux.finish() == 0


def test_concurrent_requests_are_matched_by_id(mux: Mux) -> None:
    mux.send({"id": 0, "op": "call", "bridge": "mock", "command": "mock:sleep", "args": {"seconds": 1.0}})
    for i in range(1, 41):
        mux.send({"id": i, "op": "call", "bridge": "mock", "command": "mock:echo", "args": {"i": i}})
    finals = [mux.next() for _ in range(41)]
    assert finals[-1]["id"] == 0  # the sleep did not hold the others back
    assert all(f["ok"] and (f["id"] == 0 or f["result"] == {"i": f["id"]}) for f in finals)
    assert sorted(f["id"] for f in finals) == list(range(41))
    assert mux.finish() == 0


def test_stream_events_then_the_final_result(mux: Mux) -> None:
    mux.send({"id": 1, "op": "stream", "bridge": "mock", "command": "mock:stream", "args": {"n": 3}})
    frames = [mux.next() for _ in range(7)]
    assert [f.get("event") for f in frames[:6]] == ["progress", "chunk"] * 3
    assert [f["data"]["token"] for f in frames[:6] if f.get("event") == "chunk"] == ["t0", "t1", "t2"]
    assert frames[0]["step"] == 1 and frames[0]["total"] == 3
    assert frames[6]["ok"] is True and frames[6]["result"] == {"count": 3}
    assert len({f["call_id"] for f in frames}) == 1
    # A resource streams too.
    mux.ok({"id": 2, "op": "create_resource", "bridge": "mock", "type": "ticker", "config": {},
            "resource_id": "tk"})
    mux.send({"id": 3, "op": "stream", "resource_id": "tk", "inputs": {"n": 2}})
    frames = []
    while "ok" not in (f := mux.next()):
        frames.append(f)
    assert f["ok"] is True and [x["event"] for x in frames].count("chunk") == 2
    assert mux.finish() == 0


def test_cancel_by_target_and_by_call_id(mux: Mux) -> None:
    mux.send({"id": 1, "op": "call", "bridge": "mock", "command": "mock:sleep", "args": {"seconds": 30}})
    mux.send({"id": 2, "op": "stream", "bridge": "mock", "command": "mock:stream", "args": {"n": 1000, "delay": 0.05},
              "call_id": "my-stream"})
    assert mux.next()["id"] == 2  # the stream is running
    started = time.monotonic()
    mux.send({"id": 3, "op": "cancel", "target": 1})
    mux.send({"id": 4, "op": "cancel", "call_id": "my-stream"})
    finals: dict[Any, dict[str, Any]] = {}
    while len(finals) < 4:
        f = mux.next()
        if "ok" in f:
            finals[f["id"]] = f
    assert finals[3]["result"] == {"found": True} and finals[4]["result"] == {"found": True}
    assert finals[1]["error"]["code"] == "CANCELLED" and finals[2]["error"]["code"] == "CANCELLED"
    assert time.monotonic() - started < 10
    assert mux.ok({"id": 5, "op": "cancel", "target": 1}) == {"found": False}  # no longer in flight
    assert mux.finish() == 0


def test_client_requests_are_answered_through_the_answer_op(mux: Mux) -> None:
    mux.send({"id": "s", "op": "stream", "bridge": "mock", "command": "mock:ask", "args": {"questions": ["a", "b"]}})
    answered = 0
    while True:
        f = mux.next()
        if f.get("event") == "request":
            assert f["kind"] == "question" and f["data"]["question"] in ("a", "b")
            # answered from a fresh id while the stream still runs
            mux.send({"id": f"ans-{answered}", "op": "answer", "target": "s", "request_id": f["request_id"],
                      "result": f["data"]["question"].upper()})
            answered += 1
        elif f["id"] == "s" and "ok" in f:
            assert f["ok"] is True and f["result"] == {"answers": ["A", "B"]}
            break
        elif "ok" in f:
            assert f["result"] == {"found": True}
    assert answered == 2
    assert mux.finish() == 0


def test_bad_frames_get_errors_and_the_port_goes_on(mux: Mux) -> None:
    def raw(body: bytes) -> None:
        mux.send_raw(struct.pack(">I", len(body)) + body)

    raw(b"\x00\x00")  # shorter than a header length
    assert mux.next()["error"]["code"] == "INVALID_ARGUMENT"
    raw(struct.pack(">I", 100) + b"{}")  # header length past the end
    assert mux.next()["error"]["code"] == "INVALID_ARGUMENT"
    raw(struct.pack(">I", 2) + b"[]")
    assert "must be a JSON object" in mux.next()["error"]["message"]
    head = json.dumps({"id": 7, "op": "call", "attachments": [["a", 5]]}).encode()
    raw(struct.pack(">I", len(head)) + head + b"abc")  # sizes do not add up
    bad = mux.next()
    assert bad["id"] == 7 and "add up to 5 bytes but 3 bytes follow" in bad["error"]["message"]
    assert mux.request({"op": "call"})["id"] is None
    unknown_op = mux.request({"id": 8, "op": "fly"})
    assert unknown_op["error"]["code"] == "INVALID_ARGUMENT" and "unknown op 'fly'" in unknown_op["error"]["message"]
    no_command = mux.request({"id": 9, "op": "call", "bridge": "mock"})
    assert "'command' is required" in no_command["error"]["message"]
    bad_args = mux.request({"id": 10, "op": "call", "bridge": "mock", "command": "mock:echo", "args": [1]})
    assert "'args' must be a JSON object" in bad_args["error"]["message"]
    bad_timeout = mux.request({"id": 11, "op": "call", "bridge": "mock", "command": "mock:echo", "timeout_s": -1})
    assert "'timeout_s' must be a positive number" in bad_timeout["error"]["message"]
    unknown = mux.request({"id": 12, "op": "call", "bridge": "mock", "command": "mock:nope"})
    assert unknown["error"]["code"] == "UNKNOWN_COMMAND"
    late = mux.request({"id": 13, "op": "call", "bridge": "mock", "command": "mock:sleep", "args": {"seconds": 5},
                        "timeout_s": 0.3})
    assert late["error"]["code"] == "DEADLINE_EXCEEDED"
    assert mux.ok({"id": 14, "op": "call", "bridge": "mock", "command": "mock:echo", "args": {}}) == {}
    assert mux.finish() == 0


def test_an_id_in_flight_cannot_be_reused(mux: Mux) -> None:
    mux.send({"id": 1, "op": "call", "bridge": "mock", "command": "mock:sleep", "args": {"seconds": 1}})
    mux.send({"id": 1, "op": "call", "bridge": "mock", "command": "mock:echo", "args": {}})
    dup = mux.next()
    assert dup["id"] == 1 and dup["error"]["code"] == "ALREADY_EXISTS"
    assert mux.next()["ok"] is True  # the first one
    assert mux.ok({"id": 1, "op": "call", "bridge": "mock", "command": "mock:echo", "args": {"again": 1}}) == {
        "again": 1}
    assert mux.finish() == 0


def test_oversized_frame_is_answered_for_its_id_and_skipped(srv: ServerThread, tmp_path: Path) -> None:
    m = Mux(srv.target, tmp_path / "err", "--max-frame-bytes", "4096")
    try:
        m.send({"id": "big", "op": "call", "bridge": "mock", "command": "mock:attach"}, {"a": b"\x00" * 10_000})
        got = m.next()
        assert got["id"] == "big" and got["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert got["error"]["details"] == {"max_frame_bytes": 4096}
        assert m.ok({"id": 2, "op": "call", "bridge": "mock", "command": "mock:echo", "args": {"n": 2}}) == {"n": 2}
        assert m.finish() == 0
    finally:
        m.kill()


def test_end_of_input_cancels_the_calls_in_flight(srv: ServerThread, mux: Mux) -> None:
    with MLBridge.connect(srv.target) as mb:
        mux.send({"id": 1, "op": "call", "bridge": "mock", "command": "mock:sleep", "args": {"seconds": 60}})
        deadline = time.monotonic() + WAIT_S
        while mb.stats()["in_flight"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        assert mux.finish() == 0
        assert time.monotonic() - started < 10  # not the 60 s of the sleep
        assert mb.stats()["in_flight"] == 0


def test_a_killed_port_leaves_the_orchestrator_serving(srv: ServerThread, tmp_path: Path) -> None:
    m = Mux(srv.target, tmp_path / "err")
    m.send({"id": 1, "op": "call", "bridge": "mock", "command": "mock:sleep", "args": {"seconds": 0.5}})
    os.kill(m.proc.pid, signal.SIGKILL)
    m.kill()
    again = Mux(srv.target, tmp_path / "err2")
    try:
        assert again.ok({"id": 1, "op": "call", "bridge": "mock", "command": "mock:echo", "args": {"k": 1}}) == {"k": 1}
        assert again.finish() == 0
    finally:
        again.kill()
