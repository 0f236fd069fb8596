"""Models a worker may load, mounted into it read-only after it is claimed; and its export directory.

A warm spare is started before anyone knows which tenant will claim it, so
the models cannot be bind-mounted when its container is created. Instead a
worker of a bridge with ``models: true`` gets, at creation, one empty
directory of its own (``<root>/<worker>.m``) bind-mounted at
:data:`MODELS_MOUNT` with *slave* propagation, the directory being a shared
mount point on the host. When a tenant claims the worker,
:meth:`ModelMounts.grant` bind-mounts each model the tenant may use into
that directory, and the mount appears inside the running container. The
model's files are never copied: every worker sees the store's one copy.

The binds are made from a read-only view of the store's ``objects``
directory (itself a read-only bind), so each propagated mount is read-only
inside the container too (a remount on the host would not propagate).

Each such worker also gets an *export* directory (``<root>/<worker>.x``,
at :data:`EXPORT_MOUNT`): its own tmpfs with a size cap, owned by the
worker's uid, where the runtime writes a model it offers for import (a
fine-tuned one); the orchestrator imports from the host side.

Without root (no mounts), the whole ``objects`` directory is the models
mount, read-only: the runtime still loads only what its grants name, with
hashes checked, but other tenants' model files are visible; the backend
logs this once.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from .mountinfo import unmount_tree
from .unix import mount_tmpfs

__all__ = ["EXPORT_MOUNT", "MODELS_MOUNT", "ModelMounts"]

log = logging.getLogger("mlbridge.mounts")

#: Where a worker sees its models (``/models/<hash>``) and its export directory.
MODELS_MOUNT = "/models"
EXPORT_MOUNT = "/export"


def _mount(*args: str) -> bool:
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode != 0:
        log.warning("mount %s failed: %s", " ".join(args), r.stderr.strip())
    return r.returncode == 0


class ModelMounts:
    """Per-worker model and export directories under ``root`` (a backend's socket root).

    Args:
        root: the directory holding the per-worker directories.
        uid, gid: the worker's user, owner of its export directory.
    """

    def __init__(self, root: Path, uid: int, gid: int) -> None:
        self.root = root
        self.uid, self.gid = uid, gid
        self.can_mount = os.geteuid() == 0
        self._views: dict[Path, Path] = {}  # store objects dir -> its read-only view
        self._warned = False

    def models_dir(self, worker_id: str) -> Path:
        return self.root / f"{worker_id}.m"

    def export_dir(self, worker_id: str) -> Path:
        return self.root / f"{worker_id}.x"

    def prepare(self, worker_id: str, export_bytes: int, objects: Path) -> tuple[Path, Path]:
        """Create the worker's directories; return (models source to mount, export dir) on the host."""
        models, export = self.models_dir(worker_id), self.export_dir(worker_id)
        models.mkdir(mode=0o755, exist_ok=True)
        export.mkdir(mode=0o700, exist_ok=True)
        if not self.can_mount:
            if not self._warned:
                log.warning("not root: every model in the store is visible (read-only) to workers that load "
                            "models; each still loads only the models its tenant is granted")
                self._warned = True
            objects.mkdir(parents=True, exist_ok=True)
            return objects, export
        if not (_mount("--bind", str(models), str(models)) and _mount("--make-shared", str(models))):
            raise OSError(f"cannot make {models} a shared mount point for the worker's models")
        options = (f"size={export_bytes},nr_inodes={max(64, export_bytes // 65536)},mode=0700,"
                   f"uid={self.uid},gid={self.gid},noexec,nosuid,nodev")
        if not mount_tmpfs(export, options):
            os.chown(export, self.uid, self.gid)
        return models, export

    def _view(self, objects: Path) -> Path:
        """A read-only bind of the store's ``objects`` directory, made once."""
        objects = objects.resolve()
        view = self._views.get(objects)
        if view is None:
            view = self.root / f".store-{len(self._views)}"
            view.mkdir(exist_ok=True)
            if not (_mount("--bind", str(objects), str(view))
                    and _mount("-o", "remount,bind,ro", str(view))):
                unmount_tree(view)
                raise OSError(f"cannot make a read-only view of the model store at {objects}")
            self._views[objects] = view
        return view

    def grant(self, worker_id: str, objects: Path, hashes: list[str]) -> None:
        """Mount each model object (by hash) into the worker's models directory, read-only."""
        if not self.can_mount or not hashes:
            return  # the whole objects directory is mounted already, or there is nothing to mount
        objects.mkdir(parents=True, exist_ok=True)
        view = self._view(objects)
        target_root = self.models_dir(worker_id)
        for digest in hashes:
            target = target_root / digest
            if target.is_dir() and os.path.ismount(target):
                continue
            target.mkdir(exist_ok=True)
            if not _mount("--bind", str(view / digest), str(target)):
                raise OSError(f"cannot mount model {digest[:12]} into worker {worker_id}")

    def release(self, worker_id: str) -> None:
        """Unmount and remove the worker's directories (every exit path of a worker ends here)."""
        for path in (self.models_dir(worker_id), self.export_dir(worker_id)):
            if not path.exists():
                continue
            if self.can_mount:
                unmount_tree(path)
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        for view in self._views.values():
            unmount_tree(view)
            shutil.rmtree(view, ignore_errors=True)
        self._views.clear()
