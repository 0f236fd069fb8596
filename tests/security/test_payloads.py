"""Hostile payloads: path traversal and archive bombs in uploads, oversized messages.

Every rejected upload must fail with the specific error (code plus
``details["reason"]``) and write nothing: the scratch listing and the whole of
``/tmp`` in the worker are the same before and after. Messages above the
orchestrator's 1 MiB cap are refused in both directions; output past the cap
is truncated, not an error.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtimes.wire.errors import InvalidArgument, MLBridgeError, PayloadTooLarge

from .conftest import (
    MAX_FILE_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_ENTRIES,
    Sandbox,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(180)]

KIB = 1024
MIB = 1024 * KIB
GB = 10**9


# --------------------------------------------------------------------------------------------
# what the worker's disk looks like


TMP_TREE = """
import os

STAGING = "/tmp/mlbridge-scratch/.mlbridge-staging"

def main(inputs):
    # Every path with its mode, and each non-directory's size. The (empty) staging
    # directory that the first upload creates is not a change; anything inside it is.
    out = {}
    for dirpath, dirnames, filenames in os.walk("/tmp"):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if p == STAGING:
                continue
            st = os.lstat(p)
            out[p] = [st.st_mode, None if name in dirnames else st.st_size]
    return out
"""


def disk_state(sandbox: Sandbox) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(scratch listing through custom:list_files, every path under the worker's /tmp)."""
    listing = sandbox.call("custom", "custom:list_files", {})
    return listing["entries"], sandbox.result(TMP_TREE)


def assert_rejected_and_nothing_written(sandbox: Sandbox, attachments: dict[str, bytes], args: dict[str, Any],
                                        error: type[MLBridgeError], reason: str,
                                        check: Callable[[MLBridgeError], None] | None = None) -> MLBridgeError:
    before_worker = sandbox.claim()
    before = disk_state(sandbox)
    with pytest.raises(error) as info:
        sandbox.call("custom", "custom:upload", args, attachments=attachments, deadline_s=30)
    err = info.value
    assert err.details.get("reason") == reason, (err.code, err.details, str(err))
    if check is not None:
        check(err)
    assert disk_state(sandbox) == before, "a rejected upload left something behind"
    assert sandbox.assert_serving() == before_worker
    return err


# --------------------------------------------------------------------------------------------
# attachment names


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", "..", "a/..", "./../x",
                                  ".mlbridge-staging/x", "a\\..\\..\\b", "nul\0byte"])
def test_attachment_names_that_escape_are_refused(sandbox: Sandbox, name: str) -> None:
    def check(err: MLBridgeError) -> None:
        assert err.code == "INVALID_ARGUMENT" and isinstance(err, InvalidArgument)

    # A harmless file rides along: the whole upload is refused, it is not written either.
    assert_rejected_and_nothing_written(sandbox, {"fine.txt": b"fine", name: b"evil"}, {},
                                        InvalidArgument, "UNSAFE_PATH", check)


def test_a_good_upload_is_written(sandbox: Sandbox) -> None:
    """Control for the refusals: the same call with safe names writes its files."""
    sandbox.claim()
    reply = sandbox.call("custom", "custom:upload", {"dest": "control"},
                         attachments={"fine.txt": b"fine", "sub/dir/a.txt": b"a"})
    assert sorted((f["path"], f["size"]) for f in reply["files"]) == [
        ("control/fine.txt", 4), ("control/sub/dir/a.txt", 1)], reply
    paths = {e["path"] for e in sandbox.call("custom", "custom:list_files", {"path": "control"})["entries"]}
    assert {"control/fine.txt", "control/sub/dir/a.txt"} <= paths, paths


# --------------------------------------------------------------------------------------------
# tar archives


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], compression: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if compression == "gz" else "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, **attrs: Any) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in attrs.items():
        setattr(info, k, v)
    return info, None


