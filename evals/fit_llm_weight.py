"""Fit the weight of the LLM's opinion in the fused linker, with cross-validated accuracy.

    python -m evals.fit_llm_weight                  # WikiMEL dev, embedded LLM, likelihood -> packaged weights
    python -m evals.fit_llm_weight DATA.json --labels L.json --linker-model openai:gpt-4o-mini \\
        --llm-scoring choice --weights my_weights.json --out my_weights.json

The fused linker adds ``llm_weight`` times the linker model's log-probability of
each candidate to the text evidence's scores, for mentions where the text
evidence is not decisive (top probability below ``--gate``). This script:

1. scores every candidate with the text model, out of fold (the folds of
   ``evals/fit_fusion.py``: no mention is scored by text weights fitted on it);
2. asks the linker model about each undecided mention, through the graph's own
   prompt and scoring code (``tools/fused_linker.ask_llm``), cached in
   ``--cache`` (JSONL, resumable: rerun after a kill and only the rest is asked);
3. floors the model's log-probabilities at ``--llm-floor`` below its favourite
   (one call cannot veto a candidate), fits the weight on the undecided mentions of the other
   folds and scores each fold with it (nested: the printed figures
   are cross-validated);
   The text logits are the nil-row model's (``text_unordered``, out of fold) and the weight is the
   maximum-likelihood one with the nil row (``evals/fit.fit_llm``, shared with ``i2cr fit``, which
   fits text, nil and LLM terms in one command and is the recommended path); a nil answer (-1)
   counts as right where the gold is nil or not listed;
4. writes the weight fitted on all mentions into the weights file
   (``llm_weight[<method>]``), with the per-fold weights and figures in its
   ``fit.llm`` entry (``evals/cv_eval.py`` links each fold with its own).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from evals.common import default_labels, defaults, run_main, wikimel_dev
from evals.fit_fusion import _acc, fit_models, fold_of, predict, unordered
from tools.features import ALL_FEATURES
from tools.fusion import PACKAGED_WEIGHTS, distribution, floored, nil_decision, softmax

GRID = np.round(np.arange(0.0, 3.0001, 0.05), 2)


def ask(records: dict[str, dict], todo: list[str], settings: dict[str, Any], cache: Path) -> dict[str, dict]:
    """The linker model's scores for the ``todo`` mentions, from ``cache`` or asked now (and cached).

    The cache (one JSON row per mention, keyed by model, scoring method and prompt version) is the one
    ``i2cr fit`` keeps: :func:`evals.fit.llm_scores`.
    """
    from evals.fit import llm_scores

    return llm_scores(records, todo, settings, cache)


def nil_aware_oof_logits(X: list[np.ndarray], gold: np.ndarray, C: float, folds: int) -> list[np.ndarray]:
    """Out-of-fold text logits of the nil-row model the graph reads for an input list (``text_unordered``),
    on the folds of :func:`evals.fit_fusion.fold_of` (those ``evals/cv_eval.py`` links with)."""
    fold = fold_of(len(X), folds)
    out: list[np.ndarray] = [np.zeros(0)] * len(X)
    cols = list(range(len(ALL_FEATURES)))
    for f in range(folds):
        tr = np.flatnonzero(fold != f)
        m = fit_models([X[i] for i in tr], gold[tr], C, has_clues=np.zeros(len(tr), bool))["text_unordered"]
        for i in np.flatnonzero(fold == f):
            out[i] = predict(m, unordered([X[i]])[0], cols)
    return out


def gold_loglik(logits: list[np.ndarray], llm: list[np.ndarray], gold: list[int], w: float) -> float:
    """Mean log-probability of the gold candidate under text logits + ``w`` * LLM evidence."""
    total = 0.0
    for z, l, g in zip(logits, llm, gold):
        p = softmax(z + w * l)
        total += float(np.log(max(p[g], 1e-12)))
    return total / max(len(gold), 1)


def best_weight(logits: list[np.ndarray], llm: list[np.ndarray], gold: list[int]) -> float:
    """The LLM weight maximising the likelihood of the golds with the nil row (gold -1: nil or not listed),
    :func:`evals.fit.fit_llm` (shared with ``i2cr fit``)."""
    from evals.fit import fit_llm

    return fit_llm([(z, l, 0.0, int(g)) for z, l, g in zip(logits, llm, gold)], "w")["w"]


def _answer(z: np.ndarray) -> int:
    """The graph's answer from nil-row scores (default nil_threshold 0.5): a candidate index, or -1 for nil."""
    probs, p_nil = distribution(z, True)
    b = int(np.argmax(probs))
    return -1 if nil_decision(float(probs[b]), p_nil, 0.5, True) else b


