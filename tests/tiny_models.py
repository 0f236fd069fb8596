"""Tiny transformers models for tests, made once per session, and grants for them.

The models come from :func:`orchestrator.models.tiny.make_tiny_model` (random
weights from a small config, a tokenizer trained here); a test that needs the
framework imports this module, which skips nothing: torch and transformers
are in the ``frameworks`` extra every test run installs.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tempfile
import threading
from pathlib import Path

from orchestrator.models.tiny import make_tiny_model
from runtimes.core import ModelGrant
from runtimes.wire.artifacts import manifest, manifest_hash, total_size

__all__ = ["fake_model_dir", "grant_for", "tiny_model"]

_ROOT = Path(tempfile.mkdtemp(prefix="mlb-tiny-"))
atexit.register(shutil.rmtree, _ROOT, True)
_LOCK = threading.Lock()


def tiny_model(kind: str = "bert-classifier", seed: int = 0) -> Path:
    """A tiny model directory of ``kind`` (made on first use, then shared; treat it as read-only)."""
    out = _ROOT / f"{kind}-{seed}"
    with _LOCK:
        if not out.exists():
            tmp = _ROOT / f".{kind}-{seed}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            make_tiny_model(tmp, kind, seed=seed)
            tmp.rename(out)
    return out


def grant_for(path: Path, name: str) -> ModelGrant:
    """A grant of the model directory ``path`` as ``name``, its manifest recorded now."""
    files = manifest(path)
    return ModelGrant(name=name, hash=manifest_hash(files), path=path, files=files,
                      size_bytes=total_size(path, files))


def fake_model_dir(path: Path, seed: str) -> Path:
    """A directory shaped like a saved model, for tests of the store and the mounts (its bytes follow ``seed``)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "seed": seed}))
    (path / "model.safetensors").write_bytes(hashlib.sha256(seed.encode()).digest() * 64)
    (path / "tok").mkdir()
    (path / "tok" / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    return path
