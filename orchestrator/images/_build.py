"""Build mlbridge's images: root filesystem -> base -> one image per bridge, and the orchestrator's.

Each image is built from a context assembled under ``<state>/builds/<name>/``
with the Docker engine's network switched off; wheels come from the host
wheelhouse and are installed with ``--no-index --require-hashes``.

``Dockerfile.base`` has a ``deps`` target (root filesystem, user, core
wheels) tagged ``mlbridge/base-deps``; bridge images install their wheels on
top of it, not on the base, so editing ``runtimes/`` rebuilds the base and
re-copies, but never re-installs, a bridge's packages. An image whose recipe
(context, FROM image, build args, labels) is unchanged and whose id matches
the record is reused as is.

``mlbridge/orchestrator`` (:data:`ORCHESTRATOR_IMAGE`, built only when named)
runs the orchestrator itself in a container, for CI (``orchestrator.testing``).
It is built on ``base-deps`` too: the same non-root uid as the workers (the
docker backend hands socket directories to that uid) and the same core wheels
(process-backend workers run in its venv). Its context carries the
orchestrator's locked wheels and the ``orchestrator/`` and ``runtimes/``
packages of the running interpreter's mlbridge (a checkout or an installed
wheel alike), with that distribution's metadata and console script.
"""

from __future__ import annotations

import hashlib
import json
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker

from runtimes.wire.errors import ConfigError

from ._docker import RECIPE_LABEL, build_offline, docker_client, reusable_image
from ._lock import LockedPackage, lock_sha256, pinned_version, read_lock
from ._orchestrator import (
    DISTRIBUTION,
    check_recipe,
    installed_distribution,
    installed_packages,
    orchestrator_dist_files,
)
from ._paths import (
    IMAGE_VERSION,
    LABEL_PREFIX,
    build_dir,
    check_bridge,
    image_tag,
    known_bridges,
    recipe_dir,
    source_dir,
)
from ._probe import probe_image
from ._record import record_image
from ._rootfs import ensure_rootfs
from ._sbom import make_sbom
from ._vuln import vulnerability_report
from ._wheelhouse import context_sha256, ensure_wheels, prepare_context

BASE_NAME = "base"
DEPS_NAME = "base-deps"
#: The orchestrator's own image: built by ``images build orchestrator``, never by default.
ORCHESTRATOR_IMAGE = "orchestrator"
#: Images ``build_images`` makes only when asked by name (they are not bridges).
OPTIONAL_IMAGES = (ORCHESTRATOR_IMAGE,)
#: Context entries that only the full base image uses, not its ``deps`` target.
RUNTIME_TREES = ("runtimes", "runtimes-dist")


@dataclass(frozen=True)
class BuiltImage:
    """One image produced (or reused) by :func:`build_images`.

    Attributes:
        bridge: bridge name (``base`` / ``base-deps`` for the shared images).
        tag: e.g. ``mlbridge/mock:0.1.0``.
        image_id: ``sha256:...``; the id recorded in ``images.json``.
        labels: the image's ``io.mlbridge.*`` labels.
        sbom_path: CycloneDX JSON SBOM.
        vuln_report_path: vulnerability report JSON.
        cached: True when an identical, recorded image was reused.
        seconds: wall time spent on this image.
    """

    bridge: str
    tag: str
    image_id: str
    labels: dict[str, str] = field(default_factory=dict)
    sbom_path: Path = Path()
    vuln_report_path: Path = Path()
    cached: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class _Job:
    name: str
    context: Path
    lock: Path
    packages: list[LockedPackage]
    from_id: str
    framework: tuple[str, str]
    buildargs: dict[str, str]
    target: str | None = None
    recipe_skip: tuple[str, ...] = ()


def image_labels(
    *, bridge: str, framework: str, framework_version: str, python_version: str, lock: Path
) -> dict[str, str]:
    """The ``io.mlbridge.*`` labels every image carries."""
    return {
        f"{LABEL_PREFIX}bridge": bridge,
        f"{LABEL_PREFIX}framework": framework,
        f"{LABEL_PREFIX}framework-version": framework_version,
        f"{LABEL_PREFIX}python-version": python_version,
        f"{LABEL_PREFIX}lock-sha256": lock_sha256(lock),
        f"{LABEL_PREFIX}version": IMAGE_VERSION,
    }


