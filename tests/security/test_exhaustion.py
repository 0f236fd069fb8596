"""Resource exhaustion by hostile user code: each attack is contained and reported precisely.

Every test runs its attack through ``custom:run`` in a hardened docker worker
(limits in ``conftest.LIMITS``), asserts the specific outcome (an errno the
code saw, or the orchestrator's typed error), whether the worker was kept or
killed and replaced, and then that the orchestrator still serves: a
``mock:echo`` and a fresh ``custom:run`` both succeed.
"""

from __future__ import annotations

import errno
import threading
import time
import uuid

import docker
import pytest

from runtimes.wire.errors import Cancelled, DeadlineExceeded, MLBridgeError, OutOfMemory

from .conftest import (
    CALL_TIMEOUT_S,
    CANCEL_GRACE_S,
    MEMORY_LIMIT,
    NOFILE,
    PIDS_LIMIT,
    SLACK_S,
    TMPFS_BYTES,
    Sandbox,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(180)]

KIB = 1024
MIB = 1024 * KIB


# --------------------------------------------------------------------------------------------
# processes and threads: the pids limit


FORK_BOMB = """
import os, signal, time

def main(inputs):
    kids, err = [], None
    try:
        for _ in range(10000):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            kids.append(pid)
    except OSError as e:
        err = e.errno
    for k in kids:
        os.kill(k, signal.SIGKILL)
    for k in kids:
        os.waitpid(k, 0)
    return {"forked": len(kids), "errno": err}
"""


def test_fork_bomb_is_stopped_by_the_pids_limit(sandbox: Sandbox) -> None:
    """Forks stop at the pids limit: the code sees EAGAIN, cleans up, and the same worker serves on.

    (With grpcio's fork support on, its default, fork() would hang in grpc's
    post-fork handler once the limit is reached; the runtime turns it off.)
    """
    before = sandbox.claim()
    out = sandbox.run(FORK_BOMB, deadline_s=5.0)
    result = out["result"]
    assert result["errno"] == errno.EAGAIN, result
    assert 0 < result["forked"] < PIDS_LIMIT, result
    assert sandbox.assert_serving() == before


THREAD_BOMB = """
import threading

def main(inputs):
    stop = threading.Event()
    threads, err = [], None
    try:
        for _ in range(10000):
            t = threading.Thread(target=stop.wait, daemon=True)
            t.start()
            threads.append(t)
    except RuntimeError as e:
        err = f"{type(e).__name__}: {e}"
    stop.set()
    for t in threads:
        t.join()
    return {"threads": len(threads), "error": err}
"""


def test_thread_bomb_sees_runtime_error_and_the_worker_survives(sandbox: Sandbox) -> None:
    before = sandbox.claim()
    result = sandbox.result(THREAD_BOMB, deadline_s=8)
    assert result["error"] == "RuntimeError: can't start new thread", result
    # The worker's own threads (grpc, call pool) count against the same limit.
    assert 0 < result["threads"] < PIDS_LIMIT, result
    assert sandbox.assert_serving() == before


# --------------------------------------------------------------------------------------------
# memory


MEMORY_BOMB = """
def main(inputs):
    blocks = []
    for _ in range(64):
        blocks.append(b"\\x01" * (32 * 1024 * 1024))
    return len(blocks)
"""


def test_memory_bomb_is_out_of_memory_naming_the_limit(sandbox: Sandbox) -> None:
    before = sandbox.claim()
    with pytest.raises(OutOfMemory) as info:
        sandbox.run(MEMORY_BOMB, deadline_s=CALL_TIMEOUT_S)
    err = info.value
    assert err.code == "OUT_OF_MEMORY"
    assert "out of memory" in str(err) and "256 MiB" in str(err), str(err)
    assert before in str(err)
    assert err.details["oom_killed"] is True
    assert err.details["exit_code"] == 137
    assert err.details["memory_limit"] == MEMORY_LIMIT
    sandbox.wait_gone(before)
    assert sandbox.assert_serving() != before


# --------------------------------------------------------------------------------------------
# CPU: deadlines and cancellation that the code ignores


CPU_SPIN = """
def main(inputs):
    n = 0
    while True:
        try:
            n += 1
        except BaseException:
            pass
"""


def test_cpu_spin_past_the_deadline_is_killed_and_replaced(sandbox: Sandbox) -> None:
    before = sandbox.claim()
    others = set(sandbox.workers()) - {before}
    deadline = 2.0
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        sandbox.run(CPU_SPIN, deadline_s=deadline)
    elapsed = time.monotonic() - started
    assert deadline <= elapsed <= deadline + CANCEL_GRACE_S + SLACK_S, elapsed
    assert info.value.code == "DEADLINE_EXCEEDED"
    assert info.value.details.get("worker_replaced") is True, info.value.details
    sandbox.wait_gone(before)
    after = sandbox.assert_serving()
    assert after != before and before not in sandbox.workers()
    # The spare that was ready before is untouched by the kill.
    assert others <= set(sandbox.workers()) | {after}


