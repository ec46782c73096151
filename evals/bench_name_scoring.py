"""Candidate-name scoring on the embedded llama.cpp model: one decode per name vs all names in one batch.

    python -m evals.bench_name_scoring --sample 5      # seeded WikiMEL dev mentions with >1 candidate

Per mention, with the fused linker's likelihood prompt (round 1, no clues) and its candidates' names:
seconds of ``continuation_logprobs_sequential`` and of ``continuation_logprobs`` (the batched one),
each from an empty KV cache (prompt included); the largest absolute difference of their per-token
log-probabilities; and, as the yardstick of llama.cpp's own arithmetic, the largest difference of
the sequential method with itself when the prompt comes from the KV cache (only its last token
evaluated again, as consecutive calls do). Writes ``evals/results/bench_name_scoring.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    """Score the names both ways on a sample and print the figures."""
    from evals.common import run_main, wikimel_dev

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", default=None)
    p.add_argument("--sample", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_name_scoring.json"))
    a = p.parse_args(argv)

    def run() -> int:
        from evals.datasets import load_dataset
        from graph.context import Context
        from tools.fused_linker import name_messages
        from tools.linker import load_linker
        from tools.names import display_name

        ds = load_dataset(a.data or str(wikimel_dev()), None)
        ex = [e for e in ds.examples if e.inputs and len(e.inputs.get("candidates") or []) > 1]
        random.Random(a.seed).shuffle(ex)
        model = load_linker(Context())
        llama = model._shared().llama
        load0 = os.getloadavg()
        rows = []
        for e in ex[:a.sample]:
            msgs = name_messages(e.inputs["mention"], e.inputs.get("context") or "", [])
            names = [display_name(c["name"]) for c in e.inputs["candidates"]]
            llama.reset()
            t = time.perf_counter()
            s, _ = model.continuation_logprobs_sequential(msgs, names)
            seq_s = time.perf_counter() - t
            s2, _ = model.continuation_logprobs_sequential(msgs, names)
            llama.reset()
            t = time.perf_counter()
            m, _ = model.continuation_logprobs(msgs, names)
            multi_s = time.perf_counter() - t
            row = {"id": e.id, "names": len(names), "sequential_s": seq_s, "batched_s": multi_s,
                   "max_diff_batched_vs_sequential": float(np.abs(np.concatenate(s) - np.concatenate(m)).max()),
                   "max_diff_sequential_cold_vs_cached": float(np.abs(np.concatenate(s) - np.concatenate(s2)).max()),
                   "same_best_name": bool(np.argmax([sum(x) for x in s]) == np.argmax([sum(x) for x in m]))}
            rows.append(row)
            print(json.dumps(row), flush=True)
        out = {"model": "embedded", "sample": len(rows), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
               "cpus": os.cpu_count(), "sequential_mean_s": float(np.mean([r["sequential_s"] for r in rows])),
               "batched_mean_s": float(np.mean([r["batched_s"] for r in rows])), "rows": rows}
        print(f"sequential {out['sequential_mean_s']:.2f} s, batched {out['batched_mean_s']:.2f} s per call; load "
              f"{load0[0]:.2f} -> {out['loadavg_end'][0]:.2f}")
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1), encoding="utf-8")
        return 0

    return run_main("bench_name_scoring", run)


if __name__ == "__main__":
    sys.exit(main())
