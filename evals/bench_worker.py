"""What the eval worker process costs per mention: in-process vs worker, on cheap fake models.

    python -m evals.bench_worker [--mentions 200] [--repeat 3] [--graph echo|fake] [--out bench.json]

``echo``: a graph that returns its first candidate at once (the hop alone);
``fake``: the real graph with a fake chat model that answers "1" and hashed
bag-of-words embeddings (no weights). For each mode the time between two
consecutive finished mentions is taken (the first mention of a run, which
pays the worker's start, is left out and the start is reported apart); the
overhead is the difference of the means with a 95% interval (Welch). Records
are not written (the fsync per record costs the same in both modes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from evals.datasets import Example
from evals.machine import machine as describe_machine
from evals.predict import Baselines, evaluate_one, failed_record
from evals.worker import WorkerPool
from graph.context import Context


class HashEmbeddings(Embeddings):
    """Hashed bag-of-words vectors (64 dimensions): an embedder with no weights."""

    def _one(self, text: str) -> list[float]:
        vec = [0.0] * 64
        for word in re.findall(r"\w+", text.lower()):
            vec[int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
        return vec

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._one(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._one(text)


class EchoGraph:
    """Returns the first candidate at once: what remains is the cost of the hop."""

    def invoke(self, inputs: dict, context: Any = None) -> dict:
        first = inputs["candidates"][0]
        entity = first if isinstance(first, dict) else {"name": first, "qid": None}
        return {"entity": entity, "round1_entity": entity, "status": "text_verified", "stop_round": 1,
                "trace": [{"step": "final"}], "clues": [], "usage": {}}


def examples(n: int, run: int = 0) -> list[Example]:
    """``n`` mentions whose texts differ from those of every other ``run`` (no cache helps either mode)."""
    out = []
    for i in range(n):
        inputs = {"id": f"b{i}", "mention": "Jordan", "context": f"Jordan scored {i} points in game {run} for the Bulls.",
                  "candidates": [{"qid": "Q41421", "name": "Michael Jordan", "desc": "basketball player"},
                                 {"qid": "Q810", "name": "Jordan", "desc": "country in the Middle East"}]}
        out.append(Example(id=f"b{i}", inputs=inputs, gold={"name": "Michael Jordan", "qid": "Q41421"}))
    return out


def _intervals(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps[1:], stamps[2:])]  # leaves out the first mention (start-up)


def run_inline(ctx: Context, graph: Any, todo: list[Example]) -> tuple[float, list[float]]:
    """Link ``todo`` in this process: total seconds and seconds per mention."""
    baselines = Baselines(ctx)
    t0 = time.perf_counter()
    stamps = [t0]
    for ex in todo:
        evaluate_one(graph, ex, ctx, baselines)
        stamps.append(time.perf_counter())
    return stamps[1] - t0, _intervals(stamps)


def run_worker(ctx: Context, graph: Any, todo: list[Example]) -> tuple[float, list[float]]:
    """Link ``todo`` in one worker process: total seconds and seconds per mention."""
    pool = WorkerPool(1, ctx, graph, failed_record=failed_record)
    t0 = time.perf_counter()
    stamps = [t0]
    pool.run(todo, lambda rec: stamps.append(time.perf_counter()))
    return stamps[1] - t0, _intervals(stamps)


def machine() -> str:
    """CPU model, cores and Python version."""
    m = describe_machine()
    return f"{m['cpu']}, {m['cores']} cores, Python {m['python']}"


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal interval."""
    return statistics.fmean(xs), 1.96 * statistics.stdev(xs) / math.sqrt(len(xs))


def main(argv: list[str] | None = None) -> int:
    """Time inline against worker-process linking; print the figures."""
    p = argparse.ArgumentParser(prog="python -m evals.bench_worker", description=__doc__.split("\n")[0])
    p.add_argument("--mentions", type=int, default=200, help="mentions per run (default 200)")
    p.add_argument("--repeat", type=int, default=3, help="runs per mode (default 3)")
    p.add_argument("--graph", choices=("echo", "fake", "both"), default="both")
    p.add_argument("--out", help="write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.mentions < 4 or args.repeat < 1:
        print("bench_worker: error: --mentions must be at least 4 and --repeat at least 1", file=sys.stderr)
        return 2
    # the classes as the worker imports them (run as ``-m``, this file is __main__, which a worker cannot import)
    from evals.bench_worker import EchoGraph, HashEmbeddings

    ctx = Context(linker_mode="llm", linker_model=FakeListChatModel(responses=["1"]),
                  embedding_model=HashEmbeddings(), reflection_threshold=0.0)
    figures: dict[str, Any] = {"machine": machine(), "mentions": args.mentions, "repeat": args.repeat,
                               "load_average_before": list(os.getloadavg())}
    for name in (("echo", "fake") if args.graph == "both" else (args.graph,)):
        graph = EchoGraph() if name == "echo" else None
        if graph is None:
            from graph import graph as real_graph

            inline_graph = real_graph
        else:
            inline_graph = graph
        run_inline(ctx, inline_graph, examples(3, -1))  # warm the imports of this process
        modes = {"inline": (run_inline, inline_graph), "worker": (run_worker, graph)}
        starts: dict[str, list[float]] = {m: [] for m in modes}
        gaps: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(args.repeat):  # the modes take turns, so a change of the machine's load hits both
            for k, (mode, (fn, g)) in enumerate(modes.items()):
                start, iv = fn(ctx, g, examples(args.mentions, 2 * r + k))
                starts[mode].append(start)
                gaps[mode] += iv
        res: dict[str, Any] = {}
        for mode in modes:
            m, h = mean_ci(gaps[mode])
            res[mode] = {"ms_per_mention": 1e3 * m, "ci95_ms": 1e3 * h,
                         "first_mention_s": statistics.fmean(starts[mode])}
        a, b = res["inline"], res["worker"]
        diff = b["ms_per_mention"] - a["ms_per_mention"]
        half = math.hypot(a["ci95_ms"], b["ci95_ms"])
        res["overhead_ms"], res["overhead_ci95_ms"] = diff, half
        figures[name] = res
        print(f"{name:>4} graph: in-process {a['ms_per_mention']:.2f} ± {a['ci95_ms']:.2f} ms/mention, "
              f"worker {b['ms_per_mention']:.2f} ± {b['ci95_ms']:.2f} ms/mention; overhead "
              f"{diff:+.2f} ms/mention [{diff - half:.2f}, {diff + half:.2f}] (95%); worker start + first mention "
              f"{b['first_mention_s']:.2f} s (in-process first mention {a['first_mention_s'] * 1e3:.1f} ms)")
    figures["load_average_after"] = list(os.getloadavg())
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
