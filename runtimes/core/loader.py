"""Find a bridge class by entry point name or import string.

A bridge is named either by an entry point in the ``mlbridge.bridges`` group
(``mock``) or by an import string (``my_pkg.bridge:MyBridge``). A new
framework therefore needs no change to core: ship a package with an entry
point, or put its import string in the orchestrator's config.
"""

from __future__ import annotations

import importlib

from ..wire.errors import BridgeNotFound
from ..wire.names import BRIDGE_ENTRY_POINTS
from .bridge import Bridge

ENTRY_POINT_GROUP = BRIDGE_ENTRY_POINTS


def installed_bridges() -> dict[str, str]:
    """Entry point name -> import string for every installed bridge."""
    from importlib import metadata  # slow to import; only needed for names

    return {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_bridge_class(spec: str) -> type[Bridge]:
    """Resolve ``spec`` (entry point name or ``module:Class``) to a Bridge subclass.

    Raises:
        BridgeNotFound: nothing by that name, or the import failed; the
            message says which and how to fix it.
    """
    if ":" not in spec:
        eps = installed_bridges()
        if spec not in eps:
            known = ", ".join(sorted(eps)) or "none"
            raise BridgeNotFound(
                f"no bridge named {spec!r} in entry point group {ENTRY_POINT_GROUP!r} "
                f"(installed: {known}); install its package or give an import string "
                f"such as 'package.module:BridgeClass'"
            )
        spec = eps[spec]
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BridgeNotFound(
            f"cannot import bridge module {module_name!r}: {exc}; is its package installed "
            f"in this environment (or image)?"
        ) from exc
    obj: object = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise BridgeNotFound(f"module {module_name!r} has no attribute {attr!r}")
    if not (isinstance(obj, type) and issubclass(obj, Bridge)):
        raise BridgeNotFound(f"{spec!r} is not a runtimes.core.Bridge subclass")
    return obj
