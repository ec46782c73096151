"""Fit the fused linker's weights on a labelled dataset, with cross-validated accuracy.

    python -m evals.fit_fusion                      # WikiMEL dev split -> tools/data/fusion_weights.json
    python -m evals.fit_fusion DATA.json --labels L.json --out my_weights.json --folds 5

Two logistic regressions over :mod:`tools.features` (one row per candidate,
label 1 for the gold candidate): ``text`` (text features only: the model of
round 1) and ``clue`` (text + visual-clue features from the records' image
descriptions: the model of the clue rounds). Printed: K-fold cross-validated
Top-1 (folds split by mention, so no mention is scored by weights fitted on
it), beside the first-candidate and dense-similarity baselines on the same
mentions, and for the text-first gate the share of mentions whose top
probability reaches each threshold and the accuracy on that share. The
weights written are fitted on all mentions; the CV figures are stored with them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from evals.datasets import load_dataset
from evals.metrics import normalize_name, wilson
from tools.clues.precomputed import describe_all, parse_image_desc, precomputed_clue
from tools.embeddings import get_embedder
from tools.errors import I2CRError
from tools.features import ALL_FEATURES, CLUE_FEATURES, TEXT_FEATURES, candidate_features
from tools.fusion import PACKAGED_WEIGHTS, softmax

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikimel"
GATES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
MODELS = (("text", TEXT_FEATURES), ("clue", TEXT_FEATURES + CLUE_FEATURES))
"""The two models of a weights file and the features each sees."""


def clue_texts(image_desc: Any) -> tuple[str, str]:
    """All clue text of a precomputed image description, and its OCR text."""
    desc = parse_image_desc(image_desc)
    if not desc:
        return "", ""
    return describe_all(desc), precomputed_clue("ocr", desc).text


def build_matrix(path: str, labels: str | None, embedding_model: str) -> dict[str, Any]:
    """Features of every candidate of every labelled mention; gold index per mention (-1: not listed)."""
    ds = load_dataset(path, labels)
    emb = get_embedder(embedding_model)
    X, gold_idx, ids = [], [], []
    for ex in ds.examples:
        if ex.inputs is None or ex.gold is None or not ex.inputs.get("candidates"):
            continue
        inp = ex.inputs
        cands = inp["candidates"]
        clue, ocr = clue_texts(inp.get("image_desc"))
        X.append(candidate_features(inp["mention"], inp.get("context") or "", cands, emb, clue, ocr))
        gname = normalize_name(ex.gold.get("name"))
        gi = next((i for i, c in enumerate(cands)
                   if (gname and normalize_name(c["name"]) == gname) or (not gname and c.get("qid") == ex.gold.get("qid"))),
                  -1)
        gold_idx.append(gi)
        ids.append(ex.id)
    return {"X": X, "gold": np.asarray(gold_idx), "ids": ids}


def _cols(names: tuple[str, ...]) -> list[int]:
    return [ALL_FEATURES.index(n) for n in names]


def fit_lr(X: list[np.ndarray], gold: np.ndarray, cols: list[int], C: float) -> dict[str, Any]:
    """A standardised logistic regression over the rows of ``X`` (per-candidate labels)."""
    from sklearn.linear_model import LogisticRegression

    rows = np.concatenate([x[:, cols] for x in X])
    y = np.concatenate([(np.arange(len(x)) == g).astype(int) for x, g in zip(X, gold)])
    mean, scale = rows.mean(0), rows.std(0)
    scale[scale == 0] = 1.0
    lr = LogisticRegression(C=C, max_iter=2000).fit((rows - mean) / scale, y)
    return {"coef": lr.coef_[0].tolist(), "intercept": float(lr.intercept_[0]),
            "mean": mean.tolist(), "scale": scale.tolist()}


def fit_clogit(X: list[np.ndarray], gold: np.ndarray, cols: list[int], C: float,
               sample_weight: np.ndarray | None = None) -> dict[str, Any]:
    """A conditional logit with a nil alternative: per mention, ``softmax([x_i . w + b ..., 0])``.

    ``gold[m]`` is the gold candidate's index, or -1 when the gold is not listed (or is nil):
    then the nil alternative is the right answer. Features are standardised over all rows; L2
    strength ``1/C`` on ``w`` (not on ``b``). Fitted by L-BFGS on the exact log-likelihood, so the
    probabilities are calibrated on the training mix (reliability measured on held-out data by
    ``evals/generalisation.py``). Same layout as :func:`fit_lr`; the intercept is ``b``.
    """
    from scipy.optimize import minimize

    rows = np.concatenate([x[:, cols] for x in X])
    mean, scale = rows.mean(0), rows.std(0)
    scale[scale == 0] = 1.0
    M, N, d = len(X), max(len(x) for x in X), len(cols)
    T = np.zeros((M, N, d))
    mask = np.zeros((M, N), dtype=bool)
    for m, x in enumerate(X):
        T[m, :len(x)] = (x[:, cols] - mean) / scale
        mask[m, :len(x)] = True
    y = np.zeros((M, N + 1))
    for m, g in enumerate(gold):
        y[m, g if 0 <= g < len(X[m]) else N] = 1.0
    sw = np.ones(M) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    lam = 1.0 / C

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:d], theta[d]
        s = np.where(mask, T @ w + b, -np.inf)
        full = np.concatenate([s, np.zeros((M, 1))], axis=1)
        mx = full.max(1, keepdims=True)
        z = np.exp(full - mx)
        lse = np.log(z.sum(1, keepdims=True)) + mx
        p = z / z.sum(1, keepdims=True)
        nll = -(sw * (y * np.where(np.isfinite(full), full - lse, 0.0)).sum(1)).sum()
        r = (p - y) * sw[:, None]
        gw = np.einsum("mn,mnd->d", r[:, :N], T) + lam * w
        gb = r[:, :N].sum()
        return nll + 0.5 * lam * w @ w, np.append(gw, gb)

    res = minimize(loss, np.zeros(d + 1), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return {"coef": res.x[:d].tolist(), "intercept": float(res.x[d]), "mean": mean.tolist(), "scale": scale.tolist()}


def widen(model: dict[str, Any], cols: list[int]) -> dict[str, Any]:
    """A model over ``cols`` as weights over every feature (unused ones 0), the weights-file layout."""
    full = np.zeros(len(ALL_FEATURES))
    mean, scale = np.zeros(len(ALL_FEATURES)), np.ones(len(ALL_FEATURES))
    full[cols], mean[cols], scale[cols] = model["coef"], model["mean"], model["scale"]
    return {"coef": full.tolist(), "intercept": model["intercept"], "mean": mean.tolist(), "scale": scale.tolist()}


def fold_of(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """The fold of each of ``n`` mentions (the split :func:`cross_validate` uses)."""
    return np.random.default_rng(seed).permutation(n) % folds


def fold_weights(X: list[np.ndarray], gold: np.ndarray, fold: np.ndarray, f: int, C: float,
                 llm_weight: Any = 1.0) -> dict[str, Any]:
    """A weights file's content fitted on every mention outside fold ``f``."""
    train = [i for i in range(len(X)) if fold[i] != f]
    out: dict[str, Any] = {"features": list(ALL_FEATURES), "llm_weight": llm_weight,
                           "fit": {"fold": f, "trained_on": len(train), "C": C}}
    for kind, names in MODELS:
        cols = _cols(names)
        out[kind] = widen(fit_lr([X[i] for i in train], gold[train], cols, C), cols)
    return out