def runtime_dist_info() -> dict[str, str]:
    """Metadata that makes the copied ``runtimes/`` package an installed distribution.

    The runtime finds bridges by entry point (``mlbridge.bridges``), and only
    installed distributions have entry points. The image gets a minimal
    ``.dist-info`` beside ``runtimes/`` on ``PYTHONPATH`` carrying the entry
    points that ``pyproject.toml`` declares for in-image bridges.

    Returns:
        Context-relative path -> file content, under ``runtimes-dist/``.

    Raises:
        ConfigError: ``pyproject.toml`` is missing or unreadable.
    """
    path = source_dir() / "pyproject.toml"
    try:
        project = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read bridge entry points from {path}: {exc}") from exc
    group = project.get("entry-points", {}).get("mlbridge.bridges", {})
    bridges = {k: v for k, v in sorted(group.items()) if str(v).startswith("runtimes.")}
    dist = f"runtimes-dist/mlbridge_runtimes-{IMAGE_VERSION}.dist-info"
    entry_points = "[mlbridge.bridges]\n" + "".join(f"{k} = {v}\n" for k, v in bridges.items())
    metadata = f"Metadata-Version: 2.1\nName: mlbridge-runtimes\nVersion: {IMAGE_VERSION}\n"
    return {
        f"{dist}/METADATA": metadata,
        f"{dist}/entry_points.txt": entry_points,
        f"{dist}/top_level.txt": "runtimes\n",
    }


def build_images(
    bridges: list[str] | None = None,
    *,
    progress: Callable[[str], None] = print,
    rebuild: bool = False,
    offline: bool = False,
    client: docker.DockerClient | None = None,
) -> dict[str, BuiltImage]:
    """Build (or reuse) the images for ``bridges`` and everything under them.

    Args:
        bridges: bridge names, and ``orchestrator`` for the orchestrator's own
            image; None builds every bridge with a recipe (not the orchestrator).
        progress: receives one human-readable line per step.
        rebuild: rebuild the root filesystem and every image without caches.
        offline: use only what is cached (root filesystem, wheels); never
            touch the network, fail instead. Tests build this way.
        client: Docker SDK client; a new one from the environment by default.

    Returns:
        Name -> built image, for the requested names.

    Raises:
        BridgeNotFound: a bridge has no recipe under ``images/``.
        ConfigError: a recipe, lock, download or build step failed.
        Unavailable: no Docker engine answers.
    """
    names = list(dict.fromkeys(bridges or known_bridges()))
    for name in names:
        if name in OPTIONAL_IMAGES:
            check_recipe(name)
        else:
            check_bridge(name)
    client = client or docker_client()
    rootfs = ensure_rootfs(client, progress, rebuild=rebuild, offline=offline)
    record_image(rootfs.tag, rootfs.image_id, labels=client.images.get(rootfs.image_id).labels, client=client)

    def run(job: _Job) -> BuiltImage:
        return _build(client, job, progress=progress, rebuild=rebuild)

    base_lock = recipe_dir(BASE_NAME) / "requirements.lock"
    base_packages = read_lock(base_lock)
    base_context = prepare_context(
        build_dir(BASE_NAME) / "context",
        dockerfile=source_dir() / "Dockerfile.base",
        lock=base_lock,
        wheels=ensure_wheels(base_packages, progress, label=BASE_NAME, offline=offline).values(),
        trees={"runtimes": source_dir() / "runtimes"},
        files=runtime_dist_info(),
    )
    deps = run(
        _Job(
            name=DEPS_NAME,
            context=base_context,
            lock=base_lock,
            packages=base_packages,
            from_id=rootfs.image_id,
            framework=("mlbridge-runtime-deps", IMAGE_VERSION),
            buildargs={"BASE": rootfs.image_id},
            target="deps",
            recipe_skip=RUNTIME_TREES,
        )
    )
    built: dict[str, BuiltImage] = {}
    if ORCHESTRATOR_IMAGE in names:
        built[ORCHESTRATOR_IMAGE] = run(_orchestrator_job(deps, progress, offline=offline))
    bridge_names = [n for n in names if n not in OPTIONAL_IMAGES]
    if not bridge_names:
        return {name: built[name] for name in names}

    base = run(
        _Job(
            name=BASE_NAME,
            context=base_context,
            lock=base_lock,
            packages=base_packages,
            from_id=rootfs.image_id,
            framework=("mlbridge-runtime", IMAGE_VERSION),
            buildargs={"BASE": rootfs.image_id},
        )
    )
    for name in bridge_names:
        lock = recipe_dir(name) / "requirements.lock"
        packages = read_lock(lock)
        dockerfile = recipe_dir(name) / "Dockerfile"
        buildargs = {"BASE": base.image_id}
        if "ARG DEPS" in dockerfile.read_text(encoding="utf-8"):
            buildargs["DEPS"] = deps.image_id
        context = prepare_context(
            build_dir(name) / "context",
            dockerfile=dockerfile,
            lock=lock,
            wheels=ensure_wheels(packages, progress, label=name, offline=offline).values(),
        )
        built[name] = run(
            _Job(
                name=name,
                context=context,
                lock=lock,
                packages=packages,
                from_id=base.image_id,
                framework=(name, pinned_version(packages, name) or IMAGE_VERSION),
                buildargs=buildargs,
            )
        )
    return {name: built[name] for name in names}


