"""Reading an uploaded tar archive (plain, gzip, bzip2 or xz) without trusting it.

The archive is decompressed by a reader that counts every byte it produces
and stops at a cap, so a compression bomb costs at most the cap whatever its
headers claim. Tar metadata headers (PAX, GNU long names) are refused above a
small size before tarfile reads them. Only regular files and directories are
accepted; links, devices, FIFOs and sparse files are refused by type.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from typing import IO, Any

from .errors import BadArchive, UnsafeArchiveMember, UploadLimitExceeded

__all__ = ["iter_members", "unpacked_limit"]

# Largest PAX / GNU long-name header tarfile may read into memory.
META_HEADER_MAX = 64 * 1024
# Tar framing allowed on top of the file bytes: a header (and maybe a PAX
# header) per entry, block padding, and the end-of-archive record.
PER_ENTRY_OVERHEAD = 4 * 1024
FIXED_OVERHEAD = 1024 * 1024

_META_TYPES = {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
               tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
_FILE_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE}
_TYPE_NAMES = {
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}


def unpacked_limit(max_upload_bytes: int, max_entries: int) -> int:
    """Cap on the decompressed tar stream: the file bytes plus framing."""
    return max_upload_bytes + max_entries * PER_ENTRY_OVERHEAD + FIXED_OVERHEAD


class _SafeTarInfo(tarfile.TarInfo):
    """Refuses oversized metadata headers before tarfile reads their payload."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> _SafeTarInfo:
        info = super().frombuf(buf, encoding, errors)
        if info.type in _META_TYPES and info.size > META_HEADER_MAX:
            raise BadArchive(
                f"archive has a {info.size}-byte metadata header (PAX / long name); "
                f"at most {META_HEADER_MAX} bytes are accepted"
            )
        return info


class _CountingReader(io.RawIOBase):
    """Decompressed bytes of the archive, counted against ``limit``."""

    def __init__(self, inner: io.BufferedIOBase, limit: int) -> None:
        self._inner = inner
        self._limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > 1 << 20:
            size = 1 << 20
        data = self._inner.read(size)
        self.count += len(data)
        if self.count > self._limit:
            raise UploadLimitExceeded(
                f"the archive unpacks to more than {self._limit} bytes",
                details={"limit": "max_unpacked_bytes", "max": self._limit},
            )
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _open_decompressed(data: bytes) -> tuple[io.BufferedIOBase, str]:
    raw = io.BytesIO(data)
    if data[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb"), "gzip"
    if data[:3] == b"BZh":
        return bz2.BZ2File(raw, mode="rb"), "bzip2"
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw, mode="rb"), "xz"
    return raw, "none"


def iter_members(data: bytes, *, limit: int) -> Iterator[tuple[tarfile.TarInfo, str, IO[bytes] | None]]:
    """Yield ``(member, kind, reader)`` for each entry; ``kind`` is "file" or "dir".

    The reader streams a file's bytes (``None`` for directories) and is only
    valid until the next member is requested.

    Raises:
        BadArchive: not a tar, corrupt, or truncated.
        UnsafeArchiveMember: an entry that is not a regular file or directory.
        UploadLimitExceeded: the decompressed stream is over ``limit``.
    """
    inner, compression = _open_decompressed(data)
    reader = _CountingReader(inner, limit)
    try:
        with tarfile.open(fileobj=reader, mode="r|", tarinfo=_SafeTarInfo) as tar:
            for member in tar:
                if member.isdir():
                    yield member, "dir", None
                elif member.type in _FILE_TYPES:
                    yield member, "file", tar.extractfile(member)
                else:
                    what = _TYPE_NAMES.get(member.type, f"entry of type {member.type!r}")
                    raise UnsafeArchiveMember(
                        f"archive entry {member.name[:200]!r} is a {what}; only regular files "
                        f"and directories may be uploaded",
                        details={"path": member.name[:200], "kind": what},
                    )
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, RecursionError,
            UnicodeError) as exc:
        raise BadArchive(
            f"cannot read the archive ({compression} compression): {type(exc).__name__}: {str(exc)[:300]}",
            details={"compression": compression},
        ) from None
    finally:
        inner.close()
