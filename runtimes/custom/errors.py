"""Errors specific to the custom bridge (those of user code itself live in :mod:`runtimes.core.usercode`).

Each class keeps the wire ``code`` of its core parent, so the orchestrator's
one code -> gRPC status table maps it correctly, and adds a stable, more
specific ``details["reason"]`` string that clients may branch on.
"""

from __future__ import annotations

from runtimes.core.usercode import (
    BadEntryPoint,
    Reasoned,
    UserCodeError,
    UserResultInvalid,
    UserResultTooLarge,
    UserSyntaxError,
)
from runtimes.wire.errors import (
    AlreadyExists,
    InvalidArgument,
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


class TypeNameTaken(Reasoned, AlreadyExists):
    """A user-defined resource type would shadow a built-in type."""

    reason = "TYPE_NAME_TAKEN"


class BadUserType(Reasoned, InvalidArgument):
    """register_type: bad name, missing class, or a class without the needed hooks."""

    reason = "BAD_USER_TYPE"


class UnsafePath(Reasoned, InvalidArgument):
    """A path is absolute, has ``..``, is reserved, or crosses a symlink / non-directory."""

    reason = "UNSAFE_PATH"


class BadArchive(Reasoned, InvalidArgument):
    """An upload archive is not a readable (optionally compressed) tar."""

    reason = "BAD_ARCHIVE"


class UnsafeArchiveMember(Reasoned, InvalidArgument):
    """An archive holds a symlink, hard link, device, FIFO or other non-file entry."""

    reason = "UNSAFE_ARCHIVE_MEMBER"


class UploadLimitExceeded(Reasoned, PayloadTooLarge):
    """An upload is over a limit; ``details["limit"]`` names the setting."""

    reason = "UPLOAD_LIMIT"


class PathConflict(Reasoned, AlreadyExists):
    """An upload target exists (overwrite off) or clashes with a file / directory."""

    reason = "PATH_CONFLICT"


class ScratchFull(Reasoned, QuotaExceeded):
    """The scratch file system ran out of space while staging an upload."""

    reason = "SCRATCH_FULL"


class NoSuchFile(Reasoned, NotFound):
    """A requested path does not exist in the scratch space."""

    reason = "NO_SUCH_FILE"


class NotARegularFile(Reasoned, InvalidArgument):
    """A download path is a directory, symlink, FIFO or device."""

    reason = "NOT_A_REGULAR_FILE"


class DownloadTooLarge(Reasoned, PayloadTooLarge):
    """The requested files together exceed the download cap."""

    reason = "DOWNLOAD_TOO_LARGE"
