"""The model store: models are artifacts on the host, named by their content.

Layout under the store's root::

    objects/<hash>/...        one copy of each distinct model directory (read-only files)
    refs/_/<name>.json        models the operator added (``mlbridge models add``)
    refs/<tenant>/<name>.json models a tenant exported (a fine-tuned model), private to it

A *ref* records a name, the model's hash (:func:`runtimes.wire.artifacts.manifest_hash`),
the sha256 of every file, its size and where it came from. Two names with
the same content share one object; removing the last name removes the
object. Adding copies into a temporary directory, hashes the *copy*, and
renames it into place, so a source changed mid-copy is caught and a crash
leaves no half object. Writers take an ``fcntl`` lock on the store, so the
CLI and a running orchestrator can add at the same time.

Workers never write here: the docker backend mounts a tenant's objects into
its workers read-only, and the runtime re-hashes files before loading them.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtimes.wire.artifacts import ArtifactError, manifest, manifest_hash, mismatches, total_size
from runtimes.wire.errors import AlreadyExists, ArtifactMismatch, InvalidArgument, NotFound

__all__ = ["OPERATOR", "ModelRecord", "ModelStore"]

#: The owner of models the operator added; tenants' exports are owned by the tenant.
OPERATOR = "_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_OWNER = re.compile(r"^(_|[A-Za-z0-9][A-Za-z0-9._-]{0,127})$")
_HASH = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelRecord:
    """One name in the store."""

    name: str
    hash: str
    files: dict[str, str]
    size_bytes: int
    owner: str = OPERATOR
    added: float = 0.0
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "hash": self.hash, "size_bytes": self.size_bytes, "files": len(self.files),
                "owner": "operator" if self.owner == OPERATOR else self.owner, "added": self.added,
                "source": self.source}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument(f"model name {str(name)[:100]!r} must match {_NAME.pattern}")
    return name


def _check_owner(owner: str) -> str:
    if not _OWNER.match(owner):
        raise InvalidArgument(f"model owner {owner[:100]!r} is not a tenant name")
    return owner


def _seal(root: Path) -> None:
    """Files 0444, directories 0555: nobody writes to a stored object by accident."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.chmod(Path(dirpath) / name, 0o444)
        os.chmod(dirpath, 0o555)


def _unseal(root: Path) -> None:
    for dirpath, _dirs, _files in os.walk(root):
        os.chmod(dirpath, 0o755)


class ModelStore:
    """A content-addressed store of model directories at ``root`` (created on first write)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @property
    def objects(self) -> Path:
        return self.root / "objects"

    def object_path(self, hash_: str) -> Path:
        if not _HASH.match(hash_):
            raise InvalidArgument(f"{hash_[:80]!r} is not a model hash")
        return self.objects / hash_

    def _ref(self, owner: str, name: str) -> Path:
        return self.root / "refs" / _check_owner(owner) / f"{_check_name(name)}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- reading -------------------------------------------------------------------------
    def get(self, name: str, owner: str = OPERATOR) -> ModelRecord:
        """The record of ``name``; NotFound when the store has none."""
        path = self._ref(owner, name)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            whose = "" if owner == OPERATOR else f" of tenant {owner!r}"
            raise NotFound(f"no model {name!r}{whose} in the model store at {self.root}") from None
        return ModelRecord(**data)

    def list(self, owner: str | None = OPERATOR) -> builtins.list[ModelRecord]:
        """Records of one owner (the operator's by default; every owner's with None), by name."""
        base = self.root / "refs"
        owners = [owner] if owner is not None else sorted(p.name for p in base.iterdir()) if base.is_dir() else []
        out: list[ModelRecord] = []
        for who in owners:
            folder = base / who
            for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
                with contextlib.suppress(OSError, ValueError, TypeError):
                    out.append(ModelRecord(**json.loads(path.read_text())))
        return out

    def verify(self, name: str, owner: str = OPERATOR) -> builtins.list[str]:
        """The files of ``name`` whose bytes no longer match the record (empty: intact)."""
        rec = self.get(name, owner)
        return mismatches(self.object_path(rec.hash), rec.files)

    # -- writing -------------------------------------------------------------------------
    def add(self, src: Path | str, name: str, *, owner: str = OPERATOR, replace: bool = False,
            expect_hash: str | None = None, source: str = "") -> ModelRecord:
        """Import the model directory ``src`` as ``name``.

        Args:
            replace: point an existing name at the new content (else ALREADY_EXISTS).
            expect_hash: refuse the import unless the copy hashes to this (an export's claim).

        Raises:
            InvalidArgument: ``src`` is not a directory of regular files, or a bad name.
            AlreadyExists: ``name`` names other content and ``replace`` is false.
            ArtifactMismatch: the copy's hash differs from ``expect_hash``.
        """
        src = Path(src)
        _check_name(name)
        try:
            files = manifest(src)
        except (ArtifactError, OSError) as exc:
            raise InvalidArgument(f"cannot add {src}: {exc}") from None
        with self._locked():
            ref = self._ref(owner, name)
            old = self.get(name, owner) if ref.exists() else None
            self.objects.mkdir(parents=True, exist_ok=True)
            tmp = self.objects / f".tmp-{uuid.uuid4().hex}"
            try:
                shutil.copytree(src, tmp, symlinks=True)
                copied = manifest(tmp)  # the copy is what is kept: hash what was copied
                digest = manifest_hash(copied)
                if expect_hash is not None and digest != expect_hash:
                    raise ArtifactMismatch(f"model {name!r} arrived with hash {digest[:12]}, not the "
                                           f"{expect_hash[:12]} it was announced with; not imported")
                if copied != files:
                    raise ArtifactMismatch(f"{src} changed while it was being copied; add it again")
                if old is not None and old.hash != digest and not replace:
                    raise AlreadyExists(f"model {name!r} already names {old.hash[:12]} in the store; "
                                        "remove it first, choose another name, or pass --replace")
                final = self.objects / digest
                if final.exists():
                    if mismatches(final, copied):  # a damaged object: put the fresh copy in its place
                        _unseal(final)
                        shutil.rmtree(final)
                        _seal(tmp)
                        tmp.rename(final)
                else:
                    _seal(tmp)
                    tmp.rename(final)
            except ArtifactError as exc:
                raise InvalidArgument(f"cannot add {src}: {exc}") from None
            finally:
                if tmp.exists():
                    _unseal(tmp)
                    shutil.rmtree(tmp, ignore_errors=True)
            rec = ModelRecord(name=name, hash=digest, files=copied, size_bytes=total_size(final, copied),
                              owner=owner, added=time.time(), source=source or str(src.resolve()))
            ref.parent.mkdir(parents=True, exist_ok=True)
            tmp_ref = ref.with_suffix(f".{uuid.uuid4().hex}.tmp")
            tmp_ref.write_text(json.dumps(asdict(rec), indent=1, sort_keys=True))
            tmp_ref.rename(ref)
            if old is not None and old.hash != digest:
                self._collect(old.hash)
        return rec

    def remove(self, name: str, owner: str = OPERATOR) -> ModelRecord:
        """Drop ``name``; its object goes too when no other name uses it.

        Workers that loaded it keep it in memory; new claims no longer get it.
        """
        with self._locked():
            rec = self.get(name, owner)
            self._ref(owner, name).unlink()
            self._collect(rec.hash)
        return rec

    def _collect(self, hash_: str) -> None:
        if any(r.hash == hash_ for r in self.list(None)):
            return
        path = self.object_path(hash_)
        if path.exists() and not stat.S_ISLNK(path.lstat().st_mode):
            _unseal(path)
            shutil.rmtree(path, ignore_errors=True)
