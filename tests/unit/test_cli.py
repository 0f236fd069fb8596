"""The CLI against a real `mlbridge serve` subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    port = _free_port()
    env = {**os.environ, "MLBRIDGE_STATE_DIR": str(tmp_path_factory.mktemp("cli") / "state"),
           "MLBRIDGE_BRIDGES__MOCK__POOL_SIZE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", "--backend", "process",
                             "--listen", f"127.0.0.1:{port}"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "serving" in line or proc.poll() is not None:
            break
    assert "serving" in line, line
    yield f"127.0.0.1:{port}"
    proc.terminate()
    assert proc.wait(30) == 0


def mlbridge(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "--address", address, *args],
                          capture_output=True, text=True, timeout=60)


def test_call_prints_echo(server: str) -> None:
    r = mlbridge(server, "call", "mock", "mock:echo", "--args", '{"x": 1}')
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"x": 1}


def test_connection_options_after_the_command(server: str) -> None:
    for argv in (["call", "--address", server, "mock", "mock:echo"], ["call", "mock", "mock:echo", "--address", server],
                 ["--address", "127.0.0.1:1", "call", "mock", "mock:echo", "--address", server, "--timeout", "30"]):
        r = subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv, "--args", '{"x": 2}'],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (argv, r.stderr)
        assert json.loads(r.stdout) == {"x": 2}
    r = subprocess.run([sys.executable, "-m", "orchestrator.cli", "status", "--address", server],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "mock" in r.stdout, r.stderr


def test_unknown_namespace_lists_namespaces(server: str) -> None:
    r = mlbridge(server, "call", "mock", "nope:thing")
    assert r.returncode == 1
    assert "UNKNOWN_COMMAND" in r.stderr and "namespaces here: common, mock" in r.stderr


def test_bad_args_json(server: str) -> None:
    r = mlbridge(server, "call", "mock", "mock:echo", "--args", "{oops")
    assert r.returncode == 2 and "--args is not valid JSON" in r.stderr


def test_stream_bridges_resources_status(server: str) -> None:
    r = mlbridge(server, "call", "mock", "mock:stream", "--args", '{"n": 2}', "--stream")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["kind"] for x in lines] == ["progress", "chunk", "progress", "chunk", "result"]
    r = mlbridge(server, "bridges")
    assert r.returncode == 0 and "mock *" in r.stdout
    r = mlbridge(server, "resources")
    assert r.returncode == 0 and "RESOURCE" in r.stdout
    r = mlbridge(server, "status")
    assert r.returncode == 0
    assert "BRIDGE" in r.stdout and "WORKER" in r.stdout and "default" in r.stdout
    assert "SPARES/TARGET" in r.stdout and "HELD" in r.stdout and "CLAIMS/MIN" in r.stdout
    mock_row = next(line for line in r.stdout.splitlines() if line.startswith("mock "))
    assert "/" in mock_row.split()[2]  # spares/target of the mock bridge


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    r = mlbridge(f"127.0.0.1:{_free_port()}", "call", "mock", "mock:echo")
    assert r.returncode == 1 and "UNAVAILABLE" in r.stderr


def test_run_a_file_in_the_custom_sandbox(server: str, tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text("def main(inputs, progress):\n    print('working')\n    return {'double': inputs['n'] * 2}\n")
    r = mlbridge(server, "run", str(job), "--inputs", '{"n": 21}')
    assert r.returncode == 0, r.stderr
    assert "working" in r.stdout and json.loads(r.stdout.split("working\n", 1)[1]) == {"double": 42}
    bad = tmp_path / "bad.py"
    bad.write_text("def main(inputs):\n    raise KeyError('nope')\n")
    r = mlbridge(server, "run", str(bad))
    assert r.returncode == 1 and "FRAMEWORK_ERROR" in r.stderr and "KeyError" in r.stderr


def test_files_in_and_out_through_attachments(server: str, tmp_path: Path) -> None:
    src = tmp_path / "data.txt"
    src.write_bytes(b"hello sandbox\n")
    r = mlbridge(server, "call", "custom", "custom:upload", "--attach", f"in/data.txt={src}")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["files"][0]["path"] == "in/data.txt"
    code = ("def main(inputs):\n    p = WORKDIR + '/in/data.txt'\n"
            "    open(WORKDIR + '/out.txt', 'w').write(open(p).read().upper())\n    return 'ok'\n")
    r = mlbridge(server, "call", "custom", "custom:run", "--args", json.dumps({"code": code}))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    r = mlbridge(server, "call", "custom", "custom:download", "--args", '{"paths": ["out.txt"]}',
                 "--save-attachments", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "out.txt").read_bytes() == b"HELLO SANDBOX\n"


def test_cancel_a_running_call_by_id(server: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "--address", server, "call", "mock",
                             "mock:sleep", "--args", '{"seconds": 30}', "--call-id", "cli-long-call"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = mlbridge(server, "cancel", "cli-long-call")
        if r.returncode == 0:
            break
        time.sleep(0.2)
    assert r.returncode == 0 and "cancelled" in r.stdout
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1 and "CANCELLED" in err
    r = mlbridge(server, "cancel", "cli-long-call")
    assert r.returncode == 1 and "no call" in r.stdout


def test_legacy_command_says_it_is_deprecated(server: str) -> None:
    r = mlbridge(server, "call", "dspy", "configure_lm", "--args",
                 '{"provider": "dummy", "model": "dummy", "answers": [{"answer": "4"}]}')
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "configured"
    assert "deprecated: configure_lm is deprecated; use " in r.stderr
