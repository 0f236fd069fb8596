"""Where image recipes live, where build state goes, and how images are named."""

from __future__ import annotations

import os
import re
from pathlib import Path

from runtimes.wire.errors import BridgeNotFound, ConfigError
from runtimes.wire.version import __version__

#: Version stamped on every image tag and in the ``io.mlbridge.version`` label.
IMAGE_VERSION: str = __version__
#: Repository for every image mlbridge builds: ``mlbridge/<bridge>:<version>``.
IMAGE_REPO = "mlbridge"
#: Label namespace reserved for mlbridge.
LABEL_PREFIX = "io.mlbridge."
#: Recipe directories under ``images/`` that are not bridges.
NON_BRIDGE_DIRS = frozenset({"base", "rootfs"})

_TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def source_dir() -> Path:
    """The source tree holding ``Dockerfile.base``, ``images/`` and ``runtimes/``.

    ``MLBRIDGE_SOURCE_DIR`` overrides the default, which is the checkout this
    package was imported from.

    Raises:
        ConfigError: the directory does not hold the image recipes.
    """
    env = os.environ.get("MLBRIDGE_SOURCE_DIR")
    root = Path(env) if env else Path(__file__).resolve().parents[2]
    if not (root / "Dockerfile.base").is_file() or not (root / "images").is_dir():
        raise ConfigError(
            f"image recipes not found under {root} (need Dockerfile.base and images/); "
            "run from an mlbridge source checkout or set MLBRIDGE_SOURCE_DIR to one"
        )
    return root


def state_dir() -> Path:
    """mlbridge's state directory: ``MLBRIDGE_STATE_DIR``, else a per-user default.

    The default is ``/var/lib/mlbridge`` for root and ``~/.local/state/mlbridge``
    otherwise (the same rule as the orchestrator's ``state_dir``). The
    directory is not created here.
    """
    from orchestrator.config import default_state_dir

    return default_state_dir()


def build_dir(name: str) -> Path:
    """Per-image build output (context, SBOM, vulnerability report)."""
    return state_dir() / "builds" / name


def wheelhouse_dir() -> Path:
    """Shared cache of downloaded, hash-checked wheels."""
    return state_dir() / "wheelhouse"


def recipe_dir(name: str) -> Path:
    """``images/<name>/`` in the source tree."""
    return source_dir() / "images" / name


def image_tag(bridge: str) -> str:
    """The tag mlbridge gives a bridge's image, e.g. ``mlbridge/mock:0.1.0``."""
    return f"{IMAGE_REPO}/{bridge}:{IMAGE_VERSION}"


def tag_for(tag_or_bridge: str) -> str:
    """Accept either a full tag or a bare bridge name and return the tag."""
    if "/" in tag_or_bridge or ":" in tag_or_bridge:
        return tag_or_bridge
    return image_tag(tag_or_bridge)


def bridge_of(tag: str) -> str:
    """The bridge name in an mlbridge tag (``mlbridge/mock:0.1.0`` -> ``mock``)."""
    return tag.rsplit("/", 1)[-1].split(":", 1)[0]


def known_bridges() -> list[str]:
    """Bridges that have an image recipe (``images/<bridge>/Dockerfile``)."""
    root = source_dir() / "images"
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and p.name not in NON_BRIDGE_DIRS and (p / "Dockerfile").is_file()
    )


def check_bridge(bridge: str) -> None:
    """Raise unless ``bridge`` has a complete image recipe.

    Raises:
        BridgeNotFound: no ``images/<bridge>/Dockerfile``.
        ConfigError: the recipe lacks its lock file.
    """
    known = known_bridges()
    if not _TAG_RE.match(bridge) or bridge not in known:
        raise BridgeNotFound(
            f"no image recipe for bridge {bridge!r} (expected images/{bridge}/Dockerfile); "
            f"known bridges: {', '.join(known) or 'none'}"
        )
    if not (recipe_dir(bridge) / "requirements.lock").is_file():
        raise ConfigError(
            f"images/{bridge}/requirements.lock is missing; "
            f"generate it with `python -m orchestrator.images lock {bridge}`"
        )
