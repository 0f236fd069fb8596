"""Errors specific to the custom bridge.

Each class keeps the wire ``code`` of its core parent, so the orchestrator's
one code -> gRPC status table maps it correctly, and adds a stable, more
specific ``details["reason"]`` string that clients may branch on.
"""

from __future__ import annotations

from typing import Any, ClassVar

from runtimes.wire.errors import (
    AlreadyExists,
    FrameworkError,
    InvalidArgument,
    InvalidResult,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
)

__all__ = [
    "BadArchive",
    "BadEntryPoint",
    "BadUserType",
    "DownloadTooLarge",
    "NoSuchFile",
    "NotARegularFile",
    "PathConflict",
    "ScratchFull",
    "TypeNameTaken",
    "UnsafeArchiveMember",
    "UnsafePath",
    "UploadLimitExceeded",
    "UserCodeError",
    "UserResultInvalid",
    "UserResultTooLarge",
    "UserSyntaxError",
]


class _Reasoned:
    """Mixin: puts the class's ``reason`` first in ``details``."""

    reason: ClassVar[str] = ""

    def __init__(self, message: str = "", *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details={"reason": self.reason, **(details or {})})  # type: ignore[call-arg]


class UserSyntaxError(_Reasoned, InvalidArgument):
    """User source does not compile; details carry ``line``, ``offset``, ``text``."""

    reason = "SYNTAX_ERROR"


class BadEntryPoint(_Reasoned, InvalidArgument):
    """The source defines no callable ``main`` (or one with an unusable signature)."""

    reason = "NO_MAIN"


class UserCodeError(_Reasoned, FrameworkError):
    """User code raised; details carry ``exception_type``, ``traceback`` (user frames only)."""

    reason = "USER_EXCEPTION"


class UserResultInvalid(_Reasoned, InvalidResult):
    """User code returned (or yielded) a value that is not JSON-serialisable."""

    reason = "RESULT_NOT_JSON"


class UserResultTooLarge(_Reasoned, PayloadTooLarge):
    """User code returned (or yielded) more JSON than the result cap allows."""

    reason = "RESULT_TOO_LARGE"


class TypeNameTaken(_Reasoned, AlreadyExists):
    """A user-defined resource type would shadow a built-in type."""

    reason = "TYPE_NAME_TAKEN"


class BadUserType(_Reasoned, InvalidArgument):
    """register_type: bad name, missing class, or a class without the needed hooks."""

    reason = "BAD_USER_TYPE"


class UnsafePath(_Reasoned, InvalidArgument):
    """A path is absolute, has ``..``, is reserved, or crosses a symlink / non-directory."""

    reason = "UNSAFE_PATH"


class BadArchive(_Reasoned, InvalidArgument):
    """An upload archive is not a readable (optionally compressed) tar."""

    reason = "BAD_ARCHIVE"


class UnsafeArchiveMember(_Reasoned, InvalidArgument):
    """An archive holds a symlink, hard link, device, FIFO or other non-file entry."""

    reason = "UNSAFE_ARCHIVE_MEMBER"


class UploadLimitExceeded(_Reasoned, PayloadTooLarge):
    """An upload is over a limit; ``details["limit"]`` names the setting."""

    reason = "UPLOAD_LIMIT"


class PathConflict(_Reasoned, AlreadyExists):
    """An upload target exists (overwrite off) or clashes with a file / directory."""

    reason = "PATH_CONFLICT"


class ScratchFull(_Reasoned, QuotaExceeded):
    """The scratch file system ran out of space while staging an upload."""

    reason = "SCRATCH_FULL"


class NoSuchFile(_Reasoned, NotFound):
    """A requested path does not exist in the scratch space."""

    reason = "NO_SUCH_FILE"


class NotARegularFile(_Reasoned, InvalidArgument):
    """A download path is a directory, symlink, FIFO or device."""

    reason = "NOT_A_REGULAR_FILE"


class DownloadTooLarge(_Reasoned, PayloadTooLarge):
    """The requested files together exceed the download cap."""

    reason = "DOWNLOAD_TOO_LARGE"
