"""Generalisation table of the fused linker without the LLM: before vs after, every set apart.

    python -m evals.generalisation [--train-sample 3000] [--folds 5] [--cache DIR] [--out evals/results/generalisation]

Sets (each reported separately, never scored by weights fitted on it):

* WikiMEL dev, unshifted and its stress variants a-e (``evals/variants.py``):
  5-fold cross-validation by mention. A fold's model is fitted on the *other*
  folds of the **unshifted** dev split (plus, for "after", the WikiDiverse train
  sample), then scores the held-out fold of each variant: the variants are
  shifts the weights never saw.
* WikiDiverse val: fitted on WikiDiverse train (a seeded sample; plus, for
  "after", all of WikiMEL dev).

Systems:

* ``before``: the feature code and logistic regression of commit ``--before-commit``
  (its ``tools/features.py`` and weights file, extracted with ``git show`` into the cache
  folder), the WikiMEL-fitted packaged weights on
  WikiDiverse val; never answers nil.
* ``after``: this branch's features (normalised names, acronym/derived-name
  evidence, neutral fact features) and the nil-row conditional logit, fitted on the
  training mix (each dataset weighing the same); nil by :func:`tools.fusion.nil_decision`
  with ``--nil-threshold`` (nil's share of nil + best candidate). ``after-ranked`` reads the list order (``candidate_order=ranked``),
  ``after`` does not (``unordered``).

Measured per set: Top-1 counting nil (a nil answer is right when the gold is nil),
Top-1 on non-nil golds, Top-1 on nil golds, nil precision/recall/F1, Wilson 95%
intervals, and the calibration of the top candidate's probability (ECE over 10
bins; share gated at p >= 0.95 and its accuracy). Text evidence only (the round-1
model, as ``--set gate_threshold=0`` gives before any clue round).
Raw JSON goes to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from evals.datasets import load_dataset
from evals.fit_fusion import DiskEmbedder, balance_weights, fit_clogit, fit_lr, fold_of, predict, unordered
from evals.metrics import normalize_name, wilson
from tools.features import ALL_FEATURES, RANK_FEATURES, TEXT_FEATURES, candidate_features
from tools.fusion import distribution, nil_decision

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("I2CR_SHARED_DATA") or ROOT.parent / "shared" / "data")
RANK_COLS = [ALL_FEATURES.index(f) for f in RANK_FEATURES]
GATE = 0.95


def load_module(path: str, name: str) -> Any:
    """Import the Python file ``path`` as module ``name`` (an older version of a module, for the before column)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def build(path: str, labels: str, featurize: Any, emb: DiskEmbedder, cache: Path, tag: str,
          sample: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Feature matrices (text evidence; the list's own order) of a labelled set, cached on disk."""
    key = hashlib.sha256(f"{tag}|{path}|{labels}|{sample}|{seed}|{Path(path).stat().st_size}".encode()).hexdigest()[:16]
    f = cache / f"feats_{tag}_{key}.pkl"
    if f.is_file():
        return pickle.loads(f.read_bytes())
    ds = load_dataset(path, labels)
    exs = [e for e in ds.examples if e.inputs is not None and e.gold is not None and e.inputs.get("candidates")]
    if sample and sample < len(exs):
        keep = sorted(np.random.default_rng(seed).choice(len(exs), sample, replace=False))
        exs = [exs[i] for i in keep]
    X, gold, nil, names, ids = [], [], [], [], []
    t = time.perf_counter()
    for k, ex in enumerate(exs):
        inp = ex.inputs
        cands = inp["candidates"]
        X.append(featurize(inp["mention"], inp.get("context") or "", cands, emb))
        is_nil = bool(ex.gold.get("nil"))
        g = normalize_name(ex.gold.get("name"))
        gi = -1 if is_nil else next((i for i, c in enumerate(cands) if normalize_name(c["name"]) == g), -1)
        gold.append(gi)
        nil.append(is_nil)
        names.append([c["name"] for c in cands])
        ids.append(ex.id)
        if k and k % 200 == 0:
            print(f"  {tag}: {k}/{len(exs)} mentions, {time.perf_counter() - t:.0f} s", file=sys.stderr)
    emb.save()
    out = {"X": X, "gold": np.asarray(gold), "nil": np.asarray(nil), "ids": ids}
    f.write_bytes(pickle.dumps(out))
    return out


def metrics(pred: np.ndarray, top: np.ndarray, ptop: np.ndarray, gold: np.ndarray, nil: np.ndarray) -> dict[str, Any]:
    """Top-1 counting nil, nil P/R/F1, calibration of the top probability.

    ``pred``: answers (-1 = nil); ``top``/``ptop``: the top candidate and its probability.
    """
    def ci(k: int, n: int) -> dict[str, Any]:
        lo, hi = wilson(k, n)
        return {"k": int(k), "n": int(n), "p": (k / n if n else None), "ci": [lo, hi]}

    answered_nil = pred < 0
    right = np.where(nil, answered_nil, (pred == gold) & (gold >= 0))
    tp = int((answered_nil & nil).sum())
    prec = tp / answered_nil.sum() if answered_nil.any() else None
    rec = tp / nil.sum() if nil.any() else None
    f1 = (2 * prec * rec / (prec + rec)) if prec and rec else (0.0 if nil.any() else None)
    # reliability of the top candidate's probability (is the top candidate right?)
    top_right = (top == gold) & (gold >= 0) & ~nil
    bins = np.clip((ptop * 10).astype(int), 0, 9)
    ece = float(sum(abs(ptop[bins == b].mean() - top_right[bins == b].mean()) * (bins == b).mean()
                    for b in range(10) if (bins == b).any()))
    gated = ptop >= GATE
    return {"top1": ci(int(right.sum()), len(right)), "top1_non_nil": ci(int(right[~nil].sum()), int((~nil).sum())),
            "top1_nil": ci(int(right[nil].sum()), int(nil.sum())),
            "nil_precision": prec, "nil_recall": rec, "nil_f1": f1, "nil_answers": int(answered_nil.sum()),
            "ece_top": ece, "gated_share": float(gated.mean()),
            "gated_acc": ci(int(top_right[gated].sum()), int(gated.sum()))}


def decide(logits: list[np.ndarray], nil_row: bool, nil_threshold: float | None,
           rule: str = "share") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Answers (-1 = nil), top candidates and their probabilities from per-mention logits.

    ``rule``: ``share`` = :func:`tools.fusion.nil_decision` (the linker's rule);
    ``top`` = nil when the top candidate's probability is below the threshold (for comparison).
    """
    pred, ptop, top = [], [], []
    for z in logits:
        p, p_nil = distribution(z, nil_row)
        i = int(np.argmax(p))
        top.append(i)
        ptop.append(float(p[i]))
        if rule == "top":  # the alternative rule, for comparison: a floor on the top candidate's probability
            pred.append(-1 if (nil_threshold is not None and nil_row and p[i] < nil_threshold) else i)
        else:
            pred.append(-1 if nil_decision(float(p[i]), p_nil, nil_threshold, nil_row) else i)
    return np.asarray(pred), np.asarray(top), np.asarray(ptop)


def main(argv: list[str] | None = None) -> int:
    """Print the before/after table on every set and write the raw figures as JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default=str(ROOT.parent / "cache"), help="embeddings, features, variants")
    p.add_argument("--out", default=str(ROOT / "evals" / "results" / "generalisation"))
    p.add_argument("--train-sample", type=int, default=3000, help="WikiDiverse train mentions used (seeded)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--C", type=float, default=1.0)
    p.add_argument("--nil-threshold", type=float, default=0.5)
    p.add_argument("--before-commit", default="11adda1", help="the commit whose linker is 'before'")
    p.add_argument("--before-features", default=None, help="the parent commit's tools/features.py (default: git show)")
    p.add_argument("--before-weights", default=None, help="the parent commit's weights file (default: git show)")
    p.add_argument("--variant-sample", type=int, default=300,
                   help="variants b, c and e (new names and descriptions need their own embeddings) are measured on "
                        "this seeded sample of the dev mentions (0 = all); a and d reuse the dev split's and are whole")
    p.add_argument("--no-balance", dest="balance", action="store_false",
                   help="weight the training mix's mentions equally (default: each dataset weighs the same)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    before_dir = cache / f"before_{a.before_commit}"
    bf = Path(a.before_features or before_dir / "old_features.py")
    bw = Path(a.before_weights or before_dir / "fusion_weights.json")
    for path, src in ((bf, "tools/features.py"), (bw, "tools/data/fusion_weights.json")):
        if not path.is_file():
            import subprocess

            got = subprocess.run(["git", "-C", str(ROOT), "show", f"{a.before_commit}:{src}"], capture_output=True, text=True)
            if got.returncode:
                p.error(f"--before-commit {a.before_commit}: cannot read {src}: {got.stderr.strip()}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(got.stdout)
    old = load_module(str(bf), "old_features")
    old_w = json.loads(bw.read_text())
    emb = DiskEmbedder(cache / "embeddings_embedded.pkl")
    new_feat = lambda m, c, cands, e: candidate_features(m, c, cands, e)  # noqa: E731
    old_feat = lambda m, c, cands, e: old.candidate_features(m, c, cands, e)  # noqa: E731

    wm = SHARED / "wikimel"
    wd = SHARED / "wikidiverse"
    from evals.variants import write_variants
    vdir = cache / "variants"
    if not (vdir / "e_all.json").is_file():
        write_variants(str(wm / "WikiMEL_dev.json"), str(wm / "WikiMEL_dev_label.json"), str(vdir))
    sets = {"wikimel_dev": (str(wm / "WikiMEL_dev.json"), str(wm / "WikiMEL_dev_label.json"))}
    for v in ("a_shuffled", "b_titles", "c_no_attributes", "d_nil", "e_all"):
        sets[v] = (str(vdir / f"{v}.json"), str(vdir / f"{v}_label.json"))
    wd_sets = {"train": (str(wd / "wikidiverse_train.json"), str(wd / "wikidiverse_train_label.json")),
               "val": (str(wd / "wikidiverse_val.json"), str(wd / "wikidiverse_val_label.json"))}
    feats = {}
    # cheapest first (the variants a and d reuse the dev split's texts), so an interrupted run keeps the most
    for name in ("wikimel_dev", "a_shuffled", "d_nil"):
        feats[("new", name)] = build(*sets[name], new_feat, emb, cache, "new", sample=None)
        feats[("old", name)] = build(*sets[name], old_feat, emb, cache, "old")
    train = build(*wd_sets["train"], new_feat, emb, cache, "new", sample=a.train_sample)
    val_new = build(*wd_sets["val"], new_feat, emb, cache, "new")
    val_old = build(*wd_sets["val"], old_feat, emb, cache, "old")
    for name in ("c_no_attributes", "b_titles", "e_all"):
        feats[("new", name)] = build(*sets[name], new_feat, emb, cache, "new", sample=a.variant_sample or None)
        feats[("old", name)] = build(*sets[name], old_feat, emb, cache, "old", sample=a.variant_sample or None)

    old_cols = [old.ALL_FEATURES.index(f) for f in old.TEXT_FEATURES]  # the old text model's columns
    new_cols = [ALL_FEATURES.index(f) for f in TEXT_FEATURES]
    free_cols = [ALL_FEATURES.index(f) for f in TEXT_FEATURES if f not in RANK_FEATURES]
    dev_new, dev_old = feats[("new", "wikimel_dev")], feats[("old", "wikimel_dev")]
    n = len(dev_new["X"])
    fold = fold_of(n, a.folds)
    # variants keep the dev split's ids: map each variant mention to its dev fold
    pos = {rid: i for i, rid in enumerate(dev_new["ids"])}
    tr_X_unord = unordered(train["X"])
    results: dict[str, Any] = {"settings": vars(a), "sets": {}}
    systems = ("before", "after", "after-ranked")
    oof: dict[tuple[str, str], list] = {}
    for name in sets:
        for s in systems:
            oof[(s, name)] = [None] * len(feats[("old" if s == "before" else "new", name)]["X"])
    for f in range(a.folds):
        tr = [i for i in range(n) if fold[i] != f]
        t = time.perf_counter()
        m_old = fit_lr([dev_old["X"][i] for i in tr], dev_old["gold"][tr], old_cols, a.C)
        dev_tr_r = [dev_new["X"][i] for i in tr]
        mix_r = dev_tr_r + tr_X_unord
        mix_u = unordered(dev_tr_r) + tr_X_unord
        g_mix = np.concatenate([dev_new["gold"][tr], train["gold"]])
        sw = balance_weights([len(tr), len(train["X"])]) if a.balance else None
        m_r = fit_clogit(mix_r, g_mix, new_cols, a.C, sample_weight=sw)
        m_u = fit_clogit(mix_u, g_mix, free_cols, a.C, sample_weight=sw)
        print(f"fold {f}: fitted in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        for name in sets:
            fn, fo = feats[("new", name)], feats[("old", name)]
            for j, rid in enumerate(fo["ids"]):
                if fold[pos[rid]] == f:
                    oof[("before", name)][j] = predict(m_old, fo["X"][j], old_cols)
            for j, rid in enumerate(fn["ids"]):
                if fold[pos[rid]] != f:
                    continue
                oof[("after-ranked", name)][j] = predict(m_r, fn["X"][j], new_cols)
                oof[("after", name)][j] = predict(m_u, fn["X"][j], free_cols)
    rows = []
    for name in sets:
        for s in systems:
            nil_row = s != "before"
            fx = feats[("old" if s == "before" else "new", name)]
            pred, top, ptop = decide(oof[(s, name)], nil_row, a.nil_threshold)
            res = metrics(pred, top, ptop, fx["gold"], fx["nil"])
            rows.append((name, s, res))
    # WikiDiverse val: before = packaged (WikiMEL-fitted) weights; after = fitted on train sample + WikiMEL dev
    old_model = {k: old_w["text"][k] for k in ("coef", "intercept", "mean", "scale")}
    old_all = [old.ALL_FEATURES.index(f) for f in old_w["features"]]
    z_before = [predict(old_model, x, old_all) for x in val_old["X"]]
    full_mix = unordered(dev_new["X"]) + tr_X_unord
    g_full = np.concatenate([dev_new["gold"], train["gold"]])
    m_full = fit_clogit(full_mix, g_full, free_cols, a.C,
                        sample_weight=balance_weights([n, len(train["X"])]) if a.balance else None)
    z_after = [predict(m_full, x, free_cols) for x in val_new["X"]]
    for s, z, nil_row in (("before", z_before, False), ("after", z_after, True)):
        pred, top, ptop = decide(z, nil_row, a.nil_threshold)
        rows.append(("wikidiverse_val", s, metrics(pred, top, ptop, val_new["gold"], val_new["nil"])))
    # nil threshold sweep: the held-out answers of every set at other thresholds (sensitivity, not tuning)
    sweep = {}
    for rule, th in (("share", None), ("share", 0.4), ("share", 0.5), ("share", 0.6), ("share", 0.7),
                     ("top", 0.3), ("top", 0.5)):
        for sysname in ("after", "after-ranked"):
            for name in ("wikimel_dev", "a_shuffled", "d_nil", "e_all"):
                pred, top, ptop = decide(oof[(sysname, name)], True, th, rule)
                r = metrics(pred, top, ptop, feats[("new", name)]["gold"], feats[("new", name)]["nil"])
                sweep[f"{sysname}:{name}@{rule}{th}"] = {"top1": r["top1"]["p"], "nil_f1": r["nil_f1"]}
        pred, top, ptop = decide(z_after, True, th, rule)
        r = metrics(pred, top, ptop, val_new["gold"], val_new["nil"])
        sweep[f"after:wikidiverse_val@{rule}{th}"] = {"top1": r["top1"]["p"], "nil_f1": r["nil_f1"]}
    results["nil_threshold_sweep"] = sweep
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, s, res in rows:
        results["sets"].setdefault(name, {})[s] = res
    (out_dir / "table.json").write_text(json.dumps(results, indent=1, default=float))
    print_table(rows)
    print("\nnil decision sensitivity (Top-1 counting nil / nil F1):")
    for k, v in sweep.items():
        print(f"  {k:45} {100 * v['top1']:.1f} / {'-' if v['nil_f1'] is None else round(v['nil_f1'], 2)}")
    return 0


def _fmt(c: dict[str, Any]) -> str:
    if not c["n"]:
        return "n/a"
    return f"{100 * c['p']:.1f} [{100 * c['ci'][0]:.1f},{100 * c['ci'][1]:.1f}]"


def print_table(rows: list) -> None:
    """The table of figures, one line per set and system."""
    head = f"{'set':16} {'system':13} {'Top-1 (nil counted)':22} {'non-nil':20} {'nil F1':>6} {'nilP':>5} {'nilR':>5} {'ECE':>5} {'gated':>6} {'gated acc':20}"
    print(head)
    print("-" * len(head))
    for name, s, r in rows:
        f1 = "-" if r["nil_f1"] is None else f"{r['nil_f1']:.2f}"
        pr = "-" if r["nil_precision"] is None else f"{r['nil_precision']:.2f}"
        rc = "-" if r["nil_recall"] is None else f"{r['nil_recall']:.2f}"
        print(f"{name:16} {s:13} {_fmt(r['top1']):22} {_fmt(r['top1_non_nil']):20} {f1:>6} {pr:>5} {rc:>5} "
              f"{r['ece_top']:5.3f} {100 * r['gated_share']:5.1f}% {_fmt(r['gated_acc']):20}")


if __name__ == "__main__":
    sys.exit(main())
