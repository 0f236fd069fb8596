"""The Elixir client's ExUnit suite (``clients/elixir``), run by ``mix test`` against real orchestrators.

The suite starts its own ``mlbridge serve`` (process backend, and docker
backend for its ``:docker`` tests) through ``MLBRIDGE_EXECUTABLE``, which
points at this checkout's CLI under this interpreter. Without Elixir the test
skips locally and fails in CI (``CI=true``), where the docker tests must run too.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import CI

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "elixir"
# doctests + tests the suite holds; fewer means tests were lost or not collected.
MIN_TESTS = 77
SUMMARY = re.compile(r"(?:(\d+) doctests?, )?(\d+) tests?, (\d+) failures?")

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _mlbridge_wrapper(directory: Path) -> Path:
    """An ``mlbridge`` executable running this checkout's CLI with this interpreter."""
    wrapper = directory / "mlbridge"
    pythonpath = shlex.quote(str(ROOT))
    wrapper.write_text(
        "#!/bin/sh\n"
        f'PYTHONPATH={pythonpath}${{PYTHONPATH:+:$PYTHONPATH}} exec {shlex.quote(sys.executable)} -m orchestrator.cli "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.timeout(600)
def test_elixir_client_suite(tmp_path: Path) -> None:
    mix = shutil.which("mix")
    if mix is None or shutil.which("elixir") is None:
        if CI:
            pytest.fail("CI=true but Elixir is not installed (apt-get install elixir): the Elixir client must be tested")
        pytest.skip("Elixir is not installed (apt-get install elixir)")
    env = {**os.environ, "MIX_ENV": "test", "MLBRIDGE_EXECUTABLE": str(_mlbridge_wrapper(tmp_path))}
    # Its own process group: the orchestrators the suite starts (and their process workers) are in it, so
    # whatever way mix ends, nothing it started outlives this test.
    proc = subprocess.Popen([mix, "test"], cwd=CLIENT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=540)
    except subprocess.TimeoutExpired:
        _end_group(proc.pid)
        output, _ = proc.communicate()
        pytest.fail(f"mix test did not finish in 540 s:\n{output}")
    finally:
        _end_group(proc.pid)
    found = SUMMARY.findall(output)
    assert proc.returncode == 0 and found, f"mix test exited {proc.returncode}:\n{output}"
    doctests, tests, failures = (int(n or 0) for n in found[-1])
    assert failures == 0, output
    assert doctests + tests >= MIN_TESTS, f"only {doctests + tests} tests ran, expected {MIN_TESTS}:\n{output}"


def _end_group(pgid: int) -> None:
    """SIGTERM to what is left of the process group (orchestrators remove their workers), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