ARCHIVES: dict[str, tuple[Callable[[], bytes], type[MLBridgeError], str, dict[str, Any]]] = {
    "dotdot member": (lambda: _tar([_file("ok.txt"), _file("../evil.txt")]), InvalidArgument, "UNSAFE_PATH",
                      {"path": "../evil.txt"}),
    "nested dotdot member": (lambda: _tar([_file("ok.txt"), _file("a/b/../../../evil.txt")]),
                             InvalidArgument, "UNSAFE_PATH", {"path": "a/b/../../../evil.txt"}),
    "absolute member": (lambda: _tar([_file("ok.txt"), _file("/etc/cron.d/evil")]), InvalidArgument,
                        "UNSAFE_PATH", {"path": "/etc/cron.d/evil"}),
    "symlink member": (lambda: _tar([_file("ok.txt"), _special("link", tarfile.SYMTYPE, linkname="/etc/passwd")]),
                       InvalidArgument, "UNSAFE_ARCHIVE_MEMBER", {"kind": "symlink", "path": "link"}),
    "symlink then write through it": (
        lambda: _tar([_special("d", tarfile.SYMTYPE, linkname="/tmp"), _file("d/evil.txt")]),
        InvalidArgument, "UNSAFE_ARCHIVE_MEMBER", {"kind": "symlink"}),
    "hardlink member": (lambda: _tar([_file("ok.txt"), _special("hard", tarfile.LNKTYPE, linkname="ok.txt")]),
                        InvalidArgument, "UNSAFE_ARCHIVE_MEMBER", {"kind": "hard link"}),
    "char device member": (lambda: _tar([_file("ok.txt"), _special("mem", tarfile.CHRTYPE, devmajor=1,
                                                                    devminor=1)]),
                           InvalidArgument, "UNSAFE_ARCHIVE_MEMBER", {"kind": "character device"}),
    "block device member": (lambda: _tar([_file("ok.txt"), _special("sda", tarfile.BLKTYPE, devmajor=8,
                                                                     devminor=0)]),
                            InvalidArgument, "UNSAFE_ARCHIVE_MEMBER", {"kind": "block device"}),
    "fifo member": (lambda: _tar([_file("ok.txt"), _special("pipe", tarfile.FIFOTYPE)]), InvalidArgument,
                    "UNSAFE_ARCHIVE_MEMBER", {"kind": "FIFO"}),
    "too many entries": (lambda: _tar([_file(f"f{i:04d}") for i in range(MAX_UPLOAD_ENTRIES + 1)], "gz"),
                         PayloadTooLarge, "UPLOAD_LIMIT", {"limit": "max_upload_entries",
                                                          "max": MAX_UPLOAD_ENTRIES}),
    "not a tar": (lambda: gzip.compress(b"this is not a tar archive" * 100), InvalidArgument, "BAD_ARCHIVE",
                  {"compression": "gzip"}),
}


@pytest.mark.parametrize("case", list(ARCHIVES))
def test_hostile_archives_are_refused(sandbox: Sandbox, case: str) -> None:
    build, error, reason, details = ARCHIVES[case]

    def check(err: MLBridgeError) -> None:
        for k, v in details.items():
            assert err.details.get(k) == v, (k, err.details)

    assert_rejected_and_nothing_written(sandbox, {"bundle.tar.gz": build()}, {"archive": "bundle.tar.gz"},
                                        error, reason, check)


