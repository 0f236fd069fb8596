"""The worker's scratch space: safe paths, listing, reading and staged writes.

Every operation starts from a descriptor of the scratch root and walks one
path component at a time with ``O_NOFOLLOW``, so no symlink is ever followed,
even one user code planted (or swaps in mid-call) that points back inside.
A path is also checked lexically (relative, no ``..``, not reserved) and its
``realpath`` confirmed inside the root, so the error says what was wrong.

Uploads are staged first into a private directory under the root
(``.mlbridge-staging/``, hidden from listings and refused as a user path) and
only moved into place by ``rename`` once every check passed: a rejected upload
writes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from runtimes.wire.errors import ConfigError

from .errors import (
    DownloadTooLarge,
    NoSuchFile,
    NotARegularFile,
    PathConflict,
    ScratchFull,
    UnsafePath,
    UploadLimitExceeded,
)

__all__ = ["RESERVED_PREFIX", "Scratch", "Staging", "split_path"]

RESERVED_PREFIX = ".mlbridge"
STAGING_DIR = ".mlbridge-staging"
MAX_PATH_CHARS = 4096
MAX_DEPTH = 64

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO must not block open
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20


def split_path(name: object, *, allow_root: bool = False) -> tuple[str, ...]:
    """Validate a user-supplied relative path and return its components.

    Raises:
        UnsafePath: not a string, empty, absolute, with ``..``, a NUL or
            control character, a backslash, too long or deep, or under the
            reserved ``.mlbridge*`` top-level name.
    """
    if not isinstance(name, str):
        raise UnsafePath(f"a path must be a string, got {type(name).__name__}")
    shown = name[:200]
    if len(name) > MAX_PATH_CHARS:
        raise UnsafePath(f"path is longer than {MAX_PATH_CHARS} characters", details={"path": shown})
    if name.startswith("/"):
        raise UnsafePath(f"absolute paths are not allowed: {shown!r}", details={"path": shown})
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        raise UnsafePath(f"path has a NUL or control character: {shown!r}", details={"path": shown})
    if "\\" in name:
        raise UnsafePath(f"backslashes are not allowed in paths: {shown!r}", details={"path": shown})
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafePath(f"'..' is not allowed in paths: {shown!r}", details={"path": shown})
    if not parts:
        if allow_root:
            return ()
        raise UnsafePath(f"path {shown!r} names no file", details={"path": shown})
    if len(parts) > MAX_DEPTH or any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        raise UnsafePath(f"path {shown!r} is too deep or has a component over 255 bytes",
                         details={"path": shown})
    if parts[0].startswith(RESERVED_PREFIX):
        raise UnsafePath(f"top-level names starting with {RESERVED_PREFIX!r} are reserved: {shown!r}",
                         details={"path": shown})
    return parts


def _join(parts: tuple[str, ...]) -> str:
    return "/".join(parts)


@dataclass
class Staging:
    """Files of one upload, written under the staging directory, not yet in place."""

    scratch: Scratch
    fd: int
    name: str
    files: dict[tuple[str, ...], tuple[str, int]] = field(default_factory=dict)  # path -> (staged, size)
    dirs: set[tuple[str, ...]] = field(default_factory=set)
    total: int = 0

    def add_dir(self, parts: tuple[str, ...]) -> None:
        self.dirs.add(parts)

    def add_file(self, parts: tuple[str, ...], src: IO[bytes] | bytes, *, max_file: int,
                 max_total: int) -> int:
        """Copy one file into staging, enforcing the per-file and total caps as it streams."""
        if parts in self.files:
            raise PathConflict(f"the upload names {_join(parts)!r} twice", details={"path": _join(parts)})
        staged = str(len(self.files))
        size = 0
        out = os.open(staged, _NEW_FILE_FLAGS, 0o600, dir_fd=self.fd)
        try:
            view = memoryview(src) if isinstance(src, bytes) else None
            while True:
                chunk = view[size : size + _COPY_CHUNK] if view is not None else src.read(_COPY_CHUNK)  # type: ignore[union-attr]
                if not chunk:
                    break
                size += len(chunk)
                if size > max_file:
                    raise UploadLimitExceeded(
                        f"{_join(parts)!r} is over the per-file limit of {max_file} bytes",
                        details={"limit": "max_file_bytes", "max": max_file, "path": _join(parts)},
                    )
                if self.total + size > max_total:
                    raise UploadLimitExceeded(
                        f"the upload is over the total limit of {max_total} bytes",
                        details={"limit": "max_upload_bytes", "max": max_total},
                    )
                _write_all(out, chunk)
        except OSError as exc:
            raise _os_error(exc, "staging an upload") from None
        finally:
            os.close(out)
        self.files[parts] = (staged, size)
        self.total += size
        return size

    def commit(self, *, overwrite: bool) -> list[dict[str, Any]]:
        """Check every target, then rename the staged files into place."""
        self._check_targets(overwrite)
        written: list[dict[str, Any]] = []
        root = self.scratch.open_root()
        try:
            for parts in sorted(self.dirs):
                os.close(self.scratch.walk(root, parts, create=True))
            for parts, (staged, size) in self.files.items():
                parent = self.scratch.walk(root, parts[:-1], create=True)
                try:
                    os.replace(staged, parts[-1], src_dir_fd=self.fd, dst_dir_fd=parent)
                finally:
                    os.close(parent)
                written.append({"path": _join(parts), "size": size})
        except OSError as exc:
            raise _os_error(exc, "moving uploaded files into place") from None
        finally:
            os.close(root)
        return written

    def _check_targets(self, overwrite: bool) -> None:
        file_paths = set(self.files)
        for parts in file_paths:
            for i in range(1, len(parts)):
                if parts[:i] in file_paths:
                    raise PathConflict(f"the upload has {_join(parts[:i])!r} both as a file and a directory",
                                       details={"path": _join(parts[:i])})
        for parts in self.dirs:
            if parts in file_paths:
                raise PathConflict(f"the upload has {_join(parts)!r} both as a file and a directory",
                                   details={"path": _join(parts)})
        root = self.scratch.open_root()
        try:
            for parts in [*file_paths, *self.dirs]:
                self.scratch.resolve_inside(parts)
                kind = self.scratch.kind_of(root, parts)
                is_file = parts in file_paths
                if kind is None:
                    continue
                if is_file and kind == "dir":
                    raise PathConflict(f"{_join(parts)!r} exists as a directory", details={"path": _join(parts)})
                if not is_file and kind != "dir":
                    raise PathConflict(f"{_join(parts)!r} exists and is not a directory",
                                       details={"path": _join(parts)})
                if is_file and not overwrite:
                    raise PathConflict(f"{_join(parts)!r} exists and overwrite is false",
                                       details={"path": _join(parts)})
        finally:
            os.close(root)

    def discard(self) -> None:
        os.close(self.fd)
        self.scratch.remove_staging(self.name)


class Scratch:
    """The scratch root directory and the safe operations on it."""

    def __init__(self, path: str) -> None:
        self.path = os.path.realpath(path)

    # -- root ---------------------------------------------------------------
    def ensure(self) -> None:
        """Create the root (0700) and clear staging left by a previous process."""
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the scratch directory {self.path!r}: {exc}; set MLBRIDGE_SCRATCH "
                f"to a writable directory (a tmpfs in the container)"
            ) from None
        self.remove_staging("")

    def open_root(self) -> int:
        try:
            return os.open(self.path, _DIR_FLAGS)
        except FileNotFoundError:  # user code removed it: recreate, empty
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            return os.open(self.path, _DIR_FLAGS)
        except OSError as exc:
            raise ConfigError(f"the scratch directory {self.path!r} is unusable "
                              f"(replaced by a symlink or a file?): {exc}") from None

    def resolve_inside(self, parts: tuple[str, ...]) -> str:
        """The path's realpath, confirmed inside the root (lexical defence; the fd walk enforces)."""
        full = os.path.realpath(os.path.join(self.path, *parts))
        if os.path.commonpath([full, self.path]) != self.path:
            raise UnsafePath(f"{_join(parts)!r} resolves outside the scratch space (through a symlink)",
                             details={"path": _join(parts)})
        return full

    def walk(self, root: int, parts: tuple[str, ...], *, create: bool = False) -> int:
        """Open the directory ``parts`` under ``root`` without following symlinks."""
        fd = os.dup(root)
        try:
            for i, part in enumerate(parts):
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise NoSuchFile(f"no directory {_join(parts[: i + 1])!r} in the scratch space",
                                         details={"path": _join(parts[: i + 1])}) from None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o700, dir_fd=fd)
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafePath(
                            f"{_join(parts[: i + 1])!r} is a symlink or not a directory; "
                            f"symlinks are never followed in the scratch space",
                            details={"path": _join(parts[: i + 1])},
                        ) from None
                    raise
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def kind_of(self, root: int, parts: tuple[str, ...]) -> str | None:
        """'file', 'dir', 'symlink' or 'other' for an existing path, None if absent."""
        try:
            parent = self.walk(root, parts[:-1])
        except NoSuchFile:
            return None
        try:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(parent)
        return _kind(st.st_mode)

    # -- reading -------------------------------------------------------------
    def read_files(self, names: list[object], max_total: int) -> dict[str, bytes]:
        """Read regular files by relative path, at most ``max_total`` bytes together."""
        out: dict[str, bytes] = {}
        total = 0
        root = self.open_root()
        try:
            for name in names:
                parts = split_path(name)
                key = _join(parts)
                if key in out:
                    continue
                self.resolve_inside(parts)
                data = self._read_one(root, parts, max_total - total)
                total += len(data)
                out[key] = data
        finally:
            os.close(root)
        return out

    def _read_one(self, root: int, parts: tuple[str, ...], budget: int) -> bytes:
        parent = self.walk(root, parts[:-1])
        try:
            fd = os.open(parts[-1], _READ_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            raise NoSuchFile(f"no file {_join(parts)!r} in the scratch space", details={"path": _join(parts)}) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise NotARegularFile(f"{_join(parts)!r} is a symlink; symlinks are never followed",
                                      details={"path": _join(parts), "kind": "symlink"}) from None
            raise
        finally:
            os.close(parent)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotARegularFile(f"{_join(parts)!r} is a {_kind(st.st_mode)}, not a regular file",
                                      details={"path": _join(parts), "kind": _kind(st.st_mode)})
            if st.st_size > budget:
                raise DownloadTooLarge(
                    f"{_join(parts)!r} ({st.st_size} bytes) does not fit the download cap",
                    details={"path": _join(parts), "size": st.st_size, "remaining": max(budget, 0)},
                )
            chunks: list[bytes] = []
            got = 0
            while True:  # the file may grow while we read: never past the budget
                chunk = os.read(fd, min(_COPY_CHUNK, budget - got + 1))
                if not chunk:
                    break
                got += len(chunk)
                if got > budget:
                    raise DownloadTooLarge(f"{_join(parts)!r} grew past the download cap",
                                           details={"path": _join(parts)})
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def list(self, start: object, *, recursive: bool, max_entries: int) -> dict[str, Any]:
        """Entries under ``start`` (no symlink followed), breadth first, capped."""
        parts = split_path(start, allow_root=True) if start else ()
        self.resolve_inside(parts)
        root = self.open_root()
        try:
            top = self.walk(root, parts)
        finally:
            os.close(root)
        entries: list[dict[str, Any]] = []
        truncated = False
        queue: list[tuple[int, tuple[str, ...]]] = [(top, parts)]
        try:
            while queue:
                dfd, rel = queue.pop(0)
                try:
                    for entry in sorted(_scan(dfd), key=lambda e: e.name):
                        if not rel and entry.name.startswith(RESERVED_PREFIX):
                            continue
                        if len(entries) >= max_entries:
                            truncated = True
                            break
                        st = entry.stat(follow_symlinks=False)
                        kind = _kind(st.st_mode)
                        path = _join((*rel, entry.name))
                        entries.append({"path": path, "type": kind, "size": st.st_size if kind == "file" else 0})
                        if recursive and kind == "dir" and len(rel) < MAX_DEPTH:
                            with contextlib.suppress(OSError):
                                queue.append((os.open(entry.name, _DIR_FLAGS, dir_fd=dfd), (*rel, entry.name)))
                finally:
                    os.close(dfd)
                if truncated:
                    break
        finally:
            for dfd, _ in queue:
                os.close(dfd)
        return {"root": _join(parts), "entries": entries, "truncated": truncated}

    # -- staging ---------------------------------------------------------------
    def new_staging(self) -> Staging:
        root = self.open_root()
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(STAGING_DIR, 0o700, dir_fd=root)
            try:
                base = self.walk(root, (STAGING_DIR,))
            except UnsafePath:  # user code put a symlink or file there: replace it
                os.unlink(STAGING_DIR, dir_fd=root)
                os.mkdir(STAGING_DIR, 0o700, dir_fd=root)
                base = self.walk(root, (STAGING_DIR,))
        finally:
            os.close(root)
        try:
            name = uuid.uuid4().hex
            os.mkdir(name, 0o700, dir_fd=base)
            fd = os.open(name, _DIR_FLAGS, dir_fd=base)
        finally:
            os.close(base)
        return Staging(self, fd, name)

    def remove_staging(self, name: str) -> None:
        """Remove one staging directory ("" for all of them)."""
        target = os.path.join(self.path, STAGING_DIR, name) if name else os.path.join(self.path, STAGING_DIR)
        # rmtree works on descriptors here and does not follow symlinks.
        shutil.rmtree(target, ignore_errors=True)


def _scan(dfd: int) -> Iterator[os.DirEntry[str]]:
    with os.scandir(dfd) as it:
        yield from list(it)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _os_error(exc: OSError, doing: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ScratchFull(f"the scratch space is full while {doing}",
                           details={"quota": "scratch"})
    return exc