SIGTERM_IGNORING_SPIN = """
import ctypes, os, signal

def main(inputs):
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # only the main thread may do this
    except ValueError:
        ctypes.CDLL(None).signal(signal.SIGTERM, 1)     # 1 = SIG_IGN, process-wide
    os.kill(os.getpid(), signal.SIGTERM)                # survives its own SIGTERM
    open(inputs["marker"], "w").close()
    while True:
        try:
            pass
        except BaseException:
            pass
"""


def test_sigterm_ignoring_code_is_cancelled_promptly_and_replaced(sandbox: Sandbox) -> None:
    before = sandbox.claim()
    call_id = f"sigterm-{uuid.uuid4().hex[:8]}"
    marker = f"/tmp/spinning-{call_id}"
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["reply"] = sandbox.run(SIGTERM_IGNORING_SPIN, {"marker": marker}, call_id=call_id)
        except MLBridgeError as exc:
            outcome["error"] = exc
        outcome["ended"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    # Wait until the code ignores SIGTERM and spins (it touched its marker).
    deadline = time.monotonic() + 8
    probe = f"import os\ndef main(i):\n    return os.path.exists({marker!r})"
    while not sandbox.result(probe):
        assert time.monotonic() < deadline and "error" not in outcome, outcome
        time.sleep(0.05)
    cancelled_at = time.monotonic()
    assert sandbox.client.cancel(call_id) is True
    t.join(CANCEL_GRACE_S + SLACK_S + 2)
    assert not t.is_alive(), "the cancelled call did not end"
    err = outcome.get("error")
    assert isinstance(err, Cancelled), outcome
    assert err.code == "CANCELLED"
    assert err.details.get("worker_replaced") is True, err.details
    assert float(outcome["ended"]) - cancelled_at <= CANCEL_GRACE_S + SLACK_S  # type: ignore[arg-type]
    sandbox.wait_gone(before)
    assert sandbox.assert_serving() != before
    assert sandbox.client.cancel(call_id) is False  # nothing left in flight


# --------------------------------------------------------------------------------------------
# file systems: /tmp is a capped tmpfs


TMPFS_FILL = """
import os

def main(inputs):
    st = os.statvfs("/tmp")
    written, err = 0, None
    try:
        with open("/tmp/fill", "wb") as f:
            while written < 256 * 2**20:
                f.write(b"\\0" * 2**20)
                f.flush()
                written += 2**20
    except OSError as e:
        err = e.errno
    size = os.stat("/tmp/fill").st_size
    os.remove("/tmp/fill")
    mounts = [l.split() for l in open("/proc/mounts")]
    tmp = [m for m in mounts if m[1] == "/tmp"]
    return {"errno": err, "size": size, "fs_bytes": st.f_blocks * st.f_frsize, "mount": tmp}
"""


def container_rw_bytes(container_id: str) -> int:
    """Bytes in the container's writable layer on the host disk."""
    client = docker.from_env()
    try:
        rows = client.api.containers(all=True, filters={"id": container_id}, size=True)
        assert len(rows) == 1, rows
        return int(rows[0].get("SizeRw") or 0)
    finally:
        client.close()


def test_tmpfs_exhaustion_is_enospc_in_memory_only(sandbox: Sandbox) -> None:
    before = sandbox.claim()
    result = sandbox.result(TMPFS_FILL, deadline_s=8)
    assert result["errno"] == errno.ENOSPC, result
    assert result["fs_bytes"] == TMPFS_BYTES
    assert TMPFS_BYTES - 2 * MIB <= result["size"] <= TMPFS_BYTES, result
    (mount,) = result["mount"]
    assert mount[0] == "tmpfs" and mount[2] == "tmpfs", mount
    assert {"noexec", "nosuid", "nodev", f"size={TMPFS_BYTES // KIB}k"} <= set(mount[3].split(",")), mount
    # Nothing reached the host's disk: the container's writable layer is empty.
    assert container_rw_bytes(sandbox.container(before)) == 0
    assert sandbox.assert_serving() == before


FILE_FLOOD = """
import os, shutil, time

def main(inputs):
    d = "/tmp/flood"
    os.makedirs(d, exist_ok=True)
    payload = b"x" * inputs["size"]
    n, err, started = 0, None, time.monotonic()
    try:
        while n < inputs["max_files"] and time.monotonic() - started < 10:
            fd = os.open(f"{d}/{n}", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
            try:
                if payload:
                    os.write(fd, payload)
            finally:
                os.close(fd)
            n += 1
    except OSError as e:
        err = e.errno
    st = os.statvfs("/tmp")
    shutil.rmtree(d)
    return {"files": n, "errno": err, "inodes": st.f_files}
"""


@pytest.mark.parametrize(("size", "what"), [(1, "one-byte files fill the blocks"),
                                            (0, "empty files exhaust the inodes")], ids=["tiny", "empty"])
def test_many_small_files_are_enospc(sandbox: Sandbox, size: int, what: str) -> None:
    """``/tmp`` runs out (ENOSPC) and the worker keeps serving, for data and for inodes.

    One-byte files each take a 4 KiB page, so the 16 MiB tmpfs is full after
    about 4096 of them. Empty files take no pages, only inodes (and kernel memory
    charged to the container), so only an inode cap on the tmpfs stops them with
    ENOSPC before the worker's memory limit is hit.
    """
    before = sandbox.claim()
    try:
        result = sandbox.result(FILE_FLOOD, {"size": size, "max_files": 500_000}, deadline_s=CALL_TIMEOUT_S)
    except OutOfMemory as exc:
        pytest.fail(f"{what}: expected ENOSPC from the tmpfs, but the worker was OOM-killed instead "
                    f"(the /tmp tmpfs has no nr_inodes cap; kernel memory for inodes hit the "
                    f"{MEMORY_LIMIT // MIB} MiB limit): {exc}")
    assert result["errno"] == errno.ENOSPC, (what, result)
    # Data pages (4 KiB each) or inodes, whichever the tmpfs runs out of first.
    assert 0 < result["files"] <= (TMPFS_BYTES // 4096 if size else result["inodes"]), (what, result)
    assert sandbox.assert_serving() == before


FD_FLOOD = """
import os, resource

def main(inputs):
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
        raised = "raised"
    except ValueError as e:
        raised = str(e)
    fds, err = [], None
    try:
        while len(fds) < 100000:
            fds.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as e:
        err = e.errno
    highest = max(fds)
    for fd in fds:
        os.close(fd)
    return {"errno": err, "opened": len(fds), "highest_fd": highest, "rlimit": list(limits), "raise": raised}
"""


def test_fd_exhaustion_is_emfile_at_the_nofile_limit(sandbox: Sandbox) -> None:
    before = sandbox.claim()
    result = sandbox.result(FD_FLOOD, deadline_s=8)
    assert result["errno"] == errno.EMFILE, result
    assert result["rlimit"] == [NOFILE, NOFILE]
    assert result["raise"] == "not allowed to raise maximum limit"
    # Descriptors are handed out lowest first: at EMFILE every number below the limit is in use.
    assert result["highest_fd"] == NOFILE - 1, result
    assert NOFILE - 64 <= result["opened"] < NOFILE, result
    assert sandbox.assert_serving() == before


# --------------------------------------------------------------------------------------------
# output


STDOUT_FLOOD = """
import sys, time

def main(inputs):
    line = "x" * (1 << 20)
    started, n = time.monotonic(), 0
    while time.monotonic() - started < inputs["seconds"]:
        print(line)
        sys.stderr.write(line)
        sys.stdout.buffer.write(line.encode())
        n += 1
    status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
    return {"mib_each": n, "peak_rss_kb": int(status["VmHWM"].split()[0])}
"""


def test_gigabytes_of_output_are_capped_and_flagged(sandbox: Sandbox) -> None:
    before = sandbox.claim()
    out = sandbox.run(STDOUT_FLOOD, {"seconds": 1.5}, deadline_s=CALL_TIMEOUT_S)
    result = out["result"]
    printed = result["mib_each"] * (2 * MIB + 1)  # print() + the newline + buffer.write
    assert printed >= 1024 * MIB, f"only {printed} bytes printed; the attack is not a flood"
    cap = 64 * KIB  # MLBRIDGE_CUSTOM_MAX_OUTPUT_BYTES default
    for stream, expected in (("stdout", printed), ("stderr", result["mib_each"] * MIB)):
        assert out[f"{stream}_truncated"] is True
        kept = len(out[stream].encode())
        assert kept == cap, (stream, kept)
        assert kept + out[f"{stream}_dropped_bytes"] == expected, stream
    # Dropped output costs no memory: the worker's peak RSS stays far below the flood.
    assert result["peak_rss_kb"] * KIB < 128 * MIB, result
    assert sandbox.assert_serving() == before
