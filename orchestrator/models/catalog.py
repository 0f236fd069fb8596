"""Which models a tenant's worker gets, and taking in the models a worker exports.

The claim pipeline asks :meth:`ModelCatalog.grant` for a claimed worker of a
bridge with ``models: true``: the operator's models the tenant's policy
admits (``models:`` globs; every model with no policy) and the tenant's own
exports, mounted into the worker by the backend and described to the
runtime (names, hashes, every file's sha256) in ``Configure``.

After a call whose reply lists exported models (metadata
``mlbridge-exported-models``), :meth:`ModelCatalog.import_exports` copies
each from the worker's export directory into the store as the tenant's own
model, re-hashing the copy: a worker can offer a model, never write one into
the store by itself, and never name a file outside its export directory.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from runtimes.wire import metadata as meta
from runtimes.wire.errors import ConfigError, InvalidArgument, NotFound
from runtimes.wire.payload import loads_lenient
from runtimes.wire.proto import runtime_pb2 as rpb

from ..backends.base import Backend, SupportsModels
from ..config import BridgeConfig
from ..worker import Worker
from .store import OPERATOR, ModelRecord, ModelStore

__all__ = ["ModelAccess", "ModelCatalog"]

log = logging.getLogger("mlbridge.models")

#: Most models one reply may export.
MAX_EXPORTS = 8


class ModelAccess(Protocol):
    """Whether a tenant may load one of the operator's models (:class:`orchestrator.policy.Policy` is one)."""

    def model_allowed(self, tenant: str, model: str) -> bool: ...

    def model_shared(self, model: str) -> bool:
        """Whether every tenant may load the operator's model ``model`` (so a spare may hold it loaded)."""
        ...


class ModelCatalog:
    """The model store as the claim pipeline and the service use it.

    Args:
        store: the model store.
        access: the tenants' model permissions (None: every tenant may load every operator model).
        backend: mounts models into workers; must support :class:`SupportsModels`.
    """

    def __init__(self, store: ModelStore, access: ModelAccess | None, backend: Backend) -> None:
        if not isinstance(backend, SupportsModels):
            raise ConfigError(f"the {backend.name!r} backend cannot give workers models; "
                              "remove models: true from the bridges or use the docker or process backend")
        self.store = store
        self.access = access
        self.backend: SupportsModels = backend

    def for_tenant(self, tenant: str) -> list[ModelRecord]:
        """The operator's models the tenant may load, then its own exports (which shadow a same-named one)."""
        chosen: dict[str, ModelRecord] = {}
        for rec in self.store.list(OPERATOR):
            if self.access is None or self.access.model_allowed(tenant, rec.name):
                chosen[rec.name] = rec
        if tenant and tenant != OPERATOR:
            for rec in self.store.list(tenant):
                chosen[rec.name] = rec
        return list(chosen.values())

    async def grant(self, tenant: str, worker: Worker) -> tuple[list[rpb.ModelGrant], str]:
        """Mount the tenant's models into ``worker``; return their grants and the worker's export path."""
        records = await asyncio.to_thread(self.for_tenant, tenant)
        paths = await self.backend.grant_models(worker.handle, self.store.objects,
                                                sorted({r.hash for r in records}))
        grants = [rpb.ModelGrant(name=r.name, hash=r.hash, path=paths[r.hash], files=r.files,
                                 size_bytes=r.size_bytes) for r in records]
        export = self.backend.export_dir(worker.handle)
        return grants, export[0] if export is not None else ""

    def check_preloads(self, bridges: Mapping[str, BridgeConfig]) -> None:
        """Refuse ``preload_models`` that the store lacks or that some tenant may not load.

        Raises:
            ConfigError: naming the bridge, the model and the fix.
        """
        problems = []
        for bridge, cfg in sorted(bridges.items()):
            for name in cfg.preload_models:
                try:
                    self.store.get(name)
                except NotFound:
                    problems.append(f"bridge {bridge!r} preloads model {name!r}, which the model store at "
                                    f"{self.store.root} does not have: mlbridge models add DIR --name {name}")
                    continue
                if self.access is not None and not self.access.model_shared(name):
                    problems.append(f"bridge {bridge!r} preloads model {name!r} into tenant-neutral spares, but "
                                    "not every tenant of the policy may load it: allow it for every tenant "
                                    "(models:) or remove it from preload_models")
        if problems:
            raise ConfigError("model preloading:\n  " + "\n  ".join(problems))

    async def preload(self, worker: Worker, names: list[str]) -> list[str]:
        """Mount the operator's models ``names`` into a tenant-neutral spare and have it load them.

        Returns:
            what the runtime loaded (names).

        Raises:
            MLBridgeError: a model is missing, cannot be mounted, or its bridge could not load it.
        """
        records = [await asyncio.to_thread(self.store.get, name) for name in names]
        paths = await self.backend.grant_models(worker.handle, self.store.objects, sorted({r.hash for r in records}))
        grants = [{"name": r.name, "hash": r.hash, "path": paths[r.hash], "files": dict(r.files),
                   "size_bytes": r.size_bytes} for r in records]
        reply = await worker.call("common:preload_models", {"models": grants})
        loaded = [str(m.get("name")) for m in reply.get("preloaded", []) if isinstance(m, dict)]
        log.info("worker %s preloaded %s", worker.id, ", ".join(loaded) or "nothing")
        return loaded

    async def import_exports(self, tenant: str, worker: Worker, metadata: Mapping[str, str]) -> list[ModelRecord]:
        """Import the models a reply says its worker exported, as ``tenant``'s own.

        Raises:
            InvalidArgument: a malformed export entry or a path outside the export directory.
            ArtifactMismatch: the files do not hash to what the worker announced.
        """
        entries = loads_lenient(metadata.get(meta.EXPORTED_MODELS, ""), [])
        if not isinstance(entries, list) or len(entries) > MAX_EXPORTS:
            raise InvalidArgument(f"a reply may export at most {MAX_EXPORTS} models, as a JSON list")
        export = self.backend.export_dir(worker.handle)
        if export is None:
            raise InvalidArgument(f"worker {worker.id} has no export directory; its exports are ignored")
        root = export[1].resolve()
        out = []
        for entry in entries:
            src, name, digest = self._entry(root, entry)
            try:
                rec = await asyncio.to_thread(self.store.add, src, name, owner=tenant, replace=True,
                                              expect_hash=digest, source=f"exported by worker {worker.id}")
            finally:
                await asyncio.to_thread(shutil.rmtree, src, True)
            log.info("imported model %s (%s) exported by tenant %s", name, rec.hash[:12], tenant)
            out.append(rec)
        return out

    @staticmethod
    def _entry(root: Path, entry: Any) -> tuple[Path, str, str]:
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("name", "hash", "dir")):
            raise InvalidArgument('an exported model needs string "name", "hash" and "dir"')
        rel = PurePosixPath(entry["dir"])
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise InvalidArgument(f"exported model directory {entry['dir'][:100]!r} is not a path inside the "
                                  "export directory")
        src = root.joinpath(*rel.parts)
        # No component may lead outside the export directory (a symlink the worker put there).
        if src.is_symlink() or not src.is_dir() or not src.resolve().is_relative_to(root):
            raise InvalidArgument(f"exported model directory {entry['dir'][:100]!r} is not a directory")
        return src, entry["name"], entry["hash"]
