"""Make (once) and find the peers' venvs: ``python -m benchmarks.peers.venvs [mlserver|litserve ...]``.

Each peer gets ``~/.cache/mlbridge/peers/<name>``, built from
``<name>-requirements.txt`` beside this file. The venv records the sha256 of
the requirements it was built from; a later call with the same requirements
reuses it without touching pip (a benchmark run must not reinstall), a
changed file rebuilds it. Every venv gets the local torch 2.13.0 CPU wheel:
asking pip for any other torch would download gigabytes of CUDA wheels, so
the install is checked afterwards, not trusted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = ("mlserver", "litserve")
TORCH = "2.13.0"
STAMP = ".mlbridge-requirements.sha256"


def root() -> Path:
    """Where the peers' venvs live (``MLBRIDGE_PEERS_DIR`` overrides)."""
    return Path(os.environ.get("MLBRIDGE_PEERS_DIR", Path.home() / ".cache" / "mlbridge" / "peers"))


def requirements(name: str) -> Path:
    if name not in PEERS:
        raise SystemExit(f"unknown peer {name!r}; peers: {', '.join(PEERS)}")
    return HERE / f"{name}-requirements.txt"


def python(name: str) -> Path:
    """The peer venv's interpreter (the venv may not exist yet: see :func:`ready`)."""
    return root() / name / "bin" / "python"


def _digest(name: str) -> str:
    return hashlib.sha256(requirements(name).read_bytes()).hexdigest()


def ready(name: str) -> bool:
    """Whether the venv exists, built from the current requirements file."""
    stamp = root() / name / STAMP
    return python(name).exists() and stamp.exists() and stamp.read_text().strip() == _digest(name)


def _check_torch(name: str) -> None:
    out = subprocess.run([str(python(name)), "-c", "import torch; print(torch.__version__)"],
                         capture_output=True, text=True, check=False)
    version = out.stdout.strip()
    if out.returncode != 0 or not version.startswith(TORCH) or "+cpu" not in version:
        raise SystemExit(f"{name} venv has torch {version or '(none)'}, not {TORCH}+cpu: {out.stderr[-400:]}\n"
                         f"pin torch=={TORCH} in {requirements(name)} (the local CPU wheel in /opt/wheels)")


def ensure(name: str, *, quiet: bool = True) -> Path:
    """The peer's venv interpreter, building the venv first if it is missing or stale."""
    if ready(name):
        return python(name)
    venv = root() / name
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    print(f"setting up the {name} venv at {venv} (once; a few minutes)", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python(name)), "-m", "pip", "install", *(["-q"] if quiet else []), "-r", str(requirements(name))]
    subprocess.run(pip, check=True)
    _check_torch(name)
    (venv / STAMP).write_text(_digest(name) + "\n")
    return python(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("peers", nargs="*", default=list(PEERS), help=f"which ({', '.join(PEERS)}; default all)")
    ap.add_argument("--check", action="store_true", help="only say whether each venv is ready (exit 1 if not)")
    a = ap.parse_args()
    missing = False
    for name in a.peers:
        requirements(name)
        if a.check:
            print(f"{name}: {'ready' if ready(name) else 'missing or stale'} ({root() / name})")
            missing |= not ready(name)
        else:
            print(f"{name}: {ensure(name, quiet=False)}")
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()
