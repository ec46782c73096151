"""Per-mention time before and after the batched work inside a batch actor (issue #16, section 2).

    python -m evals.bench_batch                      # 100 seeded WikiMEL dev mentions, embedded defaults
    python -m evals.bench_batch --sample 20 --batch-size 16 --set gate_threshold=0.9

The same mentions are linked three times in this process, with the same settings
(``Context()`` plus ``--set``), the same compiled graph and the same models:

* ``before``: ``graph.invoke`` per mention, as ``i2cr eval`` does (concurrency 1): an
  in-memory embedding cache only, each candidate name decoded after the prompt one by one
  (``LlamaCppChatModel.continuation_logprobs_sequential``);
* ``after (cold)``: :meth:`evals.batch.Linker.link_many`'s path, batch by batch: the batch's
  round-1 texts embedded in one call (``warm_embeddings``; entity vectors through a
  persistent store that starts empty), then ``graph.invoke`` per mention, the names scored
  as several sequences in one llama.cpp batch;
* ``after (warm store)``: the same again with a fresh in-memory cache but the persistent
  store the cold run filled (a rerun, or a corpus whose entities were seen before).

For each: mean seconds per mention of the text-decided mentions (no LLM call) and of the
LLM-asked ones, with 95% bootstrap intervals; a batch's embedding call is shared equally by
its mentions. Also: predictions identical to ``before`` (count), top-1 of each, the load
average at the start and end. Printed side by side and written to
``evals/results/bench_batch.json`` (``--out``). The machine may be shared: read the load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "bench_batch.json"


def interval(xs: list[float], seed: int = 0) -> dict:
    """Mean and 95% bootstrap interval of ``xs`` (``None`` fields when empty)."""
    if not xs:
        return {"n": 0, "mean": None, "lo": None, "hi": None}
    a = np.asarray(xs)
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, len(a), (2000, len(a)))].mean(axis=1)
    return {"n": len(a), "mean": float(a.mean()), "lo": float(np.percentile(means, 2.5)),
            "hi": float(np.percentile(means, 97.5))}


def _fresh_embedder(ctx, store_path: Path | None):
    """A new in-memory embedding cache for ``ctx`` (and the persistent store at ``store_path``, if any)."""
    from tools import embeddings

    emb = embeddings.load_embeddings(ctx.embedding_model, base_url=ctx.openai_base_url, api_key=ctx.openai_api_key)
    store = embeddings.SqliteByteStore(store_path) if store_path else None
    embeddings._cached[id(emb)] = embeddings.CachedEmbedder(emb, name=str(ctx.embedding_model), store=store)
    return embeddings._cached[id(emb)]


def _scoring(batched: bool) -> None:
    """Name scoring of the embedded llama.cpp model: one batch of sequences, or one decode per name."""
    from tools.llama_cpp_chat import LlamaCppChatModel

    if not hasattr(LlamaCppChatModel, "_i2cr_batched"):
        LlamaCppChatModel._i2cr_batched = LlamaCppChatModel.continuation_logprobs
    LlamaCppChatModel.continuation_logprobs = (LlamaCppChatModel._i2cr_batched if batched
                                               else LlamaCppChatModel.continuation_logprobs_sequential)


def run_phase(name: str, examples: list, ctx, graph, *, batched: bool, batch_size: int,
              store_path: Path | None) -> dict:
    """Link ``examples`` one way; per-mention seconds, whether each asked the LLM, and its answer."""
    from evals.batch import Linker, warm_embeddings
    from evals.metrics import match

    _scoring(batched)
    embedder = _fresh_embedder(ctx, store_path)
    rows = []
    start = time.perf_counter()
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        shared = 0.0
        if batched and Linker.batch_embed:
            t = time.perf_counter()
            warm_embeddings(ctx, [dict(ex.inputs) for ex in chunk])
            shared = (time.perf_counter() - t) / len(chunk)
        for ex in chunk:
            t = time.perf_counter()
            try:
                out, error = graph.invoke(dict(ex.inputs), context=ctx), None
            except Exception as exc:  # noqa: BLE001 - recorded, as eval and batch do
                out, error = {}, f"{type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - t + shared
            entity = out.get("entity")
            rows.append({"id": ex.id, "seconds": seconds, "llm": bool((out.get("usage") or {}).get("llm_calls")),
                         "entity": None if not entity else {"qid": entity.get("qid"), "name": entity.get("name")},
                         "correct": bool(match(entity, ex.gold)) if ex.gold is not None else None,
                         "error": error})
        print(f"  {name}: {min(i + batch_size, len(examples))}/{len(examples)}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - start
    text = [r["seconds"] for r in rows if not r["llm"] and not r["error"]]
    llm = [r["seconds"] for r in rows if r["llm"] and not r["error"]]
    return {"name": name, "wall_s": wall, "per_mention": interval([r["seconds"] for r in rows]),
            "text_decided": interval(text), "llm_asked": interval(llm),
            "top1": sum(bool(r["correct"]) for r in rows) / len(rows), "errors": sum(bool(r["error"]) for r in rows),
            "embedded_texts": embedder.computed, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    """Link a sample three ways and print the per-mention times side by side."""
    from evals.common import data_dir, default_labels, run_main

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", default=None, help="dataset (default: WikiMEL dev in the data folder)")
    p.add_argument("--sample", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    if a.sample < 1 or a.batch_size < 1:
        p.error("--sample and --batch-size must be positive")

    def run() -> int:
        from evals.datasets import load_dataset
        from graph import graph
        from graph.context import Context, parse_settings

        data = a.data or str(data_dir() / "wikimel" / "WikiMEL_dev.json")
        ds = load_dataset(data, default_labels(data))
        examples = [ex for ex in ds.examples if ex.inputs]
        random.Random(a.seed).shuffle(examples)
        examples = examples[:a.sample]
        ctx = Context(**parse_settings(a.settings)) if a.settings else Context()
        load0 = os.getloadavg()
        t = time.perf_counter()
        graph.invoke(dict(examples[0].inputs), context=ctx)  # load every model once, outside the timings
        load_s = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            store = Path(tmp) / "entity-vectors.sqlite"
            phases = [run_phase("before", examples, ctx, graph, batched=False, batch_size=a.batch_size,
                                store_path=None),
                      run_phase("after (cold)", examples, ctx, graph, batched=True, batch_size=a.batch_size,
                                store_path=store),
                      run_phase("after (warm store)", examples, ctx, graph, batched=True,
                                batch_size=a.batch_size, store_path=store)]
        load1 = os.getloadavg()
        before = {r["id"]: r["entity"] for r in phases[0]["rows"]}
        for ph in phases:
            ph["same_as_before"] = sum(before[r["id"]] == r["entity"] for r in ph["rows"])
            ph["differs"] = [r["id"] for r in ph["rows"] if before[r["id"]] != r["entity"]]

        def cell(s: dict) -> str:
            return "-" if not s["n"] else f"{s['mean']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}] (n={s['n']})"

        print(f"{len(examples)} mentions of {Path(data).name}, batch size {a.batch_size}; models loaded in "
              f"{load_s:.1f} s; load average {load0[0]:.2f} at start, {load1[0]:.2f} at end ({os.cpu_count()} CPUs)")
        print(f"{'':20} {'text-decided s/mention':38} {'LLM-asked s/mention':38} {'all':>8} top-1 same")
        for ph in phases:
            print(f"{ph['name']:20} {cell(ph['text_decided']):38} {cell(ph['llm_asked']):38} "
                  f"{ph['per_mention']['mean']:8.3f} {ph['top1']:.3f} {ph['same_as_before']}/{len(examples)}")
        out = {"data": data, "sample": len(examples), "seed": a.seed, "batch_size": a.batch_size,
               "settings": a.settings, "cpus": os.cpu_count(), "loadavg_start": load0, "loadavg_end": load1,
               "model_load_s": load_s, "phases": phases}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1), encoding="utf-8")
        print(f"wrote {a.out}")
        return 0

    return run_main("bench_batch", run)


if __name__ == "__main__":
    sys.exit(main())
