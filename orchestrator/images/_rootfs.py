"""The root filesystem every mlbridge image starts from.

By default it is built without any image registry: ``mmdebstrap`` creates a
minimal Debian root filesystem from the host's own apt sources and
``docker import`` turns it into ``mlbridge/rootfs:<suite>``. Where a registry
is reachable, ``MLBRIDGE_BASE_IMAGE`` (e.g. ``python:3.11-slim``) names an
image to start from instead; it only gains ``tini`` if it lacks it.

Either way the result carries an ``io.mlbridge.recipe-sha256`` label, and an
image whose recipe hash matches is reused unless a rebuild is forced.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from runtimes.wire.errors import ConfigError

from ._paths import IMAGE_REPO, IMAGE_VERSION, LABEL_PREFIX, state_dir
from ._probe import probe_image

SUITE = "bookworm"
VARIANT = "minbase"
#: Debian packages in the root filesystem. python3 is 3.11 on bookworm, the
#: same minor version as the host, so host-downloaded cp311 wheels install.
PACKAGES = ("python3", "python3-venv", "tini", "ca-certificates")
#: Documentation and translations are dead weight in a runtime image.
DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
APT_OPTIONS = ('APT::Install-Recommends "false"',)
ROOTFS_TAG = f"{IMAGE_REPO}/rootfs:{SUITE}"
REGISTRY_ROOTFS_TAG = f"{IMAGE_REPO}/rootfs:registry"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_REGISTRY_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
USER root
RUN command -v python3 >/dev/null || { echo "base image has no python3" >&2; exit 1; }
RUN command -v tini >/dev/null || { apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini \\
    && rm -rf /var/lib/apt/lists/*; }
"""


@dataclass(frozen=True)
class RootfsImage:
    """The image that ``Dockerfile.base`` builds FROM."""

    tag: str
    image_id: str
    cached: bool


def host_sources() -> list[Path]:
    """The host's apt source files for :data:`SUITE`.

    ``MLBRIDGE_ROOTFS_SOURCES`` (``os.pathsep``-separated paths) overrides them.

    Raises:
        ConfigError: no source file names the suite.
    """
    env = os.environ.get("MLBRIDGE_ROOTFS_SOURCES")
    if env:
        found = [Path(p) for p in env.split(os.pathsep) if p]
    else:
        apt = Path("/etc/apt")
        candidates = [apt / "sources.list"]
        candidates += sorted((apt / "sources.list.d").glob("*.list"))
        candidates += sorted((apt / "sources.list.d").glob("*.sources"))
        found = [p for p in candidates if p.is_file() and _names_suite(p.read_text())]
    if not found:
        raise ConfigError(
            f"no apt source for Debian {SUITE} found on this host; set "
            "MLBRIDGE_ROOTFS_SOURCES to a sources.list or .sources file, or set "
            "MLBRIDGE_BASE_IMAGE=python:3.11-slim where a registry is reachable"
        )
    return found


def _names_suite(text: str) -> bool:
    """Whether an apt source file (one-line or deb822 format) names :data:`SUITE`."""
    return any(
        SUITE in line.split()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )


