"""LangChain through mlbridge vs in-process: per-call overhead of ``langchain:invoke``, time to first token.

The same chain (prompt | fake chat model | str parser, langchain-core's own
fake model, no network) runs twice: in this process, as a LangChain user
would call it (``chain.invoke``, ``chain.stream``), and in a worker of
``mlbridge serve`` (its own process; ``--backend docker`` puts the worker in a
hardened container), called through the Python client. Calls alternate one
in-process and one through mlbridge, so both see the same background load.
Prints p50/p90/p99 of each, the ratio and the added milliseconds, and the
time from starting a streaming call to holding its first token, both ways.

    python -m benchmarks.langchain [--n 300] [--backend process|docker]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, machine, percentiles, served_orchestrator
from orchestrator import MLBridge

REPLY = "The quick brown fox jumps over the lazy dog"
PROMPT = {"template": "Tell me about {topic}"}
INPUT = {"topic": "foxes"}


def _config(backend: str, state: str) -> str:
    runtime = "langchain" if backend == "docker" else "runtimes.langchain:LangChainBridge"
    return (f"default_bridge: langchain\nbackend: {backend}\nstate_dir: {state}\nbridges:\n"
            f"  langchain:\n    runtime: {runtime}\n    pool_size: 1\n"
            f"    limits: {{cpus: 1.0, memory: 1g, pids: 256}}\n")


@contextlib.contextmanager
def served(backend: str) -> Iterator[str]:
    """``mlbridge serve`` with only the langchain bridge, in its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(_config(backend, str(Path(tmp) / "state")))
        with served_orchestrator(backend, {"PYTHONPATH": str(ROOT)}, config=str(cfg)) as address:
            yield address


def in_process_chain() -> Any:
    from langchain_core.output_parsers import StrOutputParser

    from runtimes.langchain.fake import ScriptedChatModel
    from runtimes.langchain.prompts import build_prompt

    return build_prompt(PROMPT) | ScriptedChatModel(script=[REPLY], cycle=True) | StrOutputParser()


# A measured function returns the milliseconds it measured itself, or None: its whole duration counts.
Measured = Callable[[], "float | None"]


def first_token_local(chain: Any) -> Measured:
    def one() -> float:
        t = time.perf_counter()
        stream = chain.stream(INPUT)
        next(stream)
        took = (time.perf_counter() - t) * 1000
        stream.close()
        return took
    return one


def first_token_remote(mb: MLBridge, chain_id: str) -> Measured:
    def one() -> float:
        t = time.perf_counter()
        took = 0.0
        events = mb.call_stream("langchain", "langchain:stream", {"runnable": chain_id, "input": INPUT})
        for ev in events:
            if not took and ev.kind == "chunk" and ev.data.get("type") == "token":
                took = (time.perf_counter() - t) * 1000  # then drain: the call ends normally, as a UI lets it
        assert took
        return took
    return one


def interleaved(a: Measured, b: Measured, n: int, warmup: int) -> tuple[list[float], list[float]]:
    for _ in range(warmup):
        a()
        b()
    ra: list[float] = []
    rb: list[float] = []
    for i in range(n):
        order = ((a, ra), (b, rb)) if i % 2 else ((b, rb), (a, ra))
        for fn, out in order:
            t = time.perf_counter()
            took = fn()
            out.append(took if took is not None else (time.perf_counter() - t) * 1000)
    return ra, rb


def row(label: str, p: dict[str, float]) -> str:
    return f"{label:<48} {p['p50']:8.3f} {p['p90']:8.3f} {p['p99']:8.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--backend", default="process", choices=["process", "docker"])
    a = ap.parse_args()
    chain = in_process_chain()
    assert chain.invoke(INPUT) == REPLY
    with served(a.backend) as addr, MLBridge.connect(addr) as mb:
        model = mb.create_resource("langchain", "model", {"provider": "fake", "responses": [REPLY], "cycle": True})
        chain_id = mb.call("langchain", "langchain:create_chain",
                           {"prompt": PROMPT, "model": model, "parser": "str"})["chain_id"]

        def remote() -> None:
            assert mb.call("langchain", "langchain:invoke", {"runnable": chain_id, "input": INPUT}) == {"output": REPLY}

        local, e2e = interleaved(lambda: chain.invoke(INPUT) and None, remote, a.n, a.warmup)
        ttft_local, ttft_e2e = interleaved(first_token_local(chain), first_token_remote(mb, chain_id),
                                           a.n, a.warmup)
    lp, ep, tl, te = percentiles(local), percentiles(e2e), percentiles(ttft_local), percentiles(ttft_e2e)
    print(f"machine: {machine()}")
    print(f"chain: prompt | fake chat model ({len(REPLY.split())} tokens) | str parser; {a.n} calls of each, "
          f"interleaved, after {a.warmup} warm-up; one client; {a.backend} backend")
    print(f"{'path':<48} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    print(row("in-process chain.invoke (baseline)", lp))
    print(row("langchain:invoke through mlbridge", ep))
    print(f"overhead: p50 {ep['p50'] / lp['p50']:.2f}x ({ep['p50'] - lp['p50']:+.3f} ms), "
          f"p99 {ep['p99'] / lp['p99']:.2f}x ({ep['p99'] - lp['p99']:+.3f} ms)")
    print(row("first token, in-process chain.stream (baseline)", tl))
    print(row("first token, langchain:stream through mlbridge", te))
    print(f"time to first token: p50 {te['p50'] / tl['p50']:.2f}x ({te['p50'] - tl['p50']:+.3f} ms)")


if __name__ == "__main__":
    main()
