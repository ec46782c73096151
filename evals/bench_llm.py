"""Time one linker-LLM call per mention: runtime, thread count and scoring method.

    python -m evals.bench_llm                               # embedded GGUF in llama.cpp, both scorings, 20 mentions
    python -m evals.bench_llm --model huggingface:~/.cache/i2cr/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
    I2CR_LLAMA_THREADS=1 python -m evals.bench_llm          # llama.cpp on one thread
    I2CR_LLAMA_EXTRA_BUFTS=on python -m evals.bench_llm     # llama.cpp's weight repacking forced on (or off)

For a seeded sample of WikiMEL dev mentions it builds the fused linker's own
prompts (``tools/fused_linker``: the likelihood prompt with the candidates' names
scored after it, and the lettered prompt) and times one call of each, as the
graph makes it for an undecided mention in round 1. Printed per scoring method:
mean, p50 and p95 seconds per call, prompt tokens per call, and the load time
and peak resident memory of the process. Calls are made twice per mention
when ``--repeat 2``: the second shows what the KV prefix cache saves (a re-ask).
For a llama.cpp model it also prints the CPU (model, AVX-512, AMX) and whether
llama.cpp's extra buffer types (weight repacking) were on; the load time
includes the one-time probe of ``tools/llama_cpp_chat.py`` when it ran.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikimel" / "WikiMEL_dev.json"


def main(argv: list[str] | None = None) -> int:
    """Time the linker model's calls on a sample of mentions and print the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", default=str(DATA))
    p.add_argument("--model", default="embedded", help="linker_model spec")
    p.add_argument("--sample", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scoring", default="likelihood,choice")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    a = p.parse_args(argv)
    if a.sample < 1 or a.repeat < 1:
        p.error(f"--sample and --repeat: expected positive integers, got {a.sample} and {a.repeat}")
    from evals.datasets import load_dataset
    from graph.context import Context
    from tools.choice import scoring_method
    from tools.errors import I2CRError
    from tools.fused_linker import ask_llm
    from tools.linker import load_linker as linker

    try:
        ds = load_dataset(a.data, None)
        examples = [ex for ex in ds.examples if ex.inputs and len(ex.inputs.get("candidates") or []) > 1]
        random.Random(a.seed).shuffle(examples)
        examples = examples[:a.sample]
        if not examples:
            sys.exit(f"bench_llm: error: {a.data} has no mention with two or more candidates to time")
        t = time.perf_counter()
        model = linker(Context(linker_model=a.model))
        load_s = time.perf_counter() - t
    except I2CRError as exc:
        sys.exit(f"bench_llm: error: {exc}")
    results = {"model": a.model, "mentions": len(examples), "load_seconds": round(load_s, 2), "scoring": {}}
    print(f"{a.model}: loaded in {load_s:.1f} s; {len(examples)} mentions", flush=True)
    if type(model).__name__ == "LlamaCppChatModel":
        from tools.llama_cpp_runtime import cpu_summary, extra_bufts_setting

        results["llama_cpp"] = {"cpu": cpu_summary(), "threads": model.n_threads, "extra_bufts": model.extra_bufts,
                                "extra_bufts_setting": extra_bufts_setting()}
        print(f"  llama.cpp on {cpu_summary()}; {model.n_threads} threads; extra buffer types "
              f"{'on' if model.extra_bufts else 'off'} (I2CR_LLAMA_EXTRA_BUFTS={extra_bufts_setting()})", flush=True)
    for method in [m.strip() for m in a.scoring.split(",") if m.strip()]:
        ctx = Context(linker_model=a.model, llm_scoring=method)
        secs, toks, first_secs = [], [], []
        try:
            scoring_method(linker(ctx), method, a.model)
        except I2CRError as exc:
            print(f"  {method:10s} not available: {exc}", flush=True)
            results["scoring"][method] = {"error": str(exc)}
            continue
        for ex in examples:
            model = linker(ctx)
            for r in range(a.repeat):
                t = time.perf_counter()
                try:
                    _, call = ask_llm(model, ex.inputs["mention"], ex.inputs.get("context") or "",
                                      ex.inputs["candidates"], [], llm_scoring=ctx.llm_scoring,
                                      spec=ctx.linker_model, max_desc_chars=ctx.max_desc_chars)
                except I2CRError as exc:  # a model that fails mid-run: one line naming it and the mention
                    sys.exit(f"bench_llm: error on mention {ex.id}: {exc}")
                dt = time.perf_counter() - t
                (first_secs if r == 0 else secs).append(dt)
                if r == 0:
                    toks.append(call.get("input_tokens", 0))
        row = {"method": call["method"], "mean_s": float(np.mean(first_secs)), "p50_s": float(np.median(first_secs)),
               "p95_s": float(np.percentile(first_secs, 95)), "tokens": float(np.mean(toks)),
               "repeat_mean_s": float(np.mean(secs)) if secs else None}
        results["scoring"][method] = row
        print(f"  {method:10s} ({row['method']}): mean {row['mean_s']:.2f} s, p50 {row['p50_s']:.2f} s, "
              f"p95 {row['p95_s']:.2f} s per call; {row['tokens']:.0f} tokens per call"
              + (f"; repeated call {row['repeat_mean_s']:.2f} s" if secs else ""), flush=True)
    results["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print(f"  peak RSS {results['peak_rss_gib']} GiB")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
