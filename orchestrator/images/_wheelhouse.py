"""The host-side wheel cache and the build contexts made from it.

Wheels are downloaded on the host, once, against the hash-locked requirement
files (``pip download --only-binary=:all: --require-hashes``) into a shared
wheelhouse under the state dir. A build context gets hard links to exactly the
wheels its lock names, so the image build itself needs no network.
``MLBRIDGE_WHEELHOUSE`` moves the wheelhouse, e.g. to share one between state
dirs: only wheels whose hashes a lock names are ever used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from runtimes.wire.errors import ConfigError

from ._lock import LockedPackage
from ._paths import wheelhouse_dir

_INDEX = "index.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _index(house: Path) -> dict[str, str]:
    """sha256 -> wheel path, hashing only files not seen before (by name and size)."""
    index_path = house / _INDEX
    try:
        known: dict[str, list[Any]] = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    fresh: dict[str, list[Any]] = {}
    for wheel in house.glob("*.whl"):
        size = wheel.stat().st_size
        entry = known.get(wheel.name)
        fresh[wheel.name] = entry if entry and entry[1] == size else [_sha256(wheel), size]
    if fresh != known:
        # A wheelhouse may be shared (MLBRIDGE_WHEELHOUSE): each writer its own temporary file.
        tmp = index_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(fresh, sort_keys=True), encoding="utf-8")
        tmp.replace(index_path)
    return {digest: str(house / name) for name, (digest, _size) in fresh.items()}


def _match(
    packages: Iterable[LockedPackage], by_hash: dict[str, str]
) -> tuple[dict[str, Path], list[LockedPackage]]:
    found: dict[str, Path] = {}
    missing: list[LockedPackage] = []
    for pkg in packages:
        path = next((by_hash[h] for h in pkg.hashes if h in by_hash), None)
        if path is None:
            missing.append(pkg)
        else:
            found[pkg.name] = Path(path)
    return found, missing


def ensure_wheels(
    packages: list[LockedPackage],
    progress: Callable[[str], None],
    *,
    label: str,
    offline: bool = False,
) -> dict[str, Path]:
    """Make sure the wheelhouse holds a hash-matching wheel for every package.

    Only missing wheels are downloaded; a fully cached lock touches no network.

    Args:
        packages: the lock's packages.
        progress: receives one line per download batch.
        label: image name for progress lines.
        offline: never download; a missing wheel is an error.

    Returns:
        Package name -> wheel path in the wheelhouse.

    Raises:
        ConfigError: pip could not download a wheel, or a download did not
            match the lock's hashes.
    """
    house = wheelhouse_dir()
    house.mkdir(parents=True, exist_ok=True)
    found, missing = _match(packages, _index(house))
    if not missing:
        return found
    if offline:
        names = ", ".join(f"{p.name}=={p.version}" for p in missing)
        raise ConfigError(
            f"offline build of {label}: wheels not in {house}: {names}; run "
            f"`python -m orchestrator.images build {label}` once with network access"
        )
    progress(f"{label}: downloading {len(missing)} wheel(s) into {house}")
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "missing.lock"
        req.write_text(
            "".join(
                f"{p.name}=={p.version} " + " ".join(f"--hash=sha256:{h}" for h in p.hashes) + "\n"
                for p in missing
            ),
            encoding="utf-8",
        )
        cmd = [
            sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps",
            "--require-hashes", "--disable-pip-version-check", "--quiet",
            "-d", str(house), "-r", str(req),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(
            f"downloading wheels for {label} failed (pip download exit {proc.returncode}):\n"
            f"{proc.stderr.strip()[-3000:]}"
        )
    found, missing = _match(packages, _index(house))
    if missing:
        names = ", ".join(f"{p.name}=={p.version}" for p in missing)
        raise ConfigError(f"no wheel matching the locked hashes for: {names}")
    return found


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # different filesystem: fall back to a copy
        shutil.copy2(src, dst)


def prepare_context(
    context: Path,
    *,
    dockerfile: Path,
    lock: Path,
    wheels: Iterable[Path],
    trees: dict[str, Path] | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    """(Re)create a build context directory.

    Layout: ``Dockerfile``, ``requirements.lock``, ``wheels/*.whl``, one
    directory per entry of ``trees`` (``__pycache__`` and ``*.pyc`` left out)
    and one generated text file per entry of ``files`` (relative path -> text).

    Returns:
        ``context``.
    """
    if context.exists():
        shutil.rmtree(context)
    (context / "wheels").mkdir(parents=True)
    shutil.copy2(dockerfile, context / "Dockerfile")
    shutil.copy2(lock, context / "requirements.lock")
    for wheel in wheels:
        _link(wheel, context / "wheels" / wheel.name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
    for name, tree in (trees or {}).items():
        shutil.copytree(tree, context / name, ignore=ignore)
    for rel, text in (files or {}).items():
        target = context / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return context


def context_sha256(context: Path, *, skip: Iterable[str] = ()) -> str:
    """sha256 over every file's relative path, exec bit and content.

    Args:
        context: the build context directory.
        skip: top-level entries left out (parts a build target does not use).
    """
    skipped = set(skip)
    digest = hashlib.sha256()
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        rel = path.relative_to(context)
        if rel.parts[0] in skipped:
            continue
        digest.update(f"{rel.as_posix()}\0{os.access(path, os.X_OK)}\0".encode())
        digest.update(_sha256(path).encode())
    return digest.hexdigest()
