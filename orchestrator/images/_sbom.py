"""CycloneDX software bill of materials for an image, built offline.

The Python packages come from the image's lock file (which
``pip install --require-hashes`` enforced at build time), the OS packages from
the image's dpkg database; nothing is fetched.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from ._lock import LockedPackage
from ._paths import IMAGE_VERSION
from ._probe import DebPackage

SPEC_VERSION = "1.5"


def deb_purl(pkg: DebPackage, distro: str) -> str:
    """Package URL of a Debian package, e.g. ``pkg:deb/debian/tini@0.19.0-1?arch=amd64&distro=debian-12``."""
    vendor = distro.split("-", 1)[0] or "debian"
    return (
        f"pkg:deb/{quote(vendor, safe='')}/{quote(pkg.name, safe='')}@{quote(pkg.version, safe='')}"
        f"?arch={quote(pkg.arch, safe='')}&distro={quote(distro, safe='')}"
    )


def make_sbom(
    *,
    tag: str,
    image_id: str,
    labels: dict[str, str],
    python_packages: Iterable[LockedPackage],
    deb_packages: Iterable[DebPackage],
    distro: str,
    python_version: str,
) -> dict[str, Any]:
    """A CycloneDX 1.5 JSON document for one image.

    Args:
        tag: the image tag, e.g. ``mlbridge/mock:0.1.0``.
        image_id: ``sha256:...`` image id.
        labels: the image's labels (recorded as properties).
        python_packages: the packages of the image's lock file.
        deb_packages: the image's dpkg packages.
        distro: ``<os-id>-<version>``, e.g. ``debian-12``.
        python_version: the image's Python version.

    Returns:
        The SBOM as a JSON-serialisable dict.
    """
    name, _, version = tag.rpartition(":")
    digest = image_id.split(":", 1)[-1]
    components: list[dict[str, Any]] = [
        {
            "type": "application",
            "bom-ref": "mlbridge-runtimes",
            "name": "mlbridge-runtimes",
            "version": IMAGE_VERSION,
            "description": "mlbridge in-container runtime (runtimes/ package)",
        }
    ]
    if python_version:
        components.append(
            {
                "type": "application",
                "bom-ref": "cpython",
                "name": "cpython",
                "version": python_version,
            }
        )
    for pkg in sorted(python_packages, key=lambda p: p.name):
        components.append(
            {
                "type": "library",
                "bom-ref": pkg.purl,
                "name": pkg.name,
                "version": pkg.version,
                "purl": pkg.purl,
                "hashes": [{"alg": "SHA-256", "content": h} for h in sorted(pkg.hashes)],
            }
        )
    for deb in sorted(deb_packages, key=lambda d: (d.name, d.arch)):
        purl = deb_purl(deb, distro)
        components.append(
            {
                "type": "library",
                "bom-ref": purl,
                "name": deb.name,
                "version": deb.version,
                "purl": purl,
            }
        )
    return {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        # Same image, same serial: the BOM describes the image id, not the run.
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'mlbridge:{image_id}')}",
        "version": 1,
        "metadata": {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tools": {
                "components": [
                    {"type": "application", "name": "mlbridge", "version": IMAGE_VERSION}
                ]
            },
            "component": {
                "type": "container",
                "bom-ref": image_id,
                "name": name,
                "version": version,
                "hashes": [{"alg": "SHA-256", "content": digest}],
                "properties": [{"name": k, "value": v} for k, v in sorted(labels.items())],
            },
        },
        "components": components,
    }
