"""How a model directory is named by its content: both halves compute it the same way.

A model in the host's store is a directory of files (weights, config,
tokenizer). Its *manifest* maps each file's path (relative, ``/``-separated)
to the sha256 of its bytes; its *hash* is the sha256 of the manifest in
canonical JSON. The store records the manifest when a model is added; a
runtime given a model re-hashes the files it is about to load and refuses
them if any differs, so a file changed on disk after it was recorded is
never loaded, and a model a runtime exports (a fine-tuned one) arrives with
a hash the host checks by the same rules.

Only regular files count: a symlink, socket or device anywhere in a model
directory is refused, so a directory cannot smuggle in a path outside itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ArtifactError", "hash_file", "manifest", "manifest_hash", "mismatches", "total_size"]

_CHUNK = 1 << 20


class ArtifactError(ValueError):
    """A model directory that cannot be recorded (a link or special file, or nothing in it)."""


def hash_file(path: Path) -> str:
    """The sha256 (hex) of one file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in dirnames:
            if (base / name).is_symlink():
                raise ArtifactError(f"{base / name} is a symlink; a model directory holds only regular files")
        for name in filenames:
            path = base / name
            mode = path.lstat().st_mode
            if not stat.S_ISREG(mode):
                raise ArtifactError(f"{path} is not a regular file; a model directory holds only regular files")
            out.append((path.relative_to(root).as_posix(), path))
    return sorted(out)


def manifest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path) and its sha256.

    Raises:
        ArtifactError: ``root`` is not a directory, is empty, or holds a link or special file.
    """
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a directory")
    files = {rel: hash_file(path) for rel, path in _files(root)}
    if not files:
        raise ArtifactError(f"{root} holds no files")
    return files


def manifest_hash(files: Mapping[str, str]) -> str:
    """The model's content address: sha256 of its manifest in canonical JSON."""
    canonical = json.dumps(dict(sorted(files.items())), separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def total_size(root: Path, files: Mapping[str, str]) -> int:
    """The bytes of the manifest's files under ``root``."""
    return sum((root / rel).stat().st_size for rel in files)


def mismatches(root: Path, files: Mapping[str, str]) -> list[str]:
    """The manifest's files under ``root`` that are missing, not regular, or whose bytes differ.

    Files under ``root`` the manifest does not name are reported too: a
    loader could pick them up (an extra weights shard, a changed config).
    """
    bad: list[str] = []
    try:
        present = dict(_files(root))
    except (ArtifactError, OSError) as exc:
        return [str(exc)]
    for rel, digest in sorted(files.items()):
        path = present.pop(rel, None)
        if path is None:
            bad.append(f"{rel} (missing)")
        elif hash_file(path) != digest:
            bad.append(f"{rel} (sha256 differs)")
    bad.extend(f"{rel} (not recorded)" for rel in sorted(present))
    return bad
