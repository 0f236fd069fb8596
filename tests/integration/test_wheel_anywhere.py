"""mlbridge from its wheel, in a fresh venv outside the source tree: build an image, serve, call.

What other tests use is left as it was: the wheel's build has a state dir of
its own (its own ``images.json``) and shares only the wheelhouse
(``MLBRIDGE_WHEELHOUSE``, hash-checked) and the engine. In the engine it
reproduces the very image ids the checkout built (the classic builder's
cache keys on content, and the wheel's ``runtimes/`` is byte for byte the
checkout's), so ``mlbridge/*`` tags do not move. That is checked before the
build (the base image's ``runtimes/`` against the wheel's) and asserted
after; a tag that moved anyway is put back before the test fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from orchestrator.images import docker_client, lock_sha256, verify_image
from orchestrator.images._record import is_keep_tag, load_records
from tests.unit.test_wheel_install import build_wheel, tree_digests

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MOCK = "mlbridge/mock:0.1.0"
#: Tags the wheel's `images build mock` touches.
TOUCHED = ("mlbridge/rootfs:bookworm", "mlbridge/base-deps:0.1.0", "mlbridge/base:0.1.0", MOCK)
_HASH_TREE = """
import hashlib, json, os, sys
out = {}
for d, dirs, files in os.walk(sys.argv[1]):
    dirs[:] = [x for x in dirs if x != "__pycache__"]
    for f in files:
        if not f.endswith((".pyc", ".pyo")):
            p = os.path.join(d, f)
            out[os.path.relpath(p, sys.argv[1])] = hashlib.sha256(open(p, "rb").read()).hexdigest()