def predict(model: dict[str, Any], x: np.ndarray, cols: list[int]) -> np.ndarray:
    """Per-candidate logits of ``model`` on one mention's feature rows."""
    z = (x[:, cols] - np.asarray(model["mean"])) / np.asarray(model["scale"])
    return z @ np.asarray(model["coef"]) + model["intercept"]


def out_of_fold_logits(X: list[np.ndarray], gold: np.ndarray, cols: list[int], C: float, folds: int,
                       seed: int = 0) -> list[np.ndarray]:
    """Per-candidate logits of each mention from a model fitted without the mention's fold."""
    n = len(X)
    fold = fold_of(n, folds, seed)
    logits: list[np.ndarray] = [np.zeros(0)] * n
    for f in range(folds):
        train = [i for i in range(n) if fold[i] != f]
        model = fit_lr([X[i] for i in train], gold[train], cols, C)
        for i in np.flatnonzero(fold == f):
            logits[i] = predict(model, X[i], cols)
    return logits


def cross_validate(X: list[np.ndarray], gold: np.ndarray, cols: list[int], C: float, folds: int,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold (predicted index, top probability) per mention."""
    probs = [softmax(z) for z in out_of_fold_logits(X, gold, cols, C, folds, seed)]
    return np.array([int(np.argmax(p)) for p in probs]), np.array([float(p.max()) for p in probs])


def _acc(flags: np.ndarray) -> str:
    k, n = int(flags.sum()), len(flags)
    if not n:
        return "n/a"
    lo, hi = wilson(k, n)
    return f"{k / n:.3f} [{lo:.3f}, {hi:.3f}] (n={n})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", default=str(DATA / "WikiMEL_dev.json"))
    p.add_argument("--labels", default=None, help="labels file (default: WikiMEL_dev_label.json beside the default data)")
    p.add_argument("--embedding-model", default="embedded")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regressions")
    p.add_argument("--out", default=str(PACKAGED_WEIGHTS), help="where to write the weights JSON")
    a = p.parse_args(argv)
    if a.folds < 2:
        p.error(f"--folds: expected at least 2, got {a.folds}")
    labels = a.labels or (str(DATA / "WikiMEL_dev_label.json") if a.data == str(DATA / "WikiMEL_dev.json") else None)
    t = time.perf_counter()
    m = build_matrix(a.data, labels, a.embedding_model)
    X, gold = m["X"], m["gold"]
    print(f"{len(X)} labelled mentions with candidates; features in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    listed = gold >= 0
    print(f"gold among the candidates (ceiling): {_acc(listed)}")
    print(f"first candidate:                     {_acc(gold == 0)}")
    dense = np.array([int(np.argmax(x[:, ALL_FEATURES.index('dense')])) for x in X])
    print(f"dense similarity alone:              {_acc(dense == gold)}")
    fit: dict[str, Any] = {"data": Path(a.data).name, "mentions": len(X), "folds": a.folds, "C": a.C,
                           "embedding_model": a.embedding_model}
    out: dict[str, Any] = {"features": list(ALL_FEATURES)}
    for kind, names in MODELS:
        cols = _cols(names)
        pred, conf = cross_validate(X, gold, cols, a.C, a.folds)
        ok = pred == gold
        print(f"\n{kind} model, {a.folds}-fold CV Top-1: {_acc(ok)}")
        gates = []
        for g in GATES:
            sel = conf >= g
            print(f"  gate {g:.2f}: {sel.mean():6.1%} of mentions decided without the LLM, accuracy {_acc(ok[sel])}; "
                  f"the rest {_acc(ok[~sel])}")
            gates.append({"gate": g, "share": float(sel.mean()), "acc": float(ok[sel].mean()) if sel.any() else None,
                          "rest_acc": float(ok[~sel].mean()) if (~sel).any() else None})
        fit[kind] = {"cv_top1": float(ok.mean()), "gates": gates}
        model = fit_lr(X, gold, cols, a.C)
        out[kind] = widen(model, cols)
        print("  weights (standardised): " + ", ".join(f"{n}={w:+.2f}" for n, w in zip(names, model["coef"])))
    out["llm_weight"] = 1.0
    out["fit"] = fit
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nweights written to {a.out}; the LLM's weight is reset to 1.0: refit it for these text weights with "
          f"`python -m evals.fit_llm_weight --weights {a.out}`", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except I2CRError as exc:  # bad data or labels: one line naming them
        sys.exit(f"fit_fusion: error: {exc}")
