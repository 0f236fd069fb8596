"""Worker backends, found by name like bridges are.

A backend is a :class:`~orchestrator.backends.base.Backend` subclass
registered in the ``mlbridge.backends`` entry point group (``process`` and
``docker`` ship with mlbridge), or named by an import string
(``package.module:Class``). A new engine is a package of its own with an
entry point; nothing in the core changes.
"""

from __future__ import annotations

import importlib
from importlib import metadata

from orchestrator.config import Config
from runtimes.wire.errors import ConfigError

from .base import Backend

__all__ = ["ENTRY_POINT_GROUP", "installed_backends", "load_backend", "make_backend"]

ENTRY_POINT_GROUP = "mlbridge.backends"


def installed_backends() -> dict[str, str]:
    """Entry point name -> import string of every installed backend."""
    return {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_backend(spec: str) -> type[Backend]:
    """The backend class named ``spec`` (entry point name or ``module:Class``).

    Raises:
        ConfigError: nothing by that name, the import failed, or it is not a Backend.
    """
    target = spec
    if ":" not in spec:
        found = installed_backends()
        if spec not in found:
            raise ConfigError(f"unknown backend {spec!r}; installed backends: {', '.join(sorted(found)) or 'none'} "
                              f"(entry point group {ENTRY_POINT_GROUP!r}), or give 'package.module:Class'")
        target = found[spec]
    module_name, _, attr = target.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import backend {spec!r} from {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, Backend)):
        raise ConfigError(f"backend {spec!r} ({target}) is not an orchestrator.backends.base.Backend subclass")
    return obj


def make_backend(config: Config) -> Backend:
    """The backend ``config.backend`` names, built from the configuration."""
    return load_backend(config.backend).from_config(config)