print(json.dumps(out))
"""


def _tags(client: docker.DockerClient) -> dict[str, str]:
    return {t: str(i.id) for i in client.images.list(name="mlbridge/*") for t in i.tags
            if t.startswith("mlbridge/") and not is_keep_tag(t)}


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    c = docker_client()
    yield c
    c.close()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A fresh venv outside the source tree with mlbridge's wheel installed (deps from the index)."""
    tmp = tmp_path_factory.mktemp("wheel-anywhere")
    started = time.monotonic()
    wheel = build_wheel(tmp / "build")
    built_s = time.monotonic() - started
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    started = time.monotonic()
    subprocess.run([str(env_dir / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    str(wheel)], check=True, capture_output=True, text=True, timeout=900)
    install_s = time.monotonic() - started
    print(f"\nwheel built in {built_s:.1f}s, installed with its dependencies in {install_s:.1f}s")
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLBRIDGE_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(MLBRIDGE_STATE_DIR=str(tmp / "state"), PATH=f"{env_dir / 'bin'}:{env['PATH']}")
    main_house = Path(os.environ.get("MLBRIDGE_WHEELHOUSE") or _main_state() / "wheelhouse")
    if main_house.is_dir():
        env["MLBRIDGE_WHEELHOUSE"] = str(main_house)  # wheels are hash-checked: sharing is safe
    return {"venv": env_dir, "cwd": cwd, "env": env, "state": tmp / "state"}


def _main_state() -> Path:
    from orchestrator.images import state_dir

    return state_dir()


def _site_runtimes(env_dir: Path) -> Path:
    (site,) = env_dir.glob("lib/python3*/site-packages")
    return site / "runtimes"


def mlbridge(installed: dict[str, object], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mlbridge", *args], cwd=installed["cwd"], env=installed["env"],  # type: ignore[arg-type]
                          capture_output=True, text=True, timeout=timeout)


def test_the_installed_wheel_runs_from_anywhere(installed: dict[str, object], client: docker.DockerClient) -> None:
    env_dir = installed["venv"]
    assert isinstance(env_dir, Path)
    imported = subprocess.run([str(env_dir / "bin/python"), "-c", "import orchestrator; print(orchestrator.__file__)"],
                              cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True,  # type: ignore[arg-type]
                              check=True)
    assert str(env_dir) in imported.stdout and str(ROOT) not in imported.stdout
    assert tree_digests(_site_runtimes(env_dir)) == tree_digests(ROOT / "runtimes")


def test_images_build_from_the_wheel_leaves_shared_images_alone(
    installed: dict[str, object], client: docker.DockerClient
) -> None:
    before = _tags(client)
    main_records = {t: r for t, r in load_records(_main_state()).items() if t in TOUCHED}
    if MOCK not in before or MOCK not in main_records:
        pytest.fail(f"{MOCK} is not built here; run `mlbridge images build mock` first (CI does)")
    # The same runtimes/ as the engine's base image, and the same lock as its mock image: then the
    # wheel's build reproduces their ids. Otherwise it would move tags other tests run from.
    in_image = client.containers.run("mlbridge/base:0.1.0", entrypoint=["python3", "-c", _HASH_TREE,
                                     "/opt/mlbridge/runtimes"], remove=True, network_mode="none")
    assert json.loads(in_image) == tree_digests(ROOT / "runtimes"), (
        "the engine's mlbridge/base is stale against this tree's runtimes/: run `mlbridge images build` first")
    assert client.images.get(MOCK).labels["io.mlbridge.lock-sha256"] == lock_sha256(
        ROOT / "images/mock/requirements.lock")

    state = installed["state"]
    assert isinstance(state, Path)
    started = time.monotonic()
    try:
        r = mlbridge(installed, "images", "build", "mock")
    finally:
        after = _tags(client)
        ours = {t: e["image_id"] for t, e in load_records(state).items()}
        # Tags this build moved (to an id it recorded; another session's rebuild is left alone):
        # put back what other tests run from, then fail.
        moved = {t: i for t, i in before.items() if after.get(t) not in (i, None) and after.get(t) == ours.get(t)}
        for tag, image_id in moved.items():
            client.images.get(image_id).tag(*tag.rsplit(":", 1))
    seconds = time.monotonic() - started
    print(f"\n`mlbridge images build mock` from the wheel: {seconds:.1f}s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert moved == {}, f"tags moved (put back): {moved}\n{r.stdout}"
    assert re.search(rf"^{re.escape(MOCK)} {re.escape(before[MOCK][:19])} ", r.stdout, re.M), r.stdout
    # Its own record, which verify_image accepts; the main record is not where it writes, and still
    # names the same ids (other sessions may refresh its times meanwhile).
    assert verify_image(client, "mock", state=state) == before[MOCK]
    venv_python = installed["venv"]
    assert isinstance(venv_python, Path)
    where = subprocess.run([str(venv_python / "bin/python"), "-c",
                            "from orchestrator.images import records_path; print(records_path())"],
                           cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True,  # type: ignore[arg-type]
                           check=True).stdout.strip()
    assert where == str(state / "images.json")
    main_after = load_records(_main_state())
    assert {t: main_after[t]["image_id"] for t in main_records} == {
        t: r["image_id"] for t, r in main_records.items()}
    assert (state / "builds/mock/sbom.cdx.json").is_file()


def test_serve_with_the_process_backend_skips_what_is_not_installed(installed: dict[str, object]) -> None:
    proc = subprocess.Popen(["mlbridge", "serve", "--backend", "process", "--listen", "127.0.0.1:0"],
                            cwd=installed["cwd"], env=installed["env"], stdout=subprocess.PIPE,  # type: ignore[arg-type]
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "serving" in line:
                break
        skipped = {m.group(1): m.group(2) for m in (re.match(r"mlbridge: skipping bridge (\w+): (.*)", x)
                                                      for x in lines) if m}
        assert set(skipped) == {"custom", "dspy", "langchain", "transformers"}, lines
        assert "package 'dspy' is not installed here" in skipped["dspy"]
        assert "pip install 'mlbridge[frameworks]'" in skipped["dspy"]
        address = re.search(r"serving mock on (\S+) ", lines[-1])
        assert address, lines
        # The global options after the command, as any user would type them.
        r = mlbridge(installed, "call", "mock", "mock:echo", "--args", '{"x": 1}', "--address", address.group(1),
                     timeout=60)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"x": 1}
        r = mlbridge(installed, "call", "--address", address.group(1), "dspy", "dspy:configure_lm", timeout=60)
        assert r.returncode == 1
        assert "UNKNOWN_BRIDGE: bridge 'dspy' is not served: it was skipped at start: its framework" in r.stderr
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "skipping bridge dspy:" in err
    assert proc.returncode == 0, err