def evaluate(logits: list[np.ndarray], gold: np.ndarray, scores: dict[str, dict], ids: list[str],
             asked: np.ndarray, folds: int, floor: float | None) -> dict[str, Any]:
    """Nested-CV figures of fusing the LLM on the ``asked`` mentions (the rest keep the text pick)."""
    undecided = np.flatnonzero(asked)
    llm = {i: floored(scores[ids[i]]["logp"], floor) for i in undecided}
    methods = {scores[ids[i]]["method"] for i in undecided}
    fold = fold_of(len(logits), folds)
    pick = np.array([_answer(z) for z in logits])
    fold_w = []
    for f in range(folds):
        train = [i for i in undecided if fold[i] != f]
        w = best_weight([logits[i] for i in train], [llm[i] for i in train], [int(gold[i]) for i in train])
        fold_w.append(w)
        for i in undecided:
            if fold[i] == f:
                pick[i] = _answer(logits[i] + w * llm[i])
    secs = [scores[ids[i]]["seconds"] for i in undecided]
    return {"asked": asked, "llm": llm, "fold_w": fold_w, "fused_ok": pick == gold,
            "llm_ok": np.array([int(np.argmax(llm[i])) == gold[i] for i in undecided], bool),
            "method": "likelihood" if methods == {"likelihood"} else "choice",
            "seconds": float(np.mean(secs)) if secs else 0.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, their defaults taken from ``Context()`` (gate, models) and ``evals/common.py`` (data, labels)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", default=None,
                   help="dataset (default: WikiMEL dev under $I2CR_DATA_DIR, else ../shared/data)")
    p.add_argument("--labels", default=None, help="gold labels (default: <data>_label.json beside the data)")
    p.add_argument("--weights", default=str(PACKAGED_WEIGHTS), help="fusion weights whose text model is used")
    p.add_argument("--out", default=None, help="weights file to write (default: --weights)")
    p.add_argument("--linker-model", default=None, help="default: the linker_model setting")
    p.add_argument("--llm-scoring", default="likelihood", choices=("likelihood", "choice"))
    p.add_argument("--embedding-model", default=None, help="default: the embedding_model setting")
    p.add_argument("--gate", type=float, default=None,
                   help="default: the gate_threshold setting, the gate the graph runs with")
    p.add_argument("--also-gates", type=lambda v: [float(x) for x in v.split(",") if x.strip()], default=[],
                   metavar="G1,G2", help="more gates to report (the weight written is the --gate one's)")
    p.add_argument("--llm-floor", type=float, default=5.0,
                   help="the LLM's log-probabilities relative to its favourite are floored at minus this "
                        "(written to the weights file; 0: no floor)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--C", type=float, default=1.0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a graph setting for the model (repeatable), e.g. openai_base_url=http://localhost:8000/v1")
    p.add_argument("--cache", default=None, help="JSONL of the model's scores (default: runs/llm-scores/<data>.jsonl)")
    a = p.parse_args(argv)
    ctx = defaults()
    a.data = a.data or str(wikimel_dev())
    a.gate = ctx.gate_threshold if a.gate is None else a.gate
    a.linker_model = a.linker_model or ctx.linker_model
    a.embedding_model = a.embedding_model or ctx.embedding_model
    a.llm_floor = a.llm_floor if a.llm_floor and a.llm_floor > 0 else None
    if a.folds < 2:
        p.error(f"--folds: expected at least 2, got {a.folds}")
    if not 0 <= a.gate <= 1:
        p.error(f"--gate: expected a number between 0 and 1, got {a.gate}")
    a.labels = a.labels or default_labels(a.data)
    return a


def main(argv: list[str] | None = None) -> int:
    """Fit ``llm_weight`` and write it into the weights file (see the module's docstring)."""
    a = parse_args(argv)
    from evals.datasets import load_dataset
    from evals.fit_fusion import build_matrix
    from graph.context import parse_settings
    from tools.fusion import load_weights

    extra = parse_settings(a.set)
    labels = a.labels
    base = load_weights(a.weights)  # fails early, naming the file, if unusable
    t = time.perf_counter()
    m = build_matrix(a.data, labels, a.embedding_model)
    X, gold, ids = m["X"], m["gold"], m["ids"]
    print(f"{len(X)} labelled mentions with candidates; features in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    records = {ex.id: ex.inputs for ex in load_dataset(a.data, labels).examples if ex.inputs is not None}
    logits = nil_aware_oof_logits(X, gold, a.C, a.folds)
    conf = np.array([distribution(z, True)[0].max() for z in logits])
    gates = sorted({a.gate, *a.also_gates})
    cache = Path(a.cache or Path("runs") / "llm-scores" / f"{Path(a.data).stem}.jsonl")
    settings = {**extra, "linker_model": a.linker_model, "llm_scoring": a.llm_scoring,
                "embedding_model": a.embedding_model}
    scores = ask(records, [ids[i] for i in np.flatnonzero(conf < max(gates))], settings, cache)
    text_ok = np.array([_answer(z) for z in logits]) == gold
    print(f"linker model {a.linker_model}, llm_scoring {a.llm_scoring}; {a.folds}-fold CV over {len(X)} mentions; "
          f"text evidence alone {_acc(text_ok)}")
    print("| gate | LLM asked | s / call | tokens / mention | text alone on them | LLM alone | fused (nested CV) "
          "| weight per fold | Top-1, all mentions |")
    print("|---:|---:|---:|---:|---|---|---|---|---|")
    results = {}
    for gate in gates:
        r = evaluate(logits, gold, scores, ids, conf < gate, a.folds, a.llm_floor)
        results[gate] = r
        sel = r["asked"]
        per_mention = sum(scores[ids[i]]["tokens"] for i in np.flatnonzero(sel)) / len(X)
        print(f"| {gate} | {sel.mean():.1%} | {r['seconds']:.2f} | {per_mention:.0f} | {_acc(text_ok[sel])} | {_acc(r['llm_ok'])} "
              f"| {_acc(r['fused_ok'][sel])} | {r['fold_w']} | {_acc(r['fused_ok'])} |")
    r = results[a.gate]
    undecided = np.flatnonzero(r["asked"])
    llm, method = r["llm"], r["method"]
    sel, ok_text, ok_fused, fold_w = r["asked"], text_ok, r["fused_ok"], r["fold_w"]
    secs = [scores[ids[i]]["seconds"] for i in undecided]
    toks = [scores[ids[i]]["tokens"] for i in undecided]
    w_all = best_weight([logits[i] for i in undecided], [llm[i] for i in undecided], [int(gold[i]) for i in undecided])
    data = json.loads(Path(base.source).read_text())
    old = data.get("llm_weight", 1.0)
    data["llm_floor"] = a.llm_floor
    data["llm_weight"] = {**({"likelihood": old, "choice": old} if not isinstance(old, dict) else old), method: w_all}
    data.setdefault("fit", {})["llm"] = {
        "method": method, "linker_model": a.linker_model, "gate": a.gate, "folds": a.folds, "weight": w_all,
        "fold_weights": fold_w, "asked": int(sel.sum()), "asked_share": float(sel.mean()),
        "asked_text_acc": float(ok_text[sel].mean()) if sel.any() else None,
        "asked_fused_cv_acc": float(ok_fused[sel].mean()) if sel.any() else None,
        "cv_top1_text": float(ok_text.mean()), "cv_top1": float(ok_fused.mean()),
        "mean_seconds": float(np.mean(secs)) if secs else None, "mean_tokens": float(np.mean(toks)) if toks else None,
        "gates": [{"gate": g, "asked_share": float(x["asked"].mean()), "cv_top1": float(x["fused_ok"].mean()),
                   "fold_weights": x["fold_w"]} for g, x in results.items()],
    }
    out = Path(a.out or base.source)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"llm_weight[{method}] = {w_all} written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # bad data, labels, weights or model: one line naming them, exit 2
    sys.exit(run_main("fit_llm_weight", main))
