"""Models from the host's store as a runtime sees them: granted, mounted read-only, checked before loading.

The orchestrator's claim hands a worker the models its tenant may load
(:class:`ModelGrant`: name, content hash, the read-only path and the sha256
of every file). A bridge looks a model up by name (and, when the caller pins
one, hash) with :func:`find_model`, and calls :meth:`ModelGrant.verify`
before loading: the manifest came over the control channel from the host, so
a file changed on disk since it was recorded is refused, whatever the mount
shows. Exported models go the other way through :func:`export_model`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..wire import metadata as meta
from ..wire.artifacts import ArtifactError, manifest, manifest_hash, mismatches
from ..wire.errors import ArtifactMismatch, ConfigError, InvalidArgument, NotFound, PermissionDenied
from .context import CallContext

__all__ = ["MODEL_NAME", "ModelGrant", "export_model", "find_model"]

#: What a model's name in the store may look like.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class ModelGrant:
    """One model this worker may load."""

    name: str
    hash: str
    path: Path
    files: Mapping[str, str] = field(default_factory=dict)
    size_bytes: int = 0

    def verify(self) -> None:
        """Re-hash the model's files against the recorded manifest.

        Raises:
            ArtifactMismatch: a file is missing, changed, or not recorded.
        """
        bad = mismatches(self.path, self.files)
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise ArtifactMismatch(f"model {self.name!r} ({self.hash[:12]}) is refused: its files do not match the "
                                   f"sha256 the model store recorded: {shown}; re-add it with `mlbridge models add`")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "hash": self.hash, "size_bytes": self.size_bytes, "files": len(self.files)}


def find_model(models: Mapping[str, ModelGrant], name: str, hash_: str = "") -> ModelGrant:
    """The granted model called ``name`` (whose hash starts with ``hash_`` when given).

    Raises:
        InvalidArgument: the name is malformed.
        NotFound: no such model is granted to this tenant (absent and forbidden read the same).
        PermissionDenied: the model exists under that name with another hash.
    """
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        raise InvalidArgument(f"model name {str(name)[:100]!r} must match {MODEL_NAME.pattern}")
    grant = models.get(name)
    if grant is None:
        known = ", ".join(sorted(models)) or "none"
        raise NotFound(f"no model {name!r} in the model store for this tenant; models it may load: {known}")
    if hash_ and not grant.hash.startswith(hash_.removeprefix("sha256:")):
        raise PermissionDenied(f"model {name!r} has hash {grant.hash[:12]} in the store, not {hash_[:71]!r}")
    return grant


def export_model(ctx: CallContext, export_dir: Path | None, src: Path, name: str) -> dict[str, str]:
    """Offer the model directory ``src`` (under ``export_dir``) to the orchestrator's store as ``name``.

    The orchestrator imports it after the call, before the reply reaches the
    client, re-hashing every file; the returned ``{"name", "hash"}`` is what
    the store will hold.

    Raises:
        ConfigError: this worker has no export directory.
        InvalidArgument: a bad name, or ``src`` is not a model directory under ``export_dir``.
    """
    if export_dir is None:
        raise ConfigError("this worker cannot export models (no export directory was granted)")
    if not MODEL_NAME.match(name):
        raise InvalidArgument(f"model name {name[:100]!r} must match {MODEL_NAME.pattern}")
    src = src.resolve()
    try:
        rel = src.relative_to(export_dir.resolve())
    except ValueError:
        raise InvalidArgument(f"{src} is not under the export directory {export_dir}") from None
    try:
        digest = manifest_hash(manifest(src))
    except ArtifactError as exc:
        raise InvalidArgument(str(exc)) from None
    exported = json.loads(ctx.metadata.get(meta.EXPORTED_MODELS, "[]"))
    exported.append({"name": name, "hash": digest, "dir": rel.as_posix()})
    ctx.metadata[meta.EXPORTED_MODELS] = json.dumps(exported)
    return {"name": name, "hash": digest}
