"""``mlbridge port`` as a subprocess, fed real DSPex frames, against a real server.

Every frame is written as DSPex's Elixir side wrote it: ``struct.pack(">I",
len(body)) + body``; every reply is read back the same way, and a reader
thread fails the test if stdout ever carries anything that is not a frame.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy as _dspy_required  # noqa: F401  (a hard requirement: missing setup fails, never skips)
import pytest

from orchestrator.compat.dspex import API_KEY_SECRET  # noqa: E402
from tests.harness import PortChild, ServerThread  # noqa: E402
from tests.unit.test_dspex_compat import BACKENDS, KEY, QA, TENANT, make_server  # noqa: E402

WAIT_S = 90


@pytest.fixture(scope="module", params=BACKENDS)
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    mock = {"mock": {"runtime": "mock", "pool_size": 1}}
    with make_server(tmp_path_factory.mktemp("port"), request.param, extra_bridges=mock) as s:
        yield s


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def request(rid: Any, command: str, args: dict[str, Any] | None = None) -> bytes:
    return frame(json.dumps({"id": rid, "command": command, "args": args or {}}).encode())


def _reply(body: bytes) -> dict[str, Any]:
    reply = json.loads(body)
    if not (isinstance(reply, dict) and {"id", "success", "timestamp"} <= set(reply)):
        raise ValueError(f"not a DSPex reply: {reply!r}")
    return reply


class PortProcess(PortChild):
    """``mlbridge port`` (DSPex's protocol), each frame read strictly as a DSPex reply."""

    WAIT_S = WAIT_S

    def __init__(self, address: str, stderr_path: Path, *extra: str) -> None:
        super().__init__(address, stderr_path, *extra, decode=_reply)

    def send(self, data: bytes) -> None:
        self.send_raw(data)

    def reply(self) -> dict[str, Any]:
        got: dict[str, Any] = self.next()
        return got

    def call(self, rid: Any, command: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        self.send(request(rid, command, args))
        got = self.reply()
        assert got["id"] == rid, got
        return got

    def ok(self, rid: Any, command: str, args: dict[str, Any] | None = None, *, legacy: bool = True) -> Any:
        got = self.call(rid, command, args)
        assert got["success"] is True, got
        if legacy:
            assert got["deprecated"].startswith(f"{command} is deprecated; use "), got
        else:
            assert "deprecated" not in got
        return got["result"]


@pytest.fixture()
def port(srv: ServerThread, tmp_path: Path) -> Iterator[PortProcess]:
    p = PortProcess(srv.target, tmp_path / "port.stderr")
    try:
        yield p
    finally:
        p.kill()


def test_dspex_script_over_the_port(srv: ServerThread, port: PortProcess) -> None:
    port.ok(1, "reset_state")
    pong = port.ok(2, "ping")
    assert pong["status"] == "ok" and pong["dspy_available"] is True
    cfg = port.ok(3, "configure_lm", {"model": "dummy", "provider": "dummy", "api_key": KEY, "temperature": 0.2,
                                      "answers": [{"answer": "4"}, {"answer": "Paris"}]})
    assert cfg == {"status": "configured", "model": "dummy", "provider": "dummy", "temperature": 0.2}
    created = port.ok(4, "create_program", {"id": "port-qa", "signature": QA, "program_type": "predict"})
    assert created == {"program_id": "port-qa", "status": "created", "signature": QA, "program_type": "predict"}
    out = port.ok(5, "execute_program", {"program_id": "port-qa", "inputs": {"question": "2+2?"}})
    assert out["program_id"] == "port-qa" and out["outputs"] == {"answer": "4"}
    listed = port.ok(6, "list_programs")
    assert listed["total_count"] == 1 and listed["programs"][0]["id"] == "port-qa"
    assert listed["programs"][0]["execution_count"] == 1
    info = port.ok("seven", "get_program_info", {"program_id": "port-qa"})  # string ids work too
    assert info["signature"] == QA and info["execution_count"] == 1
    stats = port.ok(8, "get_stats")
    assert stats["programs_count"] == 1 and stats["command_count"] == 7
    assert stats["dspy"]["default_lm"]["api_key_secret"] == API_KEY_SECRET
    # Namespaced commands go through as they are, without a deprecation.
    assert port.ok(9, "dspy:stats", legacy=False)["executions"] >= 1
    assert port.ok(10, "common:ping", legacy=False)["pong"] is True
    assert port.ok(11, "mock:echo", {"x": [1, 2]}, legacy=False) == {"x": [1, 2]}
    assert port.ok(12, "delete_program", {"program_id": "port-qa"}) == {"program_id": "port-qa",
                                                                          "status": "deleted"}
    missing = port.call(13, "get_program_info", {"program_id": "port-qa"})
    assert missing["success"] is False and missing["error_code"] == "NOT_FOUND" and "port-qa" in missing["error"]
    reset = port.ok(14, "reset_state")
    assert reset["status"] == "reset" and reset["commands_reset"] == 10 and reset["errors_reset"] == 1
    assert port.finish() == 0
    texts = [json.dumps(x) for x in (pong, cfg, created, out, listed, info, stats)] + [port.stderr()]
    assert not [t for t in texts if KEY in t]
    for rec in srv.orch.registry.list(TENANT):
        assert KEY not in rec.config + rec.info
    assert "configure_lm is deprecated" in port.stderr()  # the operator sees the deprecation once


def test_dspex_pool_worker_sessions_and_shutdown(srv: ServerThread, tmp_path: Path) -> None:
    """DSPex's pool workers: --mode pool-worker --worker-id, programs per session, session data, shutdown."""
    p = PortProcess(srv.target, tmp_path / "err", "--mode", "pool-worker", "--worker-id", "w1")
    try:
        p.ok(1, "reset_state")
        pong = p.ok(2, "ping")
        assert pong["worker_id"] == "w1" and pong["mode"] == "pool-worker" and pong["mlbridge_worker_id"]
        p.ok(3, "configure_lm", {"model": "dummy", "provider": "dummy", "answers": [{"answer": "4"}] * 3})
        for session in ("s1", "s2"):  # the same program id in two sessions
            made = p.ok(f"c-{session}", "create_program", {"id": "qa", "signature": QA, "session_id": session})
            assert made["program_id"] == "qa"
        dup = p.call(4, "create_program", {"id": "qa", "signature": QA, "session_id": "s1"})
        assert dup["error_code"] == "ALREADY_EXISTS" and dup["error"] == "Program with ID 'qa' already exists in session s1"
        out = p.ok(5, "execute_program", {"program_id": "qa", "session_id": "s1", "inputs": {"question": "2+2?"}})
        assert out["program_id"] == "qa" and out["outputs"] == {"answer": "4"}
        s1 = p.ok(6, "list_programs", {"session_id": "s1"})
        assert s1["total_count"] == 1 and s1["programs"][0] | {"created_at": 0} == {
            "id": "qa", "session_id": "s1", "execution_count": 1, "signature": QA, "created_at": 0,
            "last_executed": s1["programs"][0]["last_executed"]}
        assert {(x["session_id"], x["id"]) for x in p.ok(7, "list_programs")["programs"]} == {("s1", "qa"), ("s2", "qa")}
        assert p.ok(8, "get_program_info", {"program_id": "qa", "session_id": "s2"})["execution_count"] == 0
        missing = p.call(9, "execute_program", {"program_id": "nope", "session_id": "s1", "inputs": {}})
        assert missing["error_code"] == "NOT_FOUND" and missing["error"] == "Program not found in session s1: nope"
        missing = p.call(10, "get_program_info", {"program_id": "nope"})
        assert missing["error"] == "Program not found: nope"
        unknown = p.call(11, "no_such_command")
        assert unknown["error_code"] == "UNKNOWN_COMMAND" and unknown["error"].startswith("Unknown command: no_such_command")
        # Session data: merged per session, a null removes a key, kept apart from other sessions.
        assert p.ok(12, "update_session_data", {"session_id": "s1", "data": {"user": "ada", "turns": 1}}) == {
            "status": "updated", "session_id": "s1", "keys": ["turns", "user"]}
        p.ok(13, "update_session_data", {"session_id": "s1", "data": {"turns": 2, "user": None}})
        assert p.ok(14, "get_session_data", {"session_id": "s1"}) == {"session_id": "s1", "data": {"turns": 2}}
        assert p.ok(15, "get_session_data", {"session_id": "s1", "key": "turns"})["value"] == 2
        assert p.call(16, "get_session_data", {"session_id": "s2"})["error"] == "Session not found: s2"
        bad = p.call(17, "update_session_data", {"session_id": "s1", "data": [1]})
        assert bad["error_code"] == "INVALID_ARGUMENT"
        # cleanup_session takes the session's programs and data, and nothing of another session's.
        assert p.ok(18, "cleanup_session", {"session_id": "s1"}) == {"status": "cleaned", "session_id": "s1",
                                                                     "programs_removed": 1}
        assert p.ok(19, "cleanup_session", {"session_id": "s1"}) == {"status": "not_found", "session_id": "s1"}
        assert p.call(20, "get_session_data", {"session_id": "s1"})["error_code"] == "NOT_FOUND"
        assert [x["session_id"] for x in p.ok(21, "list_programs")["programs"]] == ["s2"]
        # shutdown: cleans the sessions this port used (s2 still has its program), answers last, exits 0.
        p.send(request(22, "mock:sleep", {"seconds": 0.5}) + request(23, "shutdown") + request(24, "ping"))
        first, last = p.reply(), p.reply()
        assert first["id"] == 22 and first["success"] is True
        assert last["id"] == 23 and last["result"] == {"status": "shutting_down", "worker_id": "w1",
                                                       "mode": "pool-worker", "sessions_cleaned": 1}
        assert p.finish(close_stdin=False) == 0  # exits by itself; the ping after shutdown is not read
        assert p.rest() == []
        assert not [r for r in srv.orch.registry.list(TENANT) if r.type == "program"]
    finally:
        p.kill()


def test_malformed_frames_get_error_replies_and_the_port_goes_on(port: PortProcess) -> None:
    cases: list[tuple[bytes, Any, str]] = [
        (frame(b'{"id": 1, "command": "ping", '), None, "not UTF-8 JSON"),
        (frame(b"\xff\xfe{}"), None, "not UTF-8 JSON"),
        (frame(b"[1, 2, 3]"), None, "must be a JSON object"),
        (frame(b'"ping"'), None, "must be a JSON object"),
        (frame(b'{"command": "ping"}'), None, "needs an 'id'"),
        (frame(b'{"id": [1], "command": "ping"}'), None, "needs an 'id'"),
        (frame(b'{"id": 21}'), 21, "needs a 'command'"),
        (frame(b'{"id": 22, "command": ""}'), 22, "needs a 'command'"),
        (frame(b'{"id": 23, "command": "ping", "args": [1]}'), 23, "'args' must be a JSON object"),
        (frame(b""), None, "not UTF-8 JSON"),
    ]
    for data, rid, needle in cases:
        port.send(data)
        got = port.reply()
        assert got["id"] == rid and got["success"] is False and got["error_code"] == "INVALID_ARGUMENT", got
        assert needle in got["error"], got
    unknown = port.call(30, "no_such_command")
    assert unknown["success"] is False and unknown["error_code"] == "UNKNOWN_COMMAND"
    unknown_ns = port.call(31, "dspy:no_such_op")
    assert unknown_ns["success"] is False and unknown_ns["error_code"] == "UNKNOWN_COMMAND"
    assert port.ok(32, "ping")["status"] == "ok"  # still serving
    assert port.finish() == 0


def test_requests_run_concurrently_and_replies_match_by_id(port: PortProcess) -> None:
    port.send(request(1, "mock:sleep", {"seconds": 1.5}) + request(2, "mock:echo", {"n": 2})
              + request(3, "ping"))
    started = time.monotonic()
    first, second, third = port.reply(), port.reply(), port.reply()
    assert {first["id"], second["id"]} == {2, 3}  # answered while the sleep still runs
    assert third["id"] == 1 and third["success"] is True and time.monotonic() - started < 30
    assert (first if first["id"] == 2 else second)["result"] == {"n": 2}
    assert port.finish() == 0


def test_oversized_frame_gets_an_error_for_its_id_and_the_port_goes_on(port: PortProcess) -> None:
    # The length prefix alone says it is over the cap; its body is skipped, never held, and the port reads on.
    huge = 16 * 1024 * 1024 + 1
    body = b'{"args": {"pad": "' + b"x" * (huge - 64) + b'"}, "command": "mock:echo", '
    body += b'"id": 5}'.rjust(huge - len(body))
    assert len(body) == huge
    port.send(request(1, "mock:sleep", {"seconds": 0.5}) + frame(body) + request(3, "ping"))
    replies = {r["id"]: r for r in (port.reply(), port.reply(), port.reply())}
    assert set(replies) == {1, 3, 5}
    too_big = replies[5]
    assert too_big["success"] is False and too_big["error_code"] == "PAYLOAD_TOO_LARGE"
    assert f"frame of {huge} bytes is over the port's cap of 16777216 bytes" in too_big["error"]
    assert replies[1]["success"] is True and replies[3]["success"] is True
    assert port.finish() == 0


@pytest.mark.parametrize(("body", "rid"), [
    (json.dumps({"id": 2, "command": "mock:echo", "args": {"pad": "x" * 100}}).encode(), 2),  # id first
    (b'{"args": {"pad": "' + b"x" * 100 + b'"}, "command": "mock:echo", "id": "two"}', "two"),  # jiffy's order
    (b'{"args": {"pad": "' + b"x" * 100 + b'"}, "command": "mock:echo"}', None),  # no id to be found
    (b"\xff" * 100, None),
], ids=["id-first", "id-last", "no-id", "not-json"])
def test_max_frame_bytes_is_configurable_and_the_id_is_found(srv: ServerThread, tmp_path: Path, body: bytes,
                                                              rid: Any) -> None:
    p = PortProcess(srv.target, tmp_path / "err", "--max-frame-bytes", "64")
    try:
        assert p.ok(1, "ping")["status"] == "ok"
        p.send(frame(body))
        reply = p.reply()
        assert reply["id"] == rid and reply["error_code"] == "PAYLOAD_TOO_LARGE", reply
        assert "cap of 64 bytes" in reply["error"]
        assert p.ok(3, "ping")["status"] == "ok"  # still serving
        assert p.finish() == 0
    finally:
        p.kill()


def test_oversized_frame_cut_short_by_end_of_input_is_still_answered(port: PortProcess) -> None:
    port.send(struct.pack(">I", 16 * 1024 * 1024 + 1) + b'{"id": 9, "command": "ping"')
    assert port.finish() == 0
    (reply,) = port.rest()
    assert reply["id"] == 9 and reply["error_code"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.parametrize("tail", [b"\x00\x00", struct.pack(">I", 100) + b'{"id": 1, "com'],
                         ids=["cut-header", "cut-body"])
def test_truncated_frame_at_eof_exits_cleanly(port: PortProcess, tail: bytes) -> None:
    assert port.ok(1, "ping")["status"] == "ok"
    port.send(tail)
    assert port.finish() == 0
    assert port.rest() == []
    assert "input ended inside a frame" in port.stderr()


def test_clean_exit_on_eof(port: PortProcess) -> None:
    assert port.finish() == 0
    assert port.rest() == []
    assert "Traceback" not in port.stderr()