class _Zeros(io.RawIOBase):
    """``n`` zero bytes, streamed."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def gzip_bomb(path: Path, total: int, member_size: int) -> bytes:
    """A .tar.gz of ``total`` zero bytes in members of ``member_size``, written streaming."""
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        left, i = total, 0
        while left > 0:
            info = tarfile.TarInfo(f"zeros/{i:05d}.bin")
            info.size = min(member_size, left)
            tar.addfile(info, _Zeros(info.size))
            left -= info.size
            i += 1
    return path.read_bytes()


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, bytes]]:
    tmp = tmp_path_factory.mktemp("bombs")
    yield {
        # 1 GB of zeros as members at the per-file limit: the total cap stops it.
        "many members": gzip_bomb(tmp / "many.tar.gz", GB, MAX_FILE_BYTES),
        # 1 GB of zeros in one member: its header alone is over the per-file cap.
        "one member": gzip_bomb(tmp / "one.tar.gz", GB, GB),
    }


@pytest.mark.parametrize(("bomb", "limit", "cap"), [("many members", "max_upload_bytes", MAX_UPLOAD_BYTES),
                                                    ("one member", "max_file_bytes", MAX_FILE_BYTES)])
def test_gzip_bomb_is_refused_after_reading_little(sandbox: Sandbox, bombs: dict[str, bytes], bomb: str,
                                                   limit: str, cap: int) -> None:
    data = bombs[bomb]
    assert len(data) < MAX_MESSAGE_BYTES - 32 * KIB, len(data)  # it fits in a request ...
    assert GB / len(data) > 900  # ... and unpacks 900-fold

    def check(err: MLBridgeError) -> None:
        assert err.code == "PAYLOAD_TOO_LARGE"
        assert err.details["limit"] == limit and err.details["max"] == cap, err.details

    started = time.monotonic()
    assert_rejected_and_nothing_written(sandbox, {"bomb.tar.gz": data}, {"archive": "bomb.tar.gz"},
                                        PayloadTooLarge, "UPLOAD_LIMIT", check)
    # It stopped at the cap instead of inflating a gigabyte (and a cheap call proves the worker idle).
    assert time.monotonic() - started < 15


# --------------------------------------------------------------------------------------------
# message size caps, both directions


def test_request_over_the_message_cap_is_refused(sandbox: Sandbox) -> None:
    before = sandbox.claim()
    code = "BLOB = '" + "a" * (MAX_MESSAGE_BYTES + 64 * KIB) + "'\ndef main(inputs):\n    return len(BLOB)\n"
    with pytest.raises(PayloadTooLarge) as info:
        sandbox.run(code)
    assert info.value.code == "PAYLOAD_TOO_LARGE"
    assert info.value.details.get("grpc_status") == "RESOURCE_EXHAUSTED", info.value.details
    assert f"vs. {MAX_MESSAGE_BYTES}" in str(info.value), str(info.value)
    # The same through attachments.
    with pytest.raises(PayloadTooLarge):
        sandbox.call("custom", "custom:upload", {}, attachments={"big.bin": b"\0" * (MAX_MESSAGE_BYTES + 1)})
    assert sandbox.assert_serving() == before


def test_result_over_the_message_cap_is_payload_too_large(sandbox: Sandbox) -> None:
    before = sandbox.claim()
    with pytest.raises(PayloadTooLarge) as info:
        sandbox.run("def main(inputs):\n    return 'x' * (2 * 1024 * 1024)\n")
    err = info.value
    assert err.code == "PAYLOAD_TOO_LARGE"
    assert err.details["limit"] == MAX_MESSAGE_BYTES - 4096, err.details
    assert err.details["size"] > 2 * MIB, err.details
    # The runtime refused its own reply; it is healthy and kept.
    assert sandbox.assert_serving() == before


@pytest.mark.parametrize("max_output_bytes", [None, 1 * MIB], ids=["default-cap", "hard-max-cap"])
def test_output_past_the_message_cap_is_truncated_not_an_error(sandbox: Sandbox,
                                                                max_output_bytes: int | None) -> None:
    before = sandbox.claim()
    code = """
        import sys
        def main(inputs):
            line = "y" * (64 * 1024)
            for _ in range(48):          # 3 MiB on each stream, 3x the message cap
                print(line)
                sys.stderr.write(line)
            return "done"
    """
    extra: dict[str, Any] = {} if max_output_bytes is None else {"max_output_bytes": max_output_bytes}
    out = sandbox.run(code, **extra)
    cap = max_output_bytes or 64 * KIB
    assert out["result"] == "done"
    for stream in ("stdout", "stderr"):
        assert out[f"{stream}_truncated"] is True
        assert len(out[stream].encode()) <= cap
        assert len(out[stream].encode()) + out[f"{stream}_dropped_bytes"] >= 3 * MIB
    assert sandbox.assert_serving() == before
