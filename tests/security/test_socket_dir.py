"""The one writable host path: the worker's socket directory (``/run/mlbridge``).

Each worker's socket directory is bind-mounted read-write into its container
(the runtime creates its socket there). With the docker backend each socket
directory is its own tiny tmpfs (64 KiB, 16 inodes), so a worker can fill
neither the host's disk nor space or inodes that other workers' sockets need.
These tests check both halves: the flood stays in that tmpfs, and it does not
stop *other* workers (of any bridge or tenant) from starting. The attacking worker is killed afterwards,
whatever the outcome, so its files go away.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtimes.wire.errors import MLBridgeError

from .conftest import Sandbox, attack_server

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """This module's own server: a failure here must not break the other modules' workers."""
    with attack_server(tmp_path_factory.mktemp("socketdir")) as srv:
        box = Sandbox(srv)
        try:
            yield box
        finally:
            box.close()


FLOOD = """
import errno, os, threading, time

def fill_inodes(d, start, until):
    n, err = start, None
    while time.monotonic() < until:
        try:
            os.close(os.open(f"{d}/f{n}", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
            n += 1
        except OSError as e:
            err = e.errno
            if start == 0:
                return n, err       # the first pass stops at the first error
            time.sleep(0.002)       # the hog grabs every inode freed later
    return n, err

def main(inputs):
    d = "/run/mlbridge"
    n, err = 0, None
    if inputs["what"] == "inodes":
        n, err = fill_inodes(d, 0, time.monotonic() + 10)
        # Keep the file system full for a while: take back any inode that is freed.
        threading.Thread(target=fill_inodes, args=(d, n, time.monotonic() + inputs["hold_s"]),
                         daemon=True).start()
    else:
        try:
            with open(f"{d}/fill", "wb") as f:
                while n < 1024:
                    f.write(b"\\0" * 2**20)
                    f.flush()
                    n += 1
        except OSError as e:
            err = e.errno
    st = os.statvfs(d)
    return {"count": n, "errno": err, "fs_bytes": st.f_blocks * st.f_frsize, "fs_inodes": st.f_files,
            "free_inodes": st.f_ffree, "free_bytes": st.f_bfree * st.f_frsize}
"""


def _is_tmpfs(path: Path) -> bool:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        if fields[4] == str(path) and fields[sep + 1] == "tmpfs":
            return True
    return False


def _retire(sandbox: Sandbox, bridge: str, worker_id: str) -> None:
    async def go() -> None:
        pool = sandbox.srv.orch.pools[bridge]
        w = pool.workers.get(worker_id)
        if w is not None:
            await pool.retire(w, "killed by the test")
    sandbox.srv.run(go(), timeout=60)


@pytest.mark.parametrize("what", ["inodes", "bytes"])
def test_filling_the_socket_dir_does_not_stop_other_workers(sandbox: Sandbox, what: str) -> None:
    attacker = sandbox.claim()
    own_dir = sandbox.srv.app.backend.sockets.root / attacker
    assert _is_tmpfs(own_dir), f"the worker's socket dir {own_dir} is not its own tmpfs: host disk exposed"
    try:
        result = sandbox.result(FLOOD, {"what": what, "hold_s": 60}, deadline_s=20)
        # Bounded: the writes end in ENOSPC in memory (a tmpfs), never on the host's disk, or
        # are refused outright (EACCES) where the directory is not writable once the socket exists.
        assert result["errno"] in (errno.ENOSPC, errno.EACCES), result
        assert result["fs_bytes"] <= 64 * 1024 and result["fs_inodes"] <= 16, result
        # Other workers must still start: kill the mock worker, so the next call needs a new one.
        for mock_worker in sandbox.workers("mock"):
            _retire(sandbox, "mock", mock_worker)
        started = time.monotonic()
        try:
            assert sandbox.call("mock", "mock:echo", {"after": what}) == {"after": what}
        except MLBridgeError as exc:
            pytest.fail(f"after one worker filled its socket directory ({what}: {result}), a new mock worker "
                        f"could not start ({time.monotonic() - started:.1f}s): {exc}. All workers' socket "
                        f"directories share one tmpfs, so one worker can starve every other tenant.")
    finally:
        _retire(sandbox, "custom", attacker)
        # With the attacker gone, everything serves again on fresh workers.
        deadline = time.monotonic() + 30
        while True:
            try:
                assert sandbox.assert_serving() != attacker
                break
            except MLBridgeError:
                assert time.monotonic() < deadline, "the orchestrator did not recover after the attacker was killed"
                time.sleep(0.5)
