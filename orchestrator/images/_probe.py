"""Look inside an image without network: Python version, init, OS packages.

A probe runs one throw-away container (``--network none``, read-only root)
and caches what it learned per image id, so a cached rebuild costs nothing.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import docker
import docker.errors

from runtimes.wire.errors import ConfigError

from ._paths import state_dir

_SCRIPT = r"""
. /etc/os-release 2>/dev/null && echo "os=${ID:-unknown}-${VERSION_ID:-unknown}"
echo "python=$(python3 -c 'import platform; print(platform.python_version())' 2>/dev/null)"
echo "tini=$(command -v tini 2>/dev/null)"
echo "---dpkg"
dpkg-query -W -f='${Package}\t${Version}\t${Architecture}\n' 2>/dev/null || true
"""


@dataclass(frozen=True)
class DebPackage:
    """One installed Debian package."""

    name: str
    version: str
    arch: str


@dataclass(frozen=True)
class ImageFacts:
    """What a probe found inside an image.

    Attributes:
        os: ``<id>-<version_id>`` from ``/etc/os-release``, e.g. ``debian-12``.
        python_version: full version of ``python3`` on the image's PATH, or ``""``.
        tini: path of ``tini`` on the PATH, or ``""``.
        deb_packages: installed dpkg packages, sorted by name.
    """

    os: str
    python_version: str
    tini: str
    deb_packages: tuple[DebPackage, ...] = field(default=())

    def check_python(self, image: str) -> None:
        """Raise unless the image's Python matches the host's minor version.

        Wheels are resolved and downloaded on the host, so a different
        ``major.minor`` in the image would install wheels built for another ABI.

        Raises:
            ConfigError: the image has no python3 or a different minor version.
        """
        host = f"{sys.version_info.major}.{sys.version_info.minor}"
        if not self.python_version:
            raise ConfigError(f"base image {image} has no python3 on its PATH")
        if ".".join(self.python_version.split(".")[:2]) != host:
            raise ConfigError(
                f"base image {image} has Python {self.python_version} but the host "
                f"resolves wheels for Python {host}; use a base with Python {host} "
                "or run mlbridge with a matching interpreter"
            )


def parse_probe_output(text: str) -> ImageFacts:
    """Parse the probe script's output (see ``_SCRIPT``)."""
    values: dict[str, str] = {}
    debs: list[DebPackage] = []
    in_dpkg = False
    for line in text.splitlines():
        if line == "---dpkg":
            in_dpkg = True
        elif in_dpkg:
            parts = line.split("\t")
            if len(parts) == 3 and parts[1]:
                debs.append(DebPackage(*parts))
        elif "=" in line:
            key, _, value = line.partition("=")
            values[key] = value.strip()
    return ImageFacts(
        os=values.get("os", "unknown"),
        python_version=values.get("python", ""),
        tini=values.get("tini", ""),
        deb_packages=tuple(sorted(debs, key=lambda d: d.name)),
    )


def probe_image(client: docker.DockerClient, image_id: str) -> ImageFacts:
    """Probe ``image_id`` (cached per id under the state dir).

    Raises:
        ConfigError: the probe container could not run (e.g. no ``/bin/sh``).
    """
    cache = state_dir() / "probes" / f"{image_id.replace(':', '-')}.json"
    if cache.is_file():
        return _from_json(json.loads(cache.read_text(encoding="utf-8")))
    try:
        raw = client.containers.run(
            image_id,
            entrypoint=["/bin/sh", "-c", _SCRIPT],
            command=[],
            user="0",
            network_mode="none",
            read_only=True,
            remove=True,
            stdout=True,
            stderr=False,
        )
    except docker.errors.DockerException as exc:
        raise ConfigError(f"could not probe image {image_id}: {exc}") from exc
    facts = parse_probe_output(raw.decode("utf-8", "replace"))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(facts)), encoding="utf-8")
    tmp.replace(cache)
    return facts


def _from_json(data: dict[str, Any]) -> ImageFacts:
    return ImageFacts(
        os=data["os"],
        python_version=data["python_version"],
        tini=data["tini"],
        deb_packages=tuple(DebPackage(**d) for d in data["deb_packages"]),
    )
