"""The custom-code bridge, exercised through a real runtime process over gRPC.

Each runtime is ``python -m runtimes.core --bridge custom`` on a unix socket
in a temporary directory, with ``MLBRIDGE_SCRATCH`` pointing at a temporary
scratch space the tests can also inspect from the host.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from runtimes.custom import HARD_MAX_OUTPUT_BYTES, CustomSettings
from runtimes.custom.capture import CappedBuffer
from runtimes.wire.proto import runtime_pb2 as pb
from runtimes.wire.proto import runtime_pb2_grpc as pb_grpc

READY_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 60.0


def src(code: str) -> str:
    return textwrap.dedent(code).lstrip("\n")


class Runtime:
    """A runtime subprocess serving the custom bridge, and a stub to call it."""

    def __init__(self, base: Path, env: dict[str, str] | None = None) -> None:
        self.base = base
        self.scratch = base / "scratch"
        self.socket = base / "s.sock"
        self.log_path = base / "runtime.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        full_env = dict(os.environ, MLBRIDGE_SCRATCH=str(self.scratch), MLBRIDGE_LOG_LEVEL="WARNING")
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtimes.core", "--bridge", "custom", "--socket", str(self.socket)],
            env=full_env, stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL,
        )
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        self.stub = pb_grpc.RuntimeStub(self.channel)
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"runtime exited with {self.proc.returncode}: {self.log()}")
            try:
                reply = self.stub.Call(pb.CallRequest(command="common:ping"), timeout=1.0)
                if reply.ok:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"runtime not ready after {READY_TIMEOUT_S}s: {self.log()}")
            time.sleep(0.02)  # poll interval of the wait strategy

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:  # a stuck handler thread keeps it alive
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    # -- calls ------------------------------------------------------------------
    def request(self, command: str, args: Any = None, **fields: Any) -> pb.CallRequest:
        data = b"" if args is None else json.dumps(args).encode()
        return pb.CallRequest(command=command, args_json=data, **fields)

    def call(self, command: str, args: Any = None, **fields: Any) -> pb.CallReply:
        return self.stub.Call(self.request(command, args, **fields), timeout=CALL_TIMEOUT_S)

    def ok(self, command: str, args: Any = None, **fields: Any) -> Any:
        reply = self.call(command, args, **fields)
        assert reply.ok, f"{command} failed: {reply.error.code} {reply.error.message}"
        return json.loads(reply.result_json)

    def err(self, command: str, args: Any = None, **fields: Any) -> tuple[str, str, dict[str, Any]]:
        reply = self.call(command, args, **fields)
        assert not reply.ok, f"{command} unexpectedly succeeded: {reply.result_json[:300]!r}"
        return reply.error.code, reply.error.message, json.loads(reply.error.details_json or b"{}")

    def stream(self, command: str, args: Any = None, **fields: Any) -> list[pb.StreamEvent]:
        return list(self.stub.CallStream(self.request(command, args, **fields), timeout=CALL_TIMEOUT_S))

    def run(self, code: str, inputs: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        return self.ok("custom:run", {"code": src(code), "inputs": inputs or {}, **extra})

    def run_err(self, code: str, inputs: dict[str, Any] | None = None, **extra: Any) -> tuple[str, str, dict[str, Any]]:
        return self.err("custom:run", {"code": src(code), "inputs": inputs or {}, **extra})

    def alive(self) -> bool:
        return self.ok("common:ping", {"x": 1})["pong"] is True


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    runtime = Runtime(tmp_path_factory.mktemp("custom-rt"))
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """A runtime with tiny upload / download limits."""
    runtime = Runtime(tmp_path_factory.mktemp("custom-limited"), env={
        "MLBRIDGE_CUSTOM_MAX_FILE_BYTES": "1000",
        "MLBRIDGE_CUSTOM_MAX_UPLOAD_BYTES": "5000",
        "MLBRIDGE_CUSTOM_MAX_UPLOAD_ENTRIES": "8",
        "MLBRIDGE_CUSTOM_MAX_DOWNLOAD_BYTES": "2000",
    })
    yield runtime
    runtime.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Runtime]:
    """A runtime of its own, for tests that leave a stuck thread or measure memory."""
    runtime = Runtime(tmp_path)
    yield runtime
    runtime.close()


def snapshot(root: Path) -> dict[str, Any]:
    """Every path under root (staging base dir itself excluded) with its content."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel == ".mlbridge-staging":
                continue
            out[rel] = p.read_bytes() if p.is_file() and not p.is_symlink() else ("link" if p.is_symlink() else "dir")
    return out


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:  # type: ignore[call-overload]
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, **attrs: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------------
# describe and settings
# ---------------------------------------------------------------------------------

CUSTOM_COMMANDS = {"run", "register_type", "list_types", "upload", "download", "list_files"}


def test_describe_lists_every_command_with_a_schema(rt: Runtime) -> None:
    info = rt.ok("common:describe")
    cmds = {c["name"]: c for c in info["commands"]}
    assert info["bridge"] == "custom"
    for op in CUSTOM_COMMANDS:
        spec = cmds[f"custom:{op}"]
        assert spec["schema"]["type"] == "object", op
        assert "properties" in spec["schema"], op
        assert spec["description"], op
    assert cmds["custom:run"]["streaming"] is True
    assert cmds["custom:run"]["schema"]["required"] == ["code"]
    assert "module" in {t["name"] for t in info["resource_types"]}
    # The Describe RPC carries the same schemas as JSON bytes.
    reply = rt.stub.Describe(pb.DescribeRequest(), timeout=10)
    rpc = {c.name: json.loads(c.args_schema_json) for c in reply.commands}
    assert {f"custom:{op}" for op in CUSTOM_COMMANDS} <= set(rpc)
    assert rpc["custom:upload"]["properties"]["archive"]["type"] == "string"


def test_settings_from_env_reads_and_validates() -> None:
    s = CustomSettings.from_env({"MLBRIDGE_SCRATCH": "/x", "MLBRIDGE_CUSTOM_MAX_FILE_BYTES": "12"})
    assert (s.scratch, s.max_file_bytes, s.max_output_bytes) == ("/x", 12, 64 * 1024)
    assert CustomSettings.from_env({}).scratch == "/tmp/mlbridge-scratch"
    from runtimes.wire.errors import ConfigError

    with pytest.raises(ConfigError, match="MLBRIDGE_CUSTOM_MAX_UPLOAD_BYTES"):
        CustomSettings.from_env({"MLBRIDGE_CUSTOM_MAX_UPLOAD_BYTES": "lots"})
    with pytest.raises(ConfigError, match="hard maximum"):
        CustomSettings.from_env({"MLBRIDGE_CUSTOM_MAX_OUTPUT_BYTES": str(HARD_MAX_OUTPUT_BYTES + 1)})


