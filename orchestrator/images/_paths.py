"""Where image recipes live, where build state goes, and how images are named."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import runtimes.wire.version as wire_version
from runtimes.wire.errors import BridgeNotFound, ConfigError
from runtimes.wire.version import __version__

#: Version stamped on every image tag and in the ``io.mlbridge.version`` label.
IMAGE_VERSION: str = __version__
#: Repository for every image mlbridge builds: ``mlbridge/<bridge>:<version>``.
IMAGE_REPO = "mlbridge"
#: Label namespace reserved for mlbridge.
LABEL_PREFIX = "io.mlbridge."
#: Recipe directories under ``images/`` that are not bridges.
NON_BRIDGE_DIRS = frozenset({"base", "rootfs", "orchestrator"})

_TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


#: Where a wheel carries the image recipes (``Dockerfile.base``, ``images/``,
#: ``pyproject.toml``): copied there by ``setup.py``'s build step, since they
#: live at the top of the source tree, outside any package.
PACKAGED_RECIPES = Path(__file__).resolve().parent / "recipes"
#: The top-level parts of a source tree that image builds read.
_RECIPE_ENTRIES = ("Dockerfile.base", "images", "pyproject.toml")


def _checkout() -> Path:
    """Where a checkout would hold this package: the directory above ``orchestrator/``."""
    return Path(__file__).resolve().parents[2]


def _is_source_tree(root: Path) -> bool:
    return (root / "Dockerfile.base").is_file() and (root / "images").is_dir()


def source_dir() -> Path:
    """The source tree holding ``Dockerfile.base``, ``images/``, ``runtimes/`` and ``pyproject.toml``.

    In order: ``MLBRIDGE_SOURCE_DIR``; the checkout this package was imported
    from (an editable install, or running from a clone); else, for an
    installed wheel, a view of the recipes the wheel carries beside the
    installed ``runtimes`` and ``orchestrator`` packages (see
    :func:`installed_source_view`), so an image built from a wheel copies
    exactly the ``runtimes/`` the host runs.

    Raises:
        ConfigError: ``MLBRIDGE_SOURCE_DIR`` does not hold the image recipes,
            or this installation carries none.
    """
    env = os.environ.get("MLBRIDGE_SOURCE_DIR")
    if env:
        root = Path(env)
        if not _is_source_tree(root):
            raise ConfigError(
                f"image recipes not found under MLBRIDGE_SOURCE_DIR={root} "
                "(need Dockerfile.base and images/); point it at an mlbridge source checkout"
            )
        return root
    checkout = _checkout()
    if _is_source_tree(checkout):
        return checkout
    if _is_source_tree(PACKAGED_RECIPES):
        return installed_source_view()
    raise ConfigError(
        f"image recipes not found: {checkout} is not an mlbridge checkout and this "
        f"installation carries none under {PACKAGED_RECIPES}; reinstall mlbridge from its "
        "wheel, run from a source checkout, or set MLBRIDGE_SOURCE_DIR to one"
    )


def installed_source_view() -> Path:
    """A directory laid out like a checkout, made of links into this installation.

    ``Dockerfile.base``, ``images`` and ``pyproject.toml`` point at the
    recipes the wheel carries, ``runtimes`` and ``orchestrator`` at the
    installed packages. It lives under ``<state>/source/``, one per
    installation (keyed by its path), and is refreshed on every call, so an
    upgraded installation is never built from stale links.
    """
    targets: dict[str, Path] = {name: PACKAGED_RECIPES / name for name in _RECIPE_ENTRIES}
    targets["runtimes"] = Path(wire_version.__file__).resolve().parents[1]
    targets["orchestrator"] = Path(__file__).resolve().parents[1]
    key = hashlib.sha256(str(PACKAGED_RECIPES).encode()).hexdigest()[:12]
    view = state_dir() / "source" / f"{IMAGE_VERSION}-{key}"
    view.mkdir(parents=True, exist_ok=True)
    for name, target in targets.items():
        link = view / name
        if link.is_symlink() and os.readlink(link) == str(target):
            continue
        tmp = view / f".{name}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(link)
    return view


def runtimes_dir() -> Path:
    """The ``runtimes/`` tree images copy: the checkout's, or the installed package."""
    return source_dir() / "runtimes"


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
    """Shared cache of downloaded, hash-checked wheels: ``MLBRIDGE_WHEELHOUSE``, else ``<state>/wheelhouse``.

    Sharing one wheelhouse between state dirs is safe: a wheel is only ever
    used when its sha256 is one the lock names.
    """
    env = os.environ.get("MLBRIDGE_WHEELHOUSE")
    return Path(env) if env else state_dir() / "wheelhouse"


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
