"""The knowledge base's stored entity vectors reused by the fused linker: same numbers? time saved?

    python -m evals.bench_kb_vectors                 # 20 seeded WikiMEL dev mentions, embedded MiniLM
    python -m evals.bench_kb_vectors --sample 20 --others 300 --reps 3

Builds a small KB in a temporary folder with the packaged ``embedded`` model: the entities of
``--sample`` seeded WikiMEL dev mentions' candidate lists plus ``--others`` seeded other entities of
``wikimel/kb_entities.jsonl``. Then, for each mention (no candidate list: the KB retrieves them, as
the graph's retrieve node does), ``--reps`` times with the KB's vectors shared (``I2CR_KB_VECTORS=on``)
and not (``off``), alternating: a fresh in-memory embedding cache, the persistent entity-vector store
off, then ``tools.kb.retrieve_candidates`` and the fused linker's round-1 text evidence
(``candidate_features``, the packaged weights' probabilities; the LLM is not asked). Reported:
largest absolute difference of the features and of the probabilities between on and off, the texts
the model embedded, and the median seconds per mention of retrieval + features (and of the features
alone). Written to ``evals/results/bench_kb_vectors.json`` (``--out``). Read the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "bench_kb_vectors.json"


def main(argv: list[str] | None = None) -> int:
    """Build the small KB, link each mention's round 1 with the KB's vectors shared and not, compare."""
    ap = argparse.ArgumentParser(prog="python -m evals.bench_kb_vectors", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="shared data folder (default: $I2CR_DATA_DIR, else ../shared/data)")
    ap.add_argument("--sample", type=int, default=20, help="dev mentions (seeded)")
    ap.add_argument("--others", type=int, default=300, help="other KB entities besides the mentions' candidates")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions of each mode per mention")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)

    from evals.common import data_dir
    from graph.context import Context
    from tools import embeddings
    from tools import kb as kbmod
    from tools.candidates import normalize_candidates
    from tools.features import candidate_features
    from tools.fusion import distribution, load_weights, order_is_ranked

    data = data_dir(a.data) / "wikimel"
    dev = json.loads((data / "WikiMEL_dev.json").read_text(encoding="utf-8"))
    rng = random.Random(a.seed)
    keys = rng.sample(sorted(dev), a.sample)
    wanted = {c["qid"] for k in keys for c in dev[k]["Candentity"]}
    entities = [json.loads(line) for line in (data / "kb_entities.jsonl").open(encoding="utf-8") if line.strip()]
    others = [e for e in entities if e["qid"] not in wanted]
    chosen = [e for e in entities if e["qid"] in wanted] + rng.sample(others, min(a.others, len(others)))

    os.environ[embeddings.EMBED_CACHE_ENV] = "off"  # every vector the linker does not compute comes from the KB
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        kb = kbmod.KnowledgeBase(path=Path(tmp) / "kb", embeddings="embedded")
        stats = kb.ingest(chosen, batch_size=256)
        ingest_s = time.perf_counter() - t
        ctx = Context(kb_path=str(Path(tmp) / "kb"), embedding_model="embedded")
        weights = load_weights(ctx.fusion_weights)
        ranked = order_is_ranked(ctx.candidate_order, "knowledge base")
        embedder = embeddings.get_embedder(ctx.embedding_model)
        embedder.embed(["warm up the model"])

        def one(mention: str, context: str, switch: str) -> dict:
            os.environ[kbmod.KB_VECTORS_ENV] = switch
            embedder._cache.clear()  # a mention whose entities were never seen before
            before = embedder.computed
            t0 = time.perf_counter()
            rows = kbmod.retrieve_candidates(mention, context, ctx)
            cands = normalize_candidates(rows, where="knowledge base result", max_name_chars=None)
            t1 = time.perf_counter()
            feats = candidate_features(mention, context, cands, embedder, ranked=ranked)
            t2 = time.perf_counter()
            probs, p_nil = distribution(weights.logits(feats, with_clues=False, ranked=ranked), weights.nil_row)
            return {"feats": feats, "probs": np.append(probs, p_nil), "qids": [c.get("qid") for c in cands],
                    "embedded": embedder.computed - before, "total_s": t2 - t0, "features_s": t2 - t1}

        per = []
        for k in keys:
            m = dev[k]
            mention, context = m["mention"], m["mention_context"]
            runs: dict[str, list[dict]] = {"on": [], "off": []}
            for r in range(a.reps):
                for switch in (("on", "off") if r % 2 == 0 else ("off", "on")):
                    runs[switch].append(one(mention, context, switch))
            on, off = runs["on"][0], runs["off"][0]
            assert on["qids"] == off["qids"], k
            per.append({"id": k, "candidates": len(on["qids"]),
                        "embedded_on": on["embedded"], "embedded_off": off["embedded"],
                        "max_feature_diff": float(np.abs(on["feats"] - off["feats"]).max()),
                        "max_prob_diff": float(np.abs(on["probs"] - off["probs"]).max()),
                        "same_top": int(np.argmax(on["probs"])) == int(np.argmax(off["probs"])),
                        "total_s_on": statistics.median(x["total_s"] for x in runs["on"]),
                        "total_s_off": statistics.median(x["total_s"] for x in runs["off"]),
                        "features_s_on": statistics.median(x["features_s"] for x in runs["on"]),
                        "features_s_off": statistics.median(x["features_s"] for x in runs["off"])})
            print(f"{k}: {per[-1]['embedded_on']} vs {per[-1]['embedded_off']} texts embedded, "
                  f"{per[-1]['total_s_on']:.3f} s vs {per[-1]['total_s_off']:.3f} s, "
                  f"max |d prob| {per[-1]['max_prob_diff']:.2e}", file=sys.stderr)

    def mean(field: str) -> float:
        return float(np.mean([p[field] for p in per]))

    summary = {
        "mentions": len(per), "kb_entities": stats.added, "ingest_s": round(ingest_s, 1),
        "embedding_model": "embedded", "model_id": embeddings.embedding_id("embedded"),
        "max_feature_diff": max(p["max_feature_diff"] for p in per),
        "max_prob_diff": max(p["max_prob_diff"] for p in per),
        "same_top": sum(p["same_top"] for p in per),
        "texts_embedded_per_mention_on": mean("embedded_on"), "texts_embedded_per_mention_off": mean("embedded_off"),
        "seconds_per_mention_on": mean("total_s_on"), "seconds_per_mention_off": mean("total_s_off"),
        "features_seconds_on": mean("features_s_on"), "features_seconds_off": mean("features_s_off"),
        "saved_seconds_per_mention": mean("total_s_off") - mean("total_s_on"),
        "load_average_start": load0[0], "load_average_end": os.getloadavg()[0], "cpus": os.cpu_count(),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"summary": summary, "mentions": per,
                                       "settings": {"sample": a.sample, "others": a.others, "reps": a.reps,
                                                    "seed": a.seed}}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