def test_bad_setting_stops_the_runtime_with_a_clear_message(tmp_path: Path) -> None:
    env = dict(os.environ, MLBRIDGE_SCRATCH=str(tmp_path / "s"), MLBRIDGE_CUSTOM_MAX_FILE_BYTES="-5")
    proc = subprocess.run(
        [sys.executable, "-m", "runtimes.core", "--bridge", "custom", "--socket", str(tmp_path / "s.sock")],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "MLBRIDGE_CUSTOM_MAX_FILE_BYTES" in proc.stderr


def test_public_names() -> None:
    import runtimes.custom as custom

    assert sorted(custom.__all__) == ["CustomBridge", "CustomSettings", "HARD_MAX_OUTPUT_BYTES"]


# ---------------------------------------------------------------------------------
# custom:run
# ---------------------------------------------------------------------------------

def test_run_returns_result_and_captured_output(rt: Runtime) -> None:
    out = rt.run("""
        import sys
        print("top level")
        def main(inputs):
            print("hello", inputs["name"])
            print("warn", file=sys.stderr)
            return {"double": inputs["x"] * 2, "workdir": WORKDIR}
    """, {"x": 21, "name": "bob"})
    assert out["result"] == {"double": 42, "workdir": os.path.realpath(rt.scratch)}
    assert out["stdout"] == "top level\nhello bob\n"
    assert out["stderr"] == "warn\n"
    assert out["stdout_truncated"] is False and out["stderr_truncated"] is False
    assert isinstance(out["duration_ms"], (int, float)) and out["duration_ms"] >= 0


def test_each_run_gets_a_fresh_namespace(rt: Runtime) -> None:
    first = rt.run("""
        LEAK = 1
        def main(inputs):
            global COUNTER
            COUNTER = 99
            return "LEAK" in globals()
    """)
    second = rt.run("""
        import sys
        def main(inputs):
            live = [m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == "<user-code>"]
            return ["LEAK" in globals(), "COUNTER" in globals(), len(live)]
    """)
    assert first["result"] is True
    assert second["result"] == [False, False, 1]  # earlier runs' modules were released


def test_run_supports_async_main_dataclasses_and_numpy(rt: Runtime) -> None:
    out = rt.run("""
        import asyncio
        from dataclasses import dataclass
        import numpy as np

        @dataclass
        class P:
            x: int

        async def main(inputs):
            await asyncio.sleep(0)
            return [P(3).x, int(np.arange(5).sum())]
    """)
    assert out["result"] == [3, 10]


def test_syntax_error_has_line_and_offset(rt: Runtime) -> None:
    code, msg, details = rt.run_err("""
        def main(inputs):
            return (1 +
    """)
    assert code == "INVALID_ARGUMENT"
    assert details["reason"] == "SYNTAX_ERROR"
    assert details["line"] in (2, 3)
    assert isinstance(details["offset"], int)
    assert msg.startswith("INVALID_ARGUMENT: user-code")  # mlbridge's own errors read CODE: message
    code, _, details = rt.run_err("def main(inputs):\n\treturn 1\n        return 2\n")
    assert details["reason"] == "SYNTAX_ERROR" and details["exception_type"] in ("IndentationError", "TabError")
    assert rt.alive()


def test_exception_traceback_shows_only_user_frames(rt: Runtime) -> None:
    code, msg, details = rt.run_err("""
        import json
        def helper(text):
            return json.loads(text)

        def main(inputs):
            print("before the crash")
            return helper("{not json")
    """)
    assert code == "FRAMEWORK_ERROR"
    assert details["reason"] == "USER_EXCEPTION"
    assert details["exception_type"] == "JSONDecodeError"
    assert details["phase"] == "main"
    tb = details["traceback"]
    assert 'line 7, in main' in tb and 'line 3, in helper' in tb
    assert "return json.loads(text)" in tb
    assert "json/decoder.py" not in tb and "runtimes/" not in tb and "dispatch" not in tb
    assert details["stdout_tail"] == "before the crash\n"
    assert "JSONDecodeError" in msg
    assert rt.alive()


def test_long_traceback_is_capped(rt: Runtime) -> None:
    _, _, details = rt.run_err("""
        def down(n):
            return down(n + 1)
        def main(inputs):
            return down(0)
    """)
    assert details["exception_type"] == "RecursionError"
    assert len(details["traceback"]) <= 8 * 1024 + 100
    assert "frames elided" in details["traceback"]
    assert details["traceback"].rstrip().endswith("maximum recursion depth exceeded")
    assert rt.alive()


def test_top_level_error_and_system_exit_are_user_errors(rt: Runtime) -> None:
    code, _, details = rt.run_err("""
        raise KeyError("at import")
        def main(inputs):
            return 1
    """)
    assert (code, details["phase"], details["exception_type"]) == ("FRAMEWORK_ERROR", "module top level", "KeyError")
    code, _, details = rt.run_err("""
        import sys
        def main(inputs):
            sys.exit(3)
    """)
    assert (code, details["exception_type"]) == ("FRAMEWORK_ERROR", "SystemExit")
    assert rt.alive()


def test_missing_or_bad_main(rt: Runtime) -> None:
    code, msg, details = rt.run_err("def helper(x):\n    return x\n")
    assert (code, details["reason"]) == ("INVALID_ARGUMENT", "NO_MAIN")
    assert "helper" in msg and "should_stop" not in msg
    code, _, details = rt.run_err("main = 42\n")
    assert (code, details["reason"]) == ("INVALID_ARGUMENT", "NO_MAIN")
    assert rt.alive()


def test_non_json_result(rt: Runtime) -> None:
    code, msg, details = rt.run_err("def main(inputs):\n    return {'x': object()}\n")
    assert (code, details["reason"]) == ("INVALID_RESULT", "RESULT_NOT_JSON")
    code, msg, details = rt.run_err("import numpy as np\ndef main(inputs):\n    return np.arange(3)\n")
    assert (code, details["reason"]) == ("INVALID_RESULT", "RESULT_NOT_JSON")
    assert "tolist" in msg
    code, _, details = rt.run_err("def main(inputs):\n    return float('nan')\n")
    assert details["reason"] == "RESULT_NOT_JSON"
    assert rt.alive()


def test_result_over_the_cap(rt: Runtime) -> None:
    code, _, details = rt.run_err("def main(inputs):\n    return 'x' * (5 * 1024 * 1024)\n")
    assert (code, details["reason"]) == ("PAYLOAD_TOO_LARGE", "RESULT_TOO_LARGE")
    assert details["limit"] == 4 * 1024 * 1024
    code, _, details = rt.run_err("def main(inputs):\n    return 'x' * 200\n", max_result_bytes=100)
    assert (details["reason"], details["limit"]) == ("RESULT_TOO_LARGE", 100)
    assert rt.run("def main(inputs):\n    return 'x' * 50\n", max_result_bytes=100)["result"] == "x" * 50
    code, msg, _ = rt.run_err("def main(inputs):\n    return 1\n", max_result_bytes=5 * 1024 * 1024)
    assert code == "INVALID_ARGUMENT" and "max_result_bytes" in msg
    assert rt.alive()


def test_bad_args_are_rejected(rt: Runtime) -> None:
    code, msg, _ = rt.err("custom:run", {"code": "def main(i): pass", "cod": 1})
    assert code == "INVALID_ARGUMENT" and "cod" in msg
    code, _, _ = rt.err("custom:run", {"inputs": {}})
    assert code == "INVALID_ARGUMENT"
    code, msg, _ = rt.err("custom:run", {"code": "def main(i): pass", "max_output_bytes": HARD_MAX_OUTPUT_BYTES + 1})
    assert code == "INVALID_ARGUMENT" and "max_output_bytes" in msg
    code, _, details = rt.err("custom:run", {"code": "x = 1\x00"})
    assert details["reason"] == "SYNTAX_ERROR"


def test_output_caps_are_per_stream_and_configurable(rt: Runtime) -> None:
    out = rt.run("""
        import sys
        def main(inputs):
            print("a" * 100)
            sys.stderr.write("é" * 100)
            return 1
    """, max_output_bytes=10)
    assert out["stdout"] == "a" * 10 and out["stdout_truncated"] is True
    assert out["stdout_dropped_bytes"] == 101 - 10
    assert out["stderr"] == "é" * 5 and out["stderr_truncated"] is True
    assert out["stderr_dropped_bytes"] == 200 - 10
    default = rt.run("def main(inputs):\n    print('y' * 100_000)\n")
    assert len(default["stdout"]) == 64 * 1024 and default["stdout_truncated"] is True


def test_capture_is_per_call_under_concurrency(rt: Runtime) -> None:
    code = src("""
        import time
        def main(inputs):
            for _ in range(40):
                print(inputs["tag"])
                time.sleep(0.002)
            return inputs["tag"]
    """)
    futures = [
        rt.stub.Call.future(rt.request("custom:run", {"code": code, "inputs": {"tag": f"T{i}"}}),
                            timeout=CALL_TIMEOUT_S)
        for i in range(4)
    ]
    for i, fut in enumerate(futures):
        reply = fut.result()
        assert reply.ok, reply.error.message
        out = json.loads(reply.result_json)
        assert out["stdout"] == f"T{i}\n" * 40


def test_fd_level_writes_and_stream_abuse_do_not_break_capture(rt: Runtime) -> None:
    out = rt.run("""
        import io, os, sys
        def main(inputs):
            os.write(1, b"FD-LEVEL-STDOUT\\n")
            os.write(2, b"FD-LEVEL-STDERR\\n")
            sys.stdout.buffer.write(b"via-buffer\\n")
            print("to dunder", file=sys.__stdout__, flush=True)
            fd = sys.stdout.fileno()
            sys.stdout.flush()
            sys.stdout.close()
            print("after close")
            sys.stdout = io.StringIO()  # replaced for good: later calls must recover
            return fd
    """)
    assert out["result"] == 1
    assert out["stdout"] == "via-buffer\nafter close\n"
    later = rt.run("def main(inputs):\n    print('still captured')\n")
    assert later["stdout"] == "still captured\n"
    log = rt.log()
    assert "FD-LEVEL-STDOUT" in log and "FD-LEVEL-STDERR" in log and "to dunder" in log
    assert "still captured" not in log


def test_huge_stdout_keeps_memory_bounded(fresh: Runtime) -> None:
    base = fresh.ok("common:stats")["rss_bytes"]
    req = fresh.request("custom:run", {"code": src("""
        import time
        def main(inputs):
            line = "x" * (1 << 20)
            for i in range(200):
                print(line)
                if i % 10 == 0:
                    time.sleep(0.01)
            with open("/proc/self/statm") as fh:
                import os
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    """)})
    fut = fresh.stub.Call.future(req, timeout=CALL_TIMEOUT_S)
    peak = base
    while not fut.done():
        peak = max(peak, fresh.ok("common:stats")["rss_bytes"])
        time.sleep(0.005)
    reply = fut.result()
    assert reply.ok, reply.error.message
    out = json.loads(reply.result_json)
    assert out["stdout_truncated"] is True
    assert out["stdout_dropped_bytes"] == 200 * ((1 << 20) + 1) - 64 * 1024
    assert len(out["stdout"]) == 64 * 1024
    assert base > 0
    limit = base + 48 * 1024 * 1024  # 200 MB were printed
    assert out["result"] < limit, (base, out["result"])
    assert peak < limit, (base, peak)


# ---------------------------------------------------------------------------------
# progress, streaming, cancellation, deadlines
# ---------------------------------------------------------------------------------

def test_progress_is_streamed(rt: Runtime) -> None:
    events = rt.stream("custom:run", {"code": src("""
        def main(inputs, progress):
            for k in range(3):
                progress(k + 1, 3, f"step {k + 1}")
            return "done"
    """)})
    progress = [(e.progress.step, e.progress.total, e.progress.message) for e in events if e.HasField("progress")]
    assert progress == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
    final = events[-1].final
    assert final.ok and json.loads(final.result_json)["result"] == "done"


def test_generator_main_streams_chunks(rt: Runtime) -> None:
    code = src("""
        def main(inputs):
            for k in range(inputs["n"]):
                print("chunk", k)
                yield {"k": k}
            return "end"
    """)
    events = rt.stream("custom:run", {"code": code, "inputs": {"n": 3}})
    chunks = [json.loads(e.chunk.data_json) for e in events if e.HasField("chunk")]
    assert chunks == [{"k": 0}, {"k": 1}, {"k": 2}]
    final = json.loads(events[-1].final.result_json)
    assert (final["result"], final["chunk_count"], final["stdout"]) == ("end", 3, "chunk 0\nchunk 1\nchunk 2\n")
    unary = rt.ok("custom:run", {"code": code, "inputs": {"n": 2}})
    assert unary["chunks"] == [{"k": 0}, {"k": 1}] and unary["result"] == "end"


def test_bad_chunk_and_mid_stream_error(rt: Runtime) -> None:
    events = rt.stream("custom:run", {"code": src("""
        def main(inputs):
            yield 1
            yield {1, 2}
    """)})
    assert [json.loads(e.chunk.data_json) for e in events if e.HasField("chunk")] == [1]
    final = events[-1].final
    assert not final.ok and json.loads(final.error.details_json)["reason"] == "RESULT_NOT_JSON"
    events = rt.stream("custom:run", {"code": src("""
        def main(inputs):
            yield "a"
            raise RuntimeError("mid stream")
    """)})
    final = events[-1].final
    details = json.loads(final.error.details_json)
    assert final.error.code == "FRAMEWORK_ERROR" and details["exception_type"] == "RuntimeError"
    assert "line 3, in main" in details["traceback"]


def _start_and_cancel(rt: Runtime, code: str) -> tuple[pb.CallReply, float]:
    call_id = unique("cancel")
    fut = rt.stub.Call.future(rt.request("custom:run", {"code": src(code)}, call_id=call_id),
                              timeout=CALL_TIMEOUT_S)
    deadline = time.monotonic() + 10
    while not rt.stub.Cancel(pb.CancelRequest(call_id=call_id), timeout=5).found:
        assert time.monotonic() < deadline, "the call never started"
        assert not fut.done(), fut.result()
        time.sleep(0.01)
    t0 = time.monotonic()
    reply = fut.result()
    return reply, time.monotonic() - t0


def test_cancel_cooperative_loop_via_progress(rt: Runtime) -> None:
    reply, took = _start_and_cancel(rt, """
        import time
        def main(inputs, progress):
            i = 0
            while True:
                i += 1
                progress(i)
                time.sleep(0.005)
    """)
    assert not reply.ok and reply.error.code == "CANCELLED"
    assert took < 0.9, took
    assert json.loads(reply.error.details_json or b"{}").get("handler_stopped", True) is True
    assert rt.alive()


def test_cancel_loop_polling_should_stop(rt: Runtime) -> None:
    reply, took = _start_and_cancel(rt, """
        import time
        def main(inputs):
            while not should_stop():
                time.sleep(0.005)
            return "stopped politely"
    """)
    assert reply.error.code == "CANCELLED" and took < 0.9
    assert "handler_stopped" not in json.loads(reply.error.details_json or b"{}")


def test_cancel_streaming_call(rt: Runtime) -> None:
    call_id = unique("stream-cancel")
    stream = rt.stub.CallStream(rt.request("custom:run", {"code": src("""
        def main(inputs):
            i = 0
            while True:
                i += 1
                yield i
                sleep(0.01)
    """)}, call_id=call_id), timeout=CALL_TIMEOUT_S)
    first = next(stream)
    assert first.HasField("chunk")
    assert rt.stub.Cancel(pb.CancelRequest(call_id=call_id), timeout=5).found
    final = [e for e in stream if e.HasField("final")][-1].final
    assert final.error.code == "CANCELLED"


def test_deadline_stops_cooperative_code(rt: Runtime) -> None:
    t0 = time.monotonic()
    code, _, details = rt.err("custom:run", {"code": src("""
        def main(inputs, progress):
            while True:
                progress.sleep(0.01)
    """)}, deadline_unix_ms=int(time.time() * 1000) + 300)
    assert code == "DEADLINE_EXCEEDED" and "handler_stopped" not in details
    assert time.monotonic() - t0 < 2.0


def test_non_cooperative_loop_reports_handler_not_stopped(fresh: Runtime) -> None:
    t0 = time.monotonic()
    code, _, details = fresh.err("custom:run", {"code": "def main(inputs):\n    while True:\n        pass\n"},
                                 deadline_unix_ms=int(time.time() * 1000) + 300)
    took = time.monotonic() - t0
    assert code == "DEADLINE_EXCEEDED"
    assert details["handler_stopped"] is False
    assert took < 5, took
    assert fresh.ok("common:stats")["stuck_handlers"] == 1


# ---------------------------------------------------------------------------------
# user-defined resource types
# ---------------------------------------------------------------------------------

COUNTER = src("""
    import os

    class Counter:
        \"\"\"Counts; state lives in the worker.\"\"\"

        def create(self, config):
            self.value = config.get("start", 0)
            self.name = config.get("name", "c")
            print("created", self.value)
            return {"value": self.value}

        def execute(self, inputs):
            if inputs.get("fail"):
                raise ValueError("asked to fail")
            self.value += inputs.get("add", 1)
            return {"value": self.value}

        def delete(self):
            with open(os.path.join(WORKDIR, f"deleted-{self.name}"), "w") as fh:
                fh.write(str(self.value))
""")


def test_user_type_lifecycle_keeps_state(rt: Runtime) -> None:
    reg = rt.ok("custom:register_type", {"name": "counter", "code": COUNTER, "class": "Counter"})
    assert reg["name"] == "counter" and reg["streaming"] is False
    rid = unique("ctr")
    created = rt.call("common:create_resource", {"start": 5, "name": rid}, resource_id=rid, resource_type="counter")
    assert created.ok, created.error.message
    assert json.loads(created.result_json)["info"]["value"] == 5
    assert created.metadata["custom.stdout"] == "created 5\n"
    assert rt.ok("common:execute_resource", {"add": 2}, resource_id=rid) == {"value": 7}
    assert rt.ok("common:execute_resource", {"add": 3}, resource_id=rid) == {"value": 10}
    listed = rt.ok("common:list_resources", {"type": "counter"})["resources"]
    assert rid in {r["resource_id"] for r in listed}
    types = {t["name"]: t for t in rt.ok("custom:list_types")["types"]}
    assert types["counter"]["builtin"] is False and types["counter"]["resources"] >= 1
    assert types["counter"]["description"] == "Counts; state lives in the worker."
    assert types["module"]["builtin"] is True
    # An exception in execute is a typed error; the resource survives it.
    code, _, details = rt.err("common:execute_resource", {"fail": True}, resource_id=rid)
    assert (code, details["phase"], details["exception_type"]) == ("FRAMEWORK_ERROR", "execute", "ValueError")
    assert "line 14, in execute" in details["traceback"]
    assert rt.ok("common:execute_resource", {}, resource_id=rid) == {"value": 11}
    assert rt.ok("common:delete_resource", resource_id=rid)["deleted"] is True
    assert (rt.scratch / f"deleted-{rid}").read_text() == "11"
    code, _, _ = rt.err("common:execute_resource", {}, resource_id=rid)
    assert code == "NOT_FOUND"


def test_user_type_name_collision_and_replacement(rt: Runtime) -> None:
    code, msg, details = rt.err("custom:register_type", {"name": "module", "code": COUNTER, "class": "Counter"})
    assert (code, details["reason"]) == ("ALREADY_EXISTS", "TYPE_NAME_TAKEN")
    assert "built-in" in msg
    v1 = "class T:\n    def create(self, config): pass\n    def execute(self, inputs): return 'v1'\n"
    v2 = "class T:\n    def create(self, config): pass\n    def execute(self, inputs): return 'v2'\n"
    first = rt.ok("custom:register_type", {"name": "versioned", "code": v1, "class": "T"})
    old = unique("old")
    rt.ok("common:create_resource", {}, resource_id=old, resource_type="versioned")
    second = rt.ok("custom:register_type", {"name": "versioned", "code": v2, "class": "T"})
    assert (first["version"], first["replaced"]) == (1, False)
    assert (second["version"], second["replaced"]) == (2, True)
    new = unique("new")
    rt.ok("common:create_resource", {}, resource_id=new, resource_type="versioned")
    assert rt.ok("common:execute_resource", {}, resource_id=new) == "v2"
    # Documented: resources created before a re-registration keep their code.
    assert rt.ok("common:execute_resource", {}, resource_id=old) == "v1"


def test_register_type_errors(rt: Runtime) -> None:
    cases = [
        ({"name": "Bad-Name", "code": COUNTER, "class": "Counter"}, "INVALID_ARGUMENT", "BAD_USER_TYPE"),
        ({"name": "nocls", "code": COUNTER, "class": "Missing"}, "INVALID_ARGUMENT", "BAD_USER_TYPE"),
        ({"name": "noexec", "code": "class C:\n    def create(self, c): pass\n", "class": "C"},
         "INVALID_ARGUMENT", "BAD_USER_TYPE"),
        ({"name": "syntax", "code": "class C(:\n", "class": "C"}, "INVALID_ARGUMENT", "SYNTAX_ERROR"),
        ({"name": "toperr", "code": "1/0\n", "class": "C"}, "FRAMEWORK_ERROR", "USER_EXCEPTION"),
        ({"name": "badschema", "code": COUNTER, "class": "Counter", "config_schema": {"properties": []}},
         "INVALID_ARGUMENT", "BAD_USER_TYPE"),
    ]
    for args, want_code, reason in cases:
        code, _, details = rt.err("custom:register_type", args)
        assert (code, details["reason"]) == (want_code, reason), args["name"]
    names = {t["name"] for t in rt.ok("custom:list_types")["types"]}
    assert not names & {"nocls", "noexec", "syntax", "toperr", "badschema"}
    code, _, details = rt.err("custom:register_type", {"name": "noexec", "code": "class C:\n    def create(self, c): pass\n", "class": "C"})
    assert details["missing"] == ["execute"]


def test_user_type_create_failure_and_config_schema(rt: Runtime) -> None:
    rt.ok("custom:register_type", {
        "name": "picky",
        "class": "P",
        "config_schema": {"type": "object", "properties": {"size": {"type": "integer"}}, "required": ["size"]},
        "code": "class P:\n    def create(self, config):\n        if config['size'] < 0:\n            raise ValueError('negative')\n    def execute(self, inputs):\n        return 1\n",
    })
    code, msg, _ = rt.err("common:create_resource", {}, resource_id=unique("p"), resource_type="picky")
    assert code == "INVALID_ARGUMENT" and "size" in msg
    rid = unique("p")
    code, _, details = rt.err("common:create_resource", {"size": -1}, resource_id=rid, resource_type="picky")
    assert (code, details["phase"]) == ("FRAMEWORK_ERROR", "create")
    listed = {r["resource_id"] for r in rt.ok("common:list_resources")["resources"]}
    assert rid not in listed


def test_streaming_user_type_with_progress(rt: Runtime) -> None:
    rt.ok("custom:register_type", {"name": "ticker", "class": "Ticker", "code": src("""
        class Ticker:
            def create(self, config):
                self.label = config["label"]
            def execute(self, inputs, progress):
                for k in range(inputs["n"]):
                    progress(k + 1, inputs["n"], "tick")
                    yield f"{self.label}{k}"
                return "done"
    """)})
    rid = unique("tick")
    rt.ok("common:create_resource", {"label": "t"}, resource_id=rid, resource_type="ticker")
    events = rt.stream("common:execute_resource", {"n": 3}, resource_id=rid)
    assert [json.loads(e.chunk.data_json) for e in events if e.HasField("chunk")] == ["t0", "t1", "t2"]
    assert [e.progress.step for e in events if e.HasField("progress")] == [1, 2, 3]
    assert events[-1].final.ok
    described = {t.name: t for t in rt.stub.Describe(pb.DescribeRequest(), timeout=10).resource_types}
    assert described["ticker"].streaming is True and described["module"].streaming is False


def test_builtin_module_resource_keeps_module_state(rt: Runtime) -> None:
    rid = unique("mod")
    rt.ok("common:create_resource", {"code": src("""
        calls = []
        def main(inputs):
            calls.append(inputs["x"])
            return sum(calls)
    """)}, resource_id=rid, resource_type="module")
    assert rt.ok("common:execute_resource", {"x": 2}, resource_id=rid) == 2
    assert rt.ok("common:execute_resource", {"x": 5}, resource_id=rid) == 7
    count = src("""
        import sys
        def main(inputs):
            return sum(1 for m in list(sys.modules.values())
                       if str(getattr(m, "__file__", "")).startswith("<module:"))
    """)
    before = rt.run(count)["result"]
    code, _, details = rt.err("common:create_resource", {"code": "def nope(): pass"},
                              resource_id=unique("mod"), resource_type="module")
    assert details["reason"] == "NO_MAIN"
    assert rt.run(count)["result"] == before  # a failed create leaves no module behind
    assert rt.ok("common:delete_resource", resource_id=rid)["deleted"] is True


# ---------------------------------------------------------------------------------
# scratch files: upload, download, list
# ---------------------------------------------------------------------------------

def test_upload_attachments_then_user_code_reads_them(rt: Runtime) -> None:
    d = unique("up")
    reply = rt.call("custom:upload", {"dest": d}, attachments={"a.txt": b"alpha", "sub/b.bin": b"\x00\x01"})
    assert reply.ok, reply.error.message
    out = json.loads(reply.result_json)
    assert sorted(f["path"] for f in out["files"]) == [f"{d}/a.txt", f"{d}/sub/b.bin"]
    assert out["total_bytes"] == 7
    assert (rt.scratch / d / "a.txt").read_bytes() == b"alpha"
    assert oct((rt.scratch / d / "a.txt").stat().st_mode & 0o777) == "0o600"
    res = rt.run("""
        import os
        def main(inputs):
            with open(os.path.join(WORKDIR, inputs["d"], "sub", "b.bin"), "rb") as fh:
                return list(fh.read())
    """, {"d": d})
    assert res["result"] == [0, 1]


BAD_NAMES = ["../escape.txt", "/etc/evil", "a/../../escape", "", ".", "a\x00b", "a\\b", ".mlbridge-staging/x",
             "ok/\nnewline"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_upload_rejects_bad_names_and_writes_nothing(rt: Runtime, bad: str) -> None:
    before = snapshot(rt.scratch)
    reply = rt.call("custom:upload", {}, attachments={unique("good"): b"fine", bad: b"evil"})
    assert not reply.ok
    assert reply.error.code == "INVALID_ARGUMENT"
    assert json.loads(reply.error.details_json)["reason"] == "UNSAFE_PATH"
    assert snapshot(rt.scratch) == before
    assert not list((rt.scratch / ".mlbridge-staging").glob("*"))
    assert not (rt.base / "escape.txt").exists()


def test_upload_never_follows_symlinks_made_by_user_code(rt: Runtime, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    d = unique("links")
    rt.run("""
        import os
        def main(inputs):
            base = os.path.join(WORKDIR, inputs["d"])
            os.makedirs(os.path.join(base, "real"))
            os.symlink(inputs["outside"], os.path.join(base, "out"))
            os.symlink(os.path.join(base, "real"), os.path.join(base, "inside"))
    """, {"d": d, "outside": str(outside)})
    before = snapshot(rt.scratch)
    for target in (f"{d}/out/pwned.txt", f"{d}/inside/x.txt"):
        reply = rt.call("custom:upload", {}, attachments={target: b"x"})
        assert not reply.ok and json.loads(reply.error.details_json)["reason"] == "UNSAFE_PATH", target
    reply = rt.call("custom:upload", {"dest": f"{d}/out"}, attachments={"y.txt": b"y"})
    assert not reply.ok and json.loads(reply.error.details_json)["reason"] == "UNSAFE_PATH"
    assert list(outside.iterdir()) == []
    assert snapshot(rt.scratch) == before


def test_upload_survives_a_planted_staging_symlink(rt: Runtime, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    rt.run("""
        import os, shutil
        def main(inputs):
            staging = os.path.join(WORKDIR, ".mlbridge-staging")
            shutil.rmtree(staging, ignore_errors=True)
            os.symlink(inputs["outside"], staging)
    """, {"outside": str(outside)})
    d = unique("planted")
    reply = rt.call("custom:upload", {"dest": d}, attachments={"f.txt": b"safe"})
    assert reply.ok, reply.error.message
    assert (rt.scratch / d / "f.txt").read_bytes() == b"safe"
    assert list(outside.iterdir()) == []
    assert (rt.scratch / ".mlbridge-staging").is_dir() and not (rt.scratch / ".mlbridge-staging").is_symlink()


def test_upload_conflicts(rt: Runtime) -> None:
    d = unique("conf")
    assert rt.call("custom:upload", {"dest": d}, attachments={"f": b"1"}).ok
    reply = rt.call("custom:upload", {"dest": d, "overwrite": False}, attachments={"f": b"2"})
    assert reply.error.code == "ALREADY_EXISTS" and json.loads(reply.error.details_json)["reason"] == "PATH_CONFLICT"
    assert (rt.scratch / d / "f").read_bytes() == b"1"
    assert rt.call("custom:upload", {"dest": d}, attachments={"f": b"3"}).ok
    assert (rt.scratch / d / "f").read_bytes() == b"3"
    reply = rt.call("custom:upload", {"dest": d}, attachments={"f/g": b"4"})
    assert not reply.ok
    reply = rt.call("custom:upload", {"dest": d}, attachments={"x": b"1", "x/y": b"2"})
    assert not reply.ok and json.loads(reply.error.details_json)["reason"] == "PATH_CONFLICT"
    assert not (rt.scratch / d / "x").exists()


def test_upload_archive_formats(rt: Runtime) -> None:
    for mode in ("w", "w:gz", "w:bz2", "w:xz"):
        d = unique("arc")
        data = tar_bytes([
            (member("./", tarfile.DIRTYPE), None),
            (member("./docs", tarfile.DIRTYPE), None),
            (member("./docs/readme.md"), b"# hi"),
            (member("empty", tarfile.DIRTYPE), None),
            (member("top.txt", mode=0o777), b"top"),
        ], mode)
        reply = rt.call("custom:upload", {"archive": "in.tar", "dest": d}, attachments={"in.tar": data})
        assert reply.ok, (mode, reply.error.message)
        out = json.loads(reply.result_json)
        assert {f["path"] for f in out["files"]} == {f"{d}/docs/readme.md", f"{d}/top.txt"}
        assert (rt.scratch / d / "docs" / "readme.md").read_bytes() == b"# hi"
        assert (rt.scratch / d / "empty").is_dir()
        assert (rt.scratch / d / "top.txt").stat().st_mode & 0o777 == 0o600  # archive modes are ignored


BAD_MEMBERS = {
    "symlink": (member("link", tarfile.SYMTYPE, linkname="/etc/passwd"), None, "UNSAFE_ARCHIVE_MEMBER"),
    "hardlink": (member("hard", tarfile.LNKTYPE, linkname="good.txt"), None, "UNSAFE_ARCHIVE_MEMBER"),
    "chardev": (member("dev", tarfile.CHRTYPE, devmajor=1, devminor=3), None, "UNSAFE_ARCHIVE_MEMBER"),
    "blockdev": (member("blk", tarfile.BLKTYPE, devmajor=8, devminor=0), None, "UNSAFE_ARCHIVE_MEMBER"),
    "fifo": (member("pipe", tarfile.FIFOTYPE), None, "UNSAFE_ARCHIVE_MEMBER"),
    "dotdot": (member("../../escape.txt"), b"evil", "UNSAFE_PATH"),
    "absolute": (member("/tmp/escape.txt"), b"evil", "UNSAFE_PATH"),
    "nested-dotdot": (member("a/b/../../../escape.txt"), b"evil", "UNSAFE_PATH"),
    "reserved": (member(".mlbridge-staging/x"), b"evil", "UNSAFE_PATH"),
}


@pytest.mark.parametrize("case", sorted(BAD_MEMBERS))
def test_upload_rejects_unsafe_archive_members(rt: Runtime, case: str) -> None:
    bad, data, reason = BAD_MEMBERS[case]
    # The good file comes first, so a rejection must also undo what was already read.
    archive = tar_bytes([(member("good.txt"), b"good"), (bad, data)], "w:gz")
    before = snapshot(rt.scratch)
    reply = rt.call("custom:upload", {"archive": "a.tgz", "dest": unique("bad")}, attachments={"a.tgz": archive})
    assert not reply.ok
    assert reply.error.code == "INVALID_ARGUMENT"
    assert json.loads(reply.error.details_json)["reason"] == reason
    assert snapshot(rt.scratch) == before
    assert not list((rt.scratch / ".mlbridge-staging").glob("*"))


def test_upload_rejects_corrupt_archives(rt: Runtime) -> None:
    good = tar_bytes([(member("f.txt"), b"x" * 5000)], "w:gz")
    for blob in (b"this is not a tar archive at all" * 40, good[: len(good) // 2], b"\x1f\x8b" + b"\x00" * 100):
        reply = rt.call("custom:upload", {"archive": "a"}, attachments={"a": blob})
        assert not reply.ok
        assert json.loads(reply.error.details_json)["reason"] == "BAD_ARCHIVE"
    reply = rt.call("custom:upload", {"archive": "missing"}, attachments={"a": good})
    assert reply.error.code == "INVALID_ARGUMENT" and "missing" in reply.error.message
    reply = rt.call("custom:upload", {})
    assert reply.error.code == "INVALID_ARGUMENT"


def _limit(reply: pb.CallReply) -> str:
    assert not reply.ok
    details = json.loads(reply.error.details_json)
    assert (reply.error.code, details["reason"]) == ("PAYLOAD_TOO_LARGE", "UPLOAD_LIMIT")
    return str(details["limit"])


def test_upload_size_and_count_limits(limited: Runtime) -> None:
    before = snapshot(limited.scratch)
    assert _limit(limited.call("custom:upload", {}, attachments={"big": b"x" * 1001})) == "max_file_bytes"
    many = {f"f{i}": b"x" for i in range(9)}
    assert _limit(limited.call("custom:upload", {}, attachments=many)) == "max_upload_entries"
    total = {f"t{i}": b"x" * 999 for i in range(6)}
    assert _limit(limited.call("custom:upload", {}, attachments=total)) == "max_upload_bytes"
    for members, want in (
        ([(member("big"), b"x" * 1001)], "max_file_bytes"),
        ([(member(f"m{i}"), b"x") for i in range(9)], "max_upload_entries"),
        ([(member(f"d{i}", tarfile.DIRTYPE), None) for i in range(9)], "max_upload_entries"),
        ([(member(f"s{i}"), b"x" * 999) for i in range(6)], "max_upload_bytes"),
    ):
        reply = limited.call("custom:upload", {"archive": "a"}, attachments={"a": tar_bytes(members, "w:gz")})
        assert _limit(reply) == want
    assert snapshot(limited.scratch) == before
    ok = limited.call("custom:upload", {}, attachments={f"ok{i}": b"x" * 999 for i in range(5)})
    assert ok.ok, ok.error.message


def _pax_record(key: str, value: bytes) -> bytes:
    body = f" {key}=".encode() + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def _pax_header(name: str, payload: bytes, size: int | None = None) -> bytes:
    info = member(name, tarfile.XHDTYPE, size=len(payload) if size is None else size)
    return info.tobuf(tarfile.USTAR_FORMAT) + payload + b"\0" * (-len(payload) % 512)


def test_gzip_bomb_is_stopped_while_streaming(limited: Runtime) -> None:
    before = snapshot(limited.scratch)
    # A file whose header admits its 50 MB: refused from the header, nothing inflated.
    bomb = tar_bytes([(member("zeros"), b"\x00" * (50 << 20))], "w:gz")
    assert len(bomb) < 200_000
    assert _limit(limited.call("custom:upload", {"archive": "b"}, attachments={"b": bomb})) == "max_file_bytes"
    # Metadata headers that each look small but chain on and on: only the byte
    # count of the decompressed stream catches these.
    record = _pax_record("comment", b"z" * (60 * 1024))
    chain = b"".join(_pax_header(f"pax{i}", record) for i in range(40))
    stream_bomb = gzip.compress(chain + tar_bytes([(member("last"), b"x")]))
    reply = limited.call("custom:upload", {"archive": "c"}, attachments={"c": stream_bomb})
    assert _limit(reply) == "max_unpacked_bytes"
    # A single metadata header above the cap is refused before it is read.
    huge = _pax_header("pax", _pax_record("comment", b"9" * (2 << 20)))
    reply = limited.call("custom:upload", {"archive": "d"}, attachments={"d": gzip.compress(huge)})
    assert not reply.ok and json.loads(reply.error.details_json)["reason"] == "BAD_ARCHIVE"
    assert "metadata header" in reply.error.message
    assert snapshot(limited.scratch) == before
    assert limited.alive()


def test_download_returns_files_as_attachments(rt: Runtime) -> None:
    d = unique("down")
    rt.run("""
        import os
        def main(inputs):
            base = os.path.join(WORKDIR, inputs["d"])
            os.makedirs(os.path.join(base, "sub"))
            with open(os.path.join(base, "a.txt"), "w") as fh:
                fh.write("made by user code")
            with open(os.path.join(base, "sub", "b.bin"), "wb") as fh:
                fh.write(bytes(range(256)))
    """, {"d": d})
    reply = rt.call("custom:download", {"paths": [f"{d}/a.txt", f"./{d}//sub/b.bin"]})
    assert reply.ok, reply.error.message
    assert dict(reply.attachments) == {f"{d}/a.txt": b"made by user code", f"{d}/sub/b.bin": bytes(range(256))}
    out = json.loads(reply.result_json)
    assert out["total_bytes"] == 17 + 256


def test_download_errors(rt: Runtime, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    d = unique("dl")
    rt.run("""
        import os
        def main(inputs):
            base = os.path.join(WORKDIR, inputs["d"])
            os.makedirs(os.path.join(base, "dir"))
            with open(os.path.join(base, "eleven.txt"), "w") as fh:
                fh.write("x" * 11)
            os.symlink(inputs["secret"], os.path.join(base, "out-link"))
            os.symlink(os.path.dirname(inputs["secret"]), os.path.join(base, "out-dir"))
            os.symlink(os.path.join(base, "eleven.txt"), os.path.join(base, "in-link"))
            os.mkfifo(os.path.join(base, "fifo"))
    """, {"d": d, "secret": str(secret)})
    cases = {
        f"{d}/nope": ("NOT_FOUND", "NO_SUCH_FILE"),
        f"{d}/nodir/x": ("NOT_FOUND", "NO_SUCH_FILE"),
        f"{d}/dir": ("INVALID_ARGUMENT", "NOT_A_REGULAR_FILE"),
        f"{d}/fifo": ("INVALID_ARGUMENT", "NOT_A_REGULAR_FILE"),
        f"{d}/in-link": ("INVALID_ARGUMENT", "NOT_A_REGULAR_FILE"),
        f"{d}/out-link": ("INVALID_ARGUMENT", "UNSAFE_PATH"),
        f"{d}/out-dir/secret.txt": ("INVALID_ARGUMENT", "UNSAFE_PATH"),
        "../secret.txt": ("INVALID_ARGUMENT", "UNSAFE_PATH"),
        str(secret): ("INVALID_ARGUMENT", "UNSAFE_PATH"),
    }
    for path, (want_code, reason) in cases.items():
        reply = rt.call("custom:download", {"paths": [f"{d}/eleven.txt", path]})
        assert not reply.ok, path
        assert (reply.error.code, json.loads(reply.error.details_json)["reason"]) == (want_code, reason), path
        assert len(reply.attachments) == 0
    reply = rt.call("custom:download", {"paths": [f"{d}/eleven.txt"], "max_bytes": 10})
    assert reply.error.code == "PAYLOAD_TOO_LARGE"
    assert json.loads(reply.error.details_json)["reason"] == "DOWNLOAD_TOO_LARGE"
    code, _, _ = rt.err("custom:download", {"paths": []})
    assert code == "INVALID_ARGUMENT"


def test_download_total_cap(limited: Runtime) -> None:
    d = unique("cap")
    assert limited.call("custom:upload", {"dest": d}, attachments={"a": b"x" * 900, "b": b"y" * 900,
                                                                   "c": b"z" * 900}).ok
    assert limited.call("custom:download", {"paths": [f"{d}/a", f"{d}/b"]}).ok
    reply = limited.call("custom:download", {"paths": [f"{d}/a", f"{d}/b", f"{d}/c"]})
    assert json.loads(reply.error.details_json)["reason"] == "DOWNLOAD_TOO_LARGE"
    code, _, _ = limited.err("custom:download", {"paths": [f"{d}/a"], "max_bytes": 2001})
    assert code == "INVALID_ARGUMENT"


def test_list_files_never_follows_symlinks(rt: Runtime, tmp_path: Path) -> None:
    (tmp_path / "hidden.txt").write_text("outside")
    d = unique("ls")
    rt.call("custom:upload", {"dest": d}, attachments={"a.txt": b"abc", "sub/b.txt": b"b"})
    rt.run("""
        import os
        def main(inputs):
            os.symlink(inputs["outside"], os.path.join(WORKDIR, inputs["d"], "escape"))
    """, {"d": d, "outside": str(tmp_path)})
    out = rt.ok("custom:list_files", {"path": d})
    entries = {e["path"]: e for e in out["entries"]}
    assert set(entries) == {f"{d}/a.txt", f"{d}/sub", f"{d}/sub/b.txt", f"{d}/escape"}
    assert entries[f"{d}/a.txt"] == {"path": f"{d}/a.txt", "type": "file", "size": 3}
    assert entries[f"{d}/escape"]["type"] == "symlink"
    assert out["truncated"] is False and out["workdir"] == os.path.realpath(rt.scratch)
    flat = rt.ok("custom:list_files", {"path": d, "recursive": False})
    assert {e["path"] for e in flat["entries"]} == {f"{d}/a.txt", f"{d}/sub", f"{d}/escape"}
    capped = rt.ok("custom:list_files", {"path": d, "max_entries": 2})
    assert len(capped["entries"]) == 2 and capped["truncated"] is True
    whole = rt.ok("custom:list_files", {"recursive": False})
    assert not any(e["path"].startswith(".mlbridge") for e in whole["entries"])
    code, _, details = rt.err("custom:list_files", {"path": f"{d}/escape"})
    assert details["reason"] == "UNSAFE_PATH"
    code, _, details = rt.err("custom:list_files", {"path": "../"})
    assert details["reason"] == "UNSAFE_PATH"


# ---------------------------------------------------------------------------------
# the capped buffer on its own
# ---------------------------------------------------------------------------------

def test_capped_buffer_counts_what_it_drops() -> None:
    buf = CappedBuffer(5)
    buf.write_text("abc")
    buf.write_text("défg")  # é is two bytes
    buf.write_bytes(b"\xff" * 10)
    assert buf.getvalue() == "abcd"
    assert buf.dropped == 3 + 10  # "é" half, "fg", then all ten bytes
    assert buf.truncated is True
    big = CappedBuffer(4)
    big.write_text("€" * 1000)  # 3 bytes each
    assert big.getvalue() == "€" and big.dropped == 3000 - 4


def test_cooperative_stops_leave_no_stuck_handlers(rt: Runtime) -> None:
    """Cancelled and timed-out cooperative calls in the shared runtime all stopped."""
    stats = rt.ok("common:stats")
    assert stats["stuck_handlers"] == 0
    assert stats["in_flight"] == 1  # this call