def rootfs_recipe(sources: list[Path]) -> str:
    """sha256 over everything that determines the root filesystem."""
    recipe = {
        "suite": SUITE,
        "variant": VARIANT,
        "packages": PACKAGES,
        "dpkg": DPKG_OPTIONS,
        "apt": APT_OPTIONS,
        "sources": [p.read_text(encoding="utf-8") for p in sources],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def ensure_rootfs(
    client: docker.DockerClient,
    progress: Callable[[str], None],
    *,
    rebuild: bool = False,
    offline: bool = False,
) -> RootfsImage:
    """Return the root filesystem image, building it only when needed.

    Args:
        client: Docker SDK client.
        progress: receives one line per step.
        rebuild: rebuild even when an image with the same recipe exists.
        offline: never run mmdebstrap or pull; a missing image is an error.

    Raises:
        ConfigError: mmdebstrap is missing or failed, or the registry base
            image cannot be found or pulled.
    """
    base = os.environ.get("MLBRIDGE_BASE_IMAGE", "").strip()
    if base:
        return _from_registry(client, base, progress, rebuild=rebuild, offline=offline)
    sources = host_sources()
    recipe = rootfs_recipe(sources)
    existing = _image_with_recipe(client, ROOTFS_TAG, recipe)
    if existing and not rebuild:
        progress(f"rootfs: cached {ROOTFS_TAG} ({existing[:19]})")
        return RootfsImage(ROOTFS_TAG, existing, cached=True)
    if offline:
        raise ConfigError(
            f"offline build: no {ROOTFS_TAG} image with recipe {recipe[:12]}; run "
            "`python -m orchestrator.images build` once with access to the apt sources"
        )
    if shutil.which("mmdebstrap") is None:
        raise ConfigError(
            "mmdebstrap is not installed; install it (apt-get install mmdebstrap, or "
            "scripts/docker-engine.sh up) or set MLBRIDGE_BASE_IMAGE=python:3.11-slim "
            "where a registry is reachable"
        )
    progress(f"rootfs: building Debian {SUITE} ({VARIANT}) with mmdebstrap")
    started = time.monotonic()
    image_id = _mmdebstrap_import(client, sources, recipe)
    progress(
        f"rootfs: imported {ROOTFS_TAG} ({image_id[:19]}) in {time.monotonic() - started:.1f}s"
    )
    return RootfsImage(ROOTFS_TAG, image_id, cached=False)


def _image_with_recipe(client: docker.DockerClient, tag: str, recipe: str) -> str | None:
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    labels = image.labels or {}
    return image.id if labels.get(f"{LABEL_PREFIX}recipe-sha256") == recipe else None


def _mmdebstrap_import(client: docker.DockerClient, sources: list[Path], recipe: str) -> str:
    work = state_dir() / "rootfs"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        packages_tsv = Path(tmp) / "packages.tsv"
        hook = (
            'dpkg-query --admindir="$1/var/lib/dpkg" -W '
            "-f='${Package}\\t${Version}\\t${Architecture}\\n' > " + str(packages_tsv)
        )
        cmd = ["mmdebstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}"]
        cmd += [f"--aptopt={opt}" for opt in APT_OPTIONS]
        cmd += [f"--dpkgopt={opt}" for opt in DPKG_OPTIONS]
        cmd += [f"--customize-hook={hook}", "--quiet", SUITE, str(tarball)]
        cmd += [str(p) for p in sources]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ConfigError(
                f"mmdebstrap failed (exit {proc.returncode}):\n{proc.stderr.strip()[-3000:]}"
            )
        package_list = packages_tsv.read_bytes()
        python = next(
            (
                line.split("\t")[1].split("-")[0]
                for line in package_list.decode().splitlines()
                if line.startswith("python3.11\t") or line.startswith("python3\t")
            ),
            "",
        )
        labels = {
            "bridge": "rootfs",
            "framework": "debian",
            "framework-version": SUITE,
            "python-version": python,
            # The package list is the root filesystem's lock.
            "lock-sha256": hashlib.sha256(package_list).hexdigest(),
            "version": IMAGE_VERSION,
            "recipe-sha256": recipe,
        }
        changes = [f"ENV PATH={DEFAULT_PATH}", "ENV LANG=C.UTF-8", 'CMD ["/bin/sh"]']
        changes += [f"LABEL {LABEL_PREFIX}{k}={json.dumps(v)}" for k, v in labels.items()]
        repo, tag = ROOTFS_TAG.split(":")
        try:
            client.api.import_image_from_file(
                str(tarball), repository=repo, tag=tag, changes=changes
            )
        except docker.errors.DockerException as exc:
            raise ConfigError(f"docker import of the root filesystem failed: {exc}") from exc
    return _id(client.images.get(ROOTFS_TAG).id, ROOTFS_TAG)


def _from_registry(
    client: docker.DockerClient,
    base: str,
    progress: Callable[[str], None],
    *,
    rebuild: bool,
    offline: bool,
) -> RootfsImage:
    try:
        source = client.images.get(base)
    except docker.errors.ImageNotFound:
        if offline:
            raise ConfigError(f"offline build: MLBRIDGE_BASE_IMAGE={base} is not present") from None
        progress(f"rootfs: pulling {base}")
        try:
            source = client.images.pull(base)
        except docker.errors.DockerException as exc:
            raise ConfigError(
                f"MLBRIDGE_BASE_IMAGE={base} is not present and cannot be pulled ({exc}); "
                "unset MLBRIDGE_BASE_IMAGE to build a root filesystem with mmdebstrap"
            ) from exc
    recipe = hashlib.sha256(f"{source.id}\n{_REGISTRY_DOCKERFILE}".encode()).hexdigest()
    existing = _image_with_recipe(client, REGISTRY_ROOTFS_TAG, recipe)
    if existing and not rebuild:
        progress(f"rootfs: cached {REGISTRY_ROOTFS_TAG} from {base} ({existing[:19]})")
        return RootfsImage(REGISTRY_ROOTFS_TAG, existing, cached=True)
    progress(f"rootfs: preparing {REGISTRY_ROOTFS_TAG} from {base}")
    source_id = _id(source.id, base)
    facts = probe_image(client, source_id)
    facts.check_python(base)
    deb_list = "".join(f"{d.name}\t{d.version}\t{d.arch}\n" for d in facts.deb_packages)
    try:
        image, _ = client.images.build(
            fileobj=io.BytesIO(_REGISTRY_DOCKERFILE.encode()),
            tag=REGISTRY_ROOTFS_TAG,
            buildargs={"BASE": source_id},
            labels={
                f"{LABEL_PREFIX}bridge": "rootfs",
                f"{LABEL_PREFIX}framework": base,
                f"{LABEL_PREFIX}framework-version": source_id[:19],
                f"{LABEL_PREFIX}python-version": facts.python_version,
                f"{LABEL_PREFIX}lock-sha256": hashlib.sha256(deb_list.encode()).hexdigest(),
                f"{LABEL_PREFIX}version": IMAGE_VERSION,
                f"{LABEL_PREFIX}recipe-sha256": recipe,
            },
            # apt needs the network only when the base lacks tini.
            network_mode="none" if facts.tini else None,
            rm=True,
            forcerm=True,
            nocache=rebuild,
        )
    except docker.errors.DockerException as exc:
        raise ConfigError(f"preparing {base} as the root filesystem failed: {exc}") from exc
    return RootfsImage(REGISTRY_ROOTFS_TAG, _id(image.id, REGISTRY_ROOTFS_TAG), cached=False)


def _id(image_id: str | None, what: str) -> str:
    """An image's id, which the engine always reports for an image it has."""
    if not image_id:
        raise ConfigError(f"the Docker engine reported no id for image {what}")
    return image_id
