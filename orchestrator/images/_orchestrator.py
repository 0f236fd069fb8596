"""What goes into the ``mlbridge/orchestrator`` image besides its locked wheels.

The image runs the orchestrator itself in a container (``orchestrator.testing``,
docs/ci.md). Its context carries the ``orchestrator/`` and ``runtimes/``
packages of the mlbridge this interpreter imports (a checkout or an installed
wheel alike), with that distribution's metadata and console script, so the
image holds exactly the code that built it.
"""

from __future__ import annotations

import importlib.util
from email.parser import HeaderParser
from importlib import metadata
from pathlib import Path

from runtimes.wire.errors import ConfigError

from ._paths import recipe_dir

#: The distribution whose packages, metadata and console script go into the orchestrator image.
DISTRIBUTION = "mlbridge"
#: Metadata fields kept in the image's copy (no long description: editing README.md rebuilds nothing).
_METADATA_FIELDS = ("Metadata-Version", "Name", "Version", "Summary", "Requires-Python",
                    "Requires-Dist", "Provides-Extra")

__all__ = ["DISTRIBUTION", "check_recipe", "installed_distribution", "installed_packages", "orchestrator_dist_files"]


def check_recipe(name: str) -> None:
    """Raise unless ``images/<name>/`` has its Dockerfile and lock.

    Raises:
        ConfigError: a part of the recipe is missing.
    """
    recipe = recipe_dir(name)
    for part in ("Dockerfile", "requirements.lock"):
        if not (recipe / part).is_file():
            raise ConfigError(
                f"images/{name}/{part} is missing; the {name} image cannot be built "
                f"(regenerate a lock with `python -m orchestrator.images lock {name}`)"
            )


def installed_distribution() -> metadata.Distribution:
    """The installed ``mlbridge`` distribution whose packages this interpreter imports.

    Raises:
        ConfigError: mlbridge is not installed (``pip install -e .`` in a checkout).
    """
    try:
        return metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError as exc:
        raise ConfigError(
            "the orchestrator image copies the installed mlbridge distribution, and none is "
            "installed: `pip install -e .` in the checkout (or `pip install mlbridge`)"
        ) from exc


def orchestrator_dist_files(dist: metadata.Distribution) -> dict[str, str]:
    """The distribution's metadata and console scripts, as files of the orchestrator image's context.

    The image puts ``mlbridge/`` on ``PYTHONPATH``: a ``.dist-info`` there makes
    ``orchestrator`` and ``runtimes`` one installed distribution again, so its
    entry points (bridges, backends) resolve and ``pip check`` checks its
    requirements against the locked wheels. Console scripts become small
    launchers under ``mlbridge-bin/`` for ``/opt/venv/bin``.

    Args:
        dist: usually :func:`installed_distribution`.

    Returns:
        Context-relative path -> file content.

    Raises:
        ConfigError: the distribution has no metadata or no entry points.
    """
    raw = dist.read_text("METADATA") or dist.read_text("PKG-INFO")
    entry_points = dist.read_text("entry_points.txt")
    if not raw or not entry_points:
        raise ConfigError(
            f"the installed {DISTRIBUTION} distribution has no metadata or entry points; "
            "reinstall it (`pip install -e .` in the checkout)"
        )
    headers = HeaderParser().parsestr(raw)
    kept = [
        f"{key}: {value}"
        for key in _METADATA_FIELDS
        for value in (headers.get_all(key) or [])
    ]
    version = headers.get("Version") or dist.version
    info = f"mlbridge/{DISTRIBUTION}-{version}.dist-info"
    files = {
        f"{info}/METADATA": "\n".join(kept) + "\n",
        f"{info}/entry_points.txt": entry_points,
        f"{info}/top_level.txt": "orchestrator\nruntimes\n",
    }
    for script in dist.entry_points.select(group="console_scripts"):
        files[f"mlbridge-bin/{script.name}"] = (
            "#!/opt/venv/bin/python3\n"
            "import sys\n"
            f"from {script.module} import {script.attr}\n"
            f"sys.exit({script.attr}())\n"
        )
    return files


def installed_packages() -> dict[str, Path]:
    """The ``orchestrator`` and ``runtimes`` package directories this interpreter imports.

    Found without importing ``runtimes`` (the host half imports only its wire kernel).

    Returns:
        Context-relative path -> package directory, under ``mlbridge/``.

    Raises:
        ConfigError: a package cannot be found.
    """
    out: dict[str, Path] = {}
    for package in ("orchestrator", "runtimes"):
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if not locations:
            raise ConfigError(f"package {package!r} is not importable here; install mlbridge")
        out[f"mlbridge/{package}"] = Path(locations[0]).resolve()
    return out
