"""Offline vulnerability report for an image.

Image builds use no network, and neither does this check. Online checkers
(pip-audit, osv-scanner) query PyPI / osv.dev, so they are not run. When
``MLBRIDGE_VULN_DB`` points at an unpacked OSV export (for example the
``PyPI/all.zip`` and ``Debian/all.zip`` archives from
``osv-vulnerabilities.storage.googleapis.com``), packages are matched against
it; otherwise the report says plainly that nothing was checked. A missing or
broken database never fails a build.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._lock import LockedPackage, canonical_name
from ._probe import DebPackage

NOT_CHECKED = "not_checked"
CHECKED = "checked"


def _not_checked(reason: str, base: dict[str, Any]) -> dict[str, Any]:
    return {**base, "status": NOT_CHECKED, "reason": reason, "vulnerabilities": []}


def vulnerability_report(
    *,
    tag: str,
    image_id: str,
    python_packages: Iterable[LockedPackage],
    deb_packages: Iterable[DebPackage],
    db_dir: Path | None = None,
) -> dict[str, Any]:
    """Build the report for one image.

    Args:
        tag: image tag.
        image_id: image id.
        python_packages: packages of the image's lock file.
        deb_packages: the image's dpkg packages.
        db_dir: unpacked OSV export; defaults to ``MLBRIDGE_VULN_DB``.

    Returns:
        A JSON-serialisable dict with ``status`` (``checked`` or
        ``not_checked``), ``reason`` when not checked, and ``vulnerabilities``.
    """
    py = list(python_packages)
    debs = list(deb_packages)
    base: dict[str, Any] = {
        "image": tag,
        "image_id": image_id,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "packages": {"pypi": len(py), "deb": len(debs)},
    }
    if db_dir is None and os.environ.get("MLBRIDGE_VULN_DB"):
        db_dir = Path(os.environ["MLBRIDGE_VULN_DB"])
    if db_dir is None:
        return _not_checked(
            "no offline vulnerability database: pip-audit and osv-scanner need network "
            "access to PyPI/osv.dev, which image builds do not use; set MLBRIDGE_VULN_DB "
            "to an unpacked OSV export (PyPI/all.zip, Debian/all.zip) to check offline",
            base,
        )
    advisories = _load(db_dir)
    if not advisories:
        return _not_checked(f"MLBRIDGE_VULN_DB={db_dir} holds no OSV advisories (*.json)", base)
    wanted = [("PyPI", p.name, p.version) for p in py]
    wanted += [("Debian", canonical_name(d.name), d.version) for d in debs]
    found = []
    for ecosystem, name, version in wanted:
        for adv in advisories.get((ecosystem, name), []):
            fixed = _affects(adv["affected"], version, ecosystem)
            if fixed is not None:
                found.append(
                    {
                        "id": adv["id"],
                        "aliases": adv.get("aliases", []),
                        "ecosystem": ecosystem,
                        "package": name,
                        "version": version,
                        "summary": adv.get("summary", ""),
                        "fixed_in": fixed,
                    }
                )
    return {
        **base,
        "status": CHECKED,
        "checker": "mlbridge offline OSV matcher",
        "database": str(db_dir),
        "advisories_loaded": sum(len(v) for v in advisories.values()),
        "vulnerabilities": sorted(found, key=lambda v: (v["package"], v["id"])),
    }


def _load(db_dir: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Index OSV advisories by (ecosystem family, canonical package name)."""
    index: dict[tuple[str, str], list[dict[str, Any]]] = {}
    if not db_dir.is_dir():
        return index
    for path in db_dir.rglob("*.json"):
        try:
            adv = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(adv, dict) or "id" not in adv:
            continue
        for affected in adv.get("affected", []):
            pkg = affected.get("package", {})
            family = str(pkg.get("ecosystem", "")).split(":", 1)[0]
            if family in ("PyPI", "Debian") and pkg.get("name"):
                key = (family, canonical_name(pkg["name"]))
                index.setdefault(key, []).append({**adv, "affected": affected})
    return index


def _affects(affected: dict[str, Any], version: str, ecosystem: str) -> list[str] | None:
    """None if ``version`` is not affected, else the fixed versions (maybe empty)."""
    fixed = [
        e["fixed"] for r in affected.get("ranges", []) for e in r.get("events", []) if "fixed" in e
    ]
    if version in affected.get("versions", []):
        return fixed
    if ecosystem != "PyPI":
        return None  # Debian version ordering is not reimplemented here
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:
        return None
    try:
        current = Version(version)
        for rng in affected.get("ranges", []):
            if rng.get("type") != "ECOSYSTEM":
                continue
            # Events are in version order; each one can only switch state.
            inside = False
            for event in rng.get("events", []):
                if "introduced" in event:
                    start = event["introduced"]
                    if start == "0" or current >= Version(start):
                        inside = True
                elif "fixed" in event:
                    inside = inside and current < Version(event["fixed"])
                elif "last_affected" in event:
                    inside = inside and current <= Version(event["last_affected"])
            if inside:
                return fixed
    except InvalidVersion:
        return None
    return None
