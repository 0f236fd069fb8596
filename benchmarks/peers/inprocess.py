"""The baseline: the pipeline called directly, in a process pinned like the servers.

``python -m benchmarks.peers.inprocess MODEL_DIR SECONDS`` (started by
``benchmarks.transformers`` on the server core, one torch thread) loads
``transformers.pipeline("text-classification", model=MODEL_DIR)`` as a user
would and prints one JSON object:

- ``texts`` and ``answers``: the texts every server is asked about and the
  pipeline's answer for each, the source of truth for every reply. The tiny
  model's random weights put every score within a few 1e-4 of 0.5, so texts
  are picked (from a fixed, seeded pool) whose scores lie at least
  ``3 * TOLERANCE`` apart: a reply meant for another text can never pass the
  check.
- ``latencies_ms``: one caller, one text per call, for ``SECONDS``.
- ``batched_rps``: texts per second with 32 texts per call (``batch_size=32``):
  about what batching can reach on this core, the ceiling for the servers.
"""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any

from benchmarks.peers.load import TOLERANCE

GAP = 3 * TOLERANCE
BATCH = 32


def candidates(n: int = 400, seed: int = 0) -> list[str]:
    """Sentences of 3 to 16 words from the tiny model's own corpus (its tokenizer knows every word)."""
    from orchestrator.models.tiny import CORPUS

    words = sorted({w for s in CORPUS for w in s.split()})
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 16))) for _ in range(n)]


def distinguishable(pipe: Any, pool: list[str]) -> list[str]:
    """The texts of ``pool`` whose answers differ pairwise by more than ``GAP`` (a greedy pick)."""
    def key(a: dict[str, Any]) -> float:  # one number for both labels: P(label 0)
        return float(a["score"]) if a["label"] == pipe.model.config.id2label[0] else 1 - float(a["score"])

    scored = sorted(zip((key(a) for a in pipe(pool, batch_size=BATCH)), pool, strict=True))
    picked: list[str] = []
    last = float("-inf")
    for score, text in scored:
        if score - last > GAP:
            picked.append(text)
            last = score
    return picked


def main() -> None:
    import torch
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    torch.set_num_threads(1)
    model_dir, seconds = sys.argv[1], float(sys.argv[2])
    with torch.inference_mode():
        pipe = pipeline("text-classification", model=model_dir, device="cpu")
        texts = distinguishable(pipe, candidates())
        answers = [pipe(t)[0] for t in texts]
        for _ in range(50):  # warm-up
            pipe(texts[0])
        latencies: list[float] = []
        stop = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < stop:
            t = time.perf_counter()
            pipe(texts[i % len(texts)])
            latencies.append((time.perf_counter() - t) * 1000)
            i += 1
        batch = [texts[j % len(texts)] for j in range(BATCH)]
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            pipe(batch, batch_size=BATCH)
            done += BATCH
        batched_rps = done / (time.perf_counter() - t0)
    json.dump({"texts": texts, "answers": [{"label": a["label"], "score": float(a["score"])} for a in answers],
               "latencies_ms": latencies, "batched_rps": batched_rps, "torch_threads": torch.get_num_threads()},
              sys.stdout)


if __name__ == "__main__":
    main()