def _orchestrator_job(deps: BuiltImage, progress: Callable[[str], None], *, offline: bool) -> _Job:
    name = ORCHESTRATOR_IMAGE
    lock = recipe_dir(name) / "requirements.lock"
    packages = read_lock(lock)
    dist = installed_distribution()
    files = orchestrator_dist_files(dist)
    files["config.yaml"] = (recipe_dir(name) / "config.yaml").read_text(encoding="utf-8")
    context = prepare_context(
        build_dir(name) / "context",
        dockerfile=recipe_dir(name) / "Dockerfile",
        lock=lock,
        wheels=ensure_wheels(packages, progress, label=name, offline=offline).values(),
        trees=installed_packages(),
        files=files,
    )
    return _Job(
        name=name,
        context=context,
        lock=lock,
        packages=packages,
        from_id=deps.image_id,
        framework=(DISTRIBUTION, dist.version),
        buildargs={"DEPS": deps.image_id},
    )


def _build(
    client: docker.DockerClient, job: _Job, *, progress: Callable[[str], None], rebuild: bool
) -> BuiltImage:
    started = time.monotonic()
    tag = image_tag(job.name)
    out = build_dir(job.name)
    facts = probe_image(client, job.from_id)
    facts.check_python(job.from_id)
    labels = image_labels(
        bridge=job.name,
        framework=job.framework[0],
        framework_version=job.framework[1],
        python_version=facts.python_version,
        lock=job.lock,
    )
    recipe = json.dumps(
        [context_sha256(job.context, skip=job.recipe_skip), job.buildargs, job.target, labels],
        sort_keys=True,
    )
    labels[RECIPE_LABEL] = hashlib.sha256(recipe.encode()).hexdigest()

    image_id = None if rebuild else reusable_image(client, tag, labels[RECIPE_LABEL])
    cached = image_id is not None
    if image_id is None:
        progress(f"{job.name}: building {tag}")
        image_id = build_offline(
            client,
            context=job.context,
            tag=tag,
            buildargs=job.buildargs,
            labels=labels,
            target=job.target,
            log_path=out / "build.log",
            progress=progress,
            nocache=rebuild,
        )
    record_image(tag, image_id, labels=labels, client=client)

    image_facts = probe_image(client, image_id)
    sbom = make_sbom(
        tag=tag,
        image_id=image_id,
        labels=labels,
        python_packages=job.packages,
        deb_packages=image_facts.deb_packages,
        distro=image_facts.os,
        python_version=image_facts.python_version,
    )
    report = vulnerability_report(
        tag=tag,
        image_id=image_id,
        python_packages=job.packages,
        deb_packages=image_facts.deb_packages,
    )
    sbom_path = _write_json(out / "sbom.cdx.json", sbom)
    vuln_path = _write_json(out / "vulnerabilities.json", report)
    seconds = time.monotonic() - started
    state = "cached" if cached else f"built in {seconds:.1f}s"
    progress(f"{job.name}: {tag} {image_id[:19]} ({state})")
    if report["status"] == "checked":
        progress(f"{job.name}: {len(report['vulnerabilities'])} known vulnerabilities")
    return BuiltImage(job.name, tag, image_id, labels, sbom_path, vuln_path, cached, seconds)


def _write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
