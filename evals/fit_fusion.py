"""Fit the fused linker's weights on labelled data (a mix of datasets), with cross-validated figures.

    python -m evals.fit_fusion                      # WikiMEL dev split -> tools/data/fusion_weights.json
    python -m evals.fit_fusion A.json B.json --labels A_l.json B_l.json --order ranked unordered \
        --sample 0 3000 --out my_weights.json --folds 5 [--embedding-cache cache.pkl]

Conditional logits over :mod:`tools.features` with a nil alternative ("none of
these", scored 0) beside the candidates, fitted by maximum likelihood: a
mention whose gold is not listed, or is ``nil``, teaches the nil row. Four
models: ``text`` (round 1; reads the list's order of datasets declared
``ranked``), ``text_unordered`` (never reads the order), and ``clue`` /
``clue_unordered`` (text + visual-clue features, fitted on the mentions that
carry an image description). Printed per dataset: K-fold cross-validated Top-1
counting nil (a nil answer is right on a nil gold) and nil F1, with the nil
decision ``--nil-threshold`` (folds split by mention, so no mention is scored
by weights fitted on it). The weights written are fitted on all mentions; the
CV figures are stored with them.
"""

from __future__ import annotations

import argparse
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
from tools.features import ALL_FEATURES, CLUE_FEATURES, RANK_FEATURES, TEXT_FEATURES, candidate_features
from tools.fusion import (
    PACKAGED_WEIGHTS,
    distribution,
    linear_logits,
    nil_decision,
    softmax,
    weights_document,
    write_weights,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikimel"
GATES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
MODELS = (("text", TEXT_FEATURES), ("clue", TEXT_FEATURES + CLUE_FEATURES))
"""The two models of a weights file and the features each sees."""
RANK_COLS = [ALL_FEATURES.index(f) for f in RANK_FEATURES]


def clue_texts(image_desc: Any) -> tuple[str, str]:
    """All clue text of a precomputed image description, and its OCR text."""
    desc = parse_image_desc(image_desc)
    if not desc:
        return "", ""
    return describe_all(desc), precomputed_clue("ocr", desc).text


class DiskEmbedder:
    """An embedder behind a text -> vector cache kept in a pickle file (float16), for repeated fits.

    The file names the embedding model its vectors came from (``spec``): a cache written by another
    model, or by a version of this class that did not record it, is not read (its vectors would be
    another space's) but started afresh, with a note on stderr; the file is rewritten on the next save.
    """

    FORMAT = "i2cr-embedding-cache-v2"

    def __init__(self, path: Path, spec: str = "embedded"):
        self.path, self.inner, self.spec = Path(path), get_embedder(spec), spec
        self.cache: dict[str, np.ndarray] = self._load()
        self.added = 0

    def _load(self) -> dict[str, np.ndarray]:
        import pickle

        if not self.path.is_file():
            return {}
        try:
            data = pickle.loads(self.path.read_bytes())
        except Exception as exc:  # a truncated or foreign file: recomputed, never a crash mid-fit
            print(f"embedding cache {self.path}: unreadable ({type(exc).__name__}); starting afresh",
                  file=sys.stderr)
            return {}
        if isinstance(data, dict) and data.get("format") == self.FORMAT:
            if data.get("embedder") == self.spec:
                return dict(data.get("vectors") or {})
            why = f"holds vectors of embedding model '{data.get('embedder')}', this run uses '{self.spec}'"
        else:
            why = "does not record its embedding model (written before it did)"
        print(f"embedding cache {self.path}: {why}; starting afresh (the file is replaced on save)",
              file=sys.stderr)
        return {}

    def embed(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.inner.embed(missing).astype(np.float16)))
            self.added += len(missing)
            if self.added >= 2000:
                self.save()
        return np.stack([self.cache[t].astype(np.float32) for t in texts])

    def cosine(self, query: str, texts: list[str]) -> list[float]:
        v = self.embed([query, *texts])
        return [float(x) for x in v[1:] @ v[0]]

    def save(self) -> None:
        import pickle

        if not self.added:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps({"format": self.FORMAT, "embedder": self.spec, "vectors": self.cache}))
        tmp.replace(self.path)
        self.added = 0


def build_matrix(path: str, labels: str | None, embedding_model: Any, sample: int | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """Features of every candidate of every labelled mention; gold index per mention (-1: not listed or nil).

    ``sample``: a seeded sample of that many mentions. ``embedding_model``: a spec or an embedder.
    """
    ds = load_dataset(path, labels)
    emb = get_embedder(embedding_model) if isinstance(embedding_model, str) else embedding_model
    X, gold_idx, ids, nil, has_clues = [], [], [], [], []
    exs = [ex for ex in ds.examples if ex.inputs is not None and ex.gold is not None and ex.inputs.get("candidates")]
    if sample and sample < len(exs):
        exs = [exs[i] for i in sorted(np.random.default_rng(seed).choice(len(exs), sample, replace=False))]
    for ex in exs:
        inp = ex.inputs
        cands = inp["candidates"]
        clue, ocr = clue_texts(inp.get("image_desc"))
        X.append(candidate_features(inp["mention"], inp.get("context") or "", cands, emb, clue, ocr))
        gname = normalize_name(ex.gold.get("name"))
        gi = -1 if ex.gold.get("nil") else next(
            (i for i, c in enumerate(cands) if (gname and normalize_name(c["name"]) == gname)
             or (not gname and ex.gold.get("qid") and c.get("qid") == ex.gold.get("qid"))), -1)
        gold_idx.append(gi)
        ids.append(ex.id)
        nil.append(bool(ex.gold.get("nil")))
        has_clues.append(bool(clue))
    return {"X": X, "gold": np.asarray(gold_idx), "ids": ids, "nil": np.asarray(nil, bool),
            "has_clues": np.asarray(has_clues, bool)}


def _cols(names: tuple[str, ...]) -> list[int]:
    return [ALL_FEATURES.index(n) for n in names]


def unordered(X: list[np.ndarray]) -> list[np.ndarray]:
    """The same rows with the rank features replaced by their average over each list (order-free)."""
    out = []
    for x in X:
        x = x.copy()
        x[:, RANK_COLS] = x[:, RANK_COLS].mean(0)
        out.append(x)
    return out


def fit_models(X: list[np.ndarray], gold: np.ndarray, C: float, *, ranked: np.ndarray | None = None,
               has_clues: np.ndarray | None = None, source: np.ndarray | None = None,
               clue_only: np.ndarray | None = None,
               exclude: tuple[str, ...] = (), hidden: int = 0, relative: bool = False,
               weight_decay: float = 3e-3, linear_only: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """The four nil-row models of a weights file, widened to ``ALL_FEATURES``.

    ``text``/``clue`` read the list's order of the mentions marked ``ranked`` (the others' rank
    features are averaged); ``text_unordered``/``clue_unordered`` never see it. Clue models are
    fitted on the mentions ``has_clues`` (all when not given; the text models when none).
    ``clue_only``: mentions the text models do not see (``i2cr fit --augment-clue-nil`` copies).
    ``source``: each mention's dataset; given, every dataset weighs the same in the fit.
    ``exclude``: features no model uses (their weights are 0).
    ``hidden``/``relative``/``weight_decay``: with ``hidden`` > 0 or ``relative``, the models are fitted by
    :func:`fit_clogit_mlp` (a hidden layer of that many units beside the linear part; the features'
    differences to the best rival as inputs too); else by :func:`fit_clogit` (L2 ``1/C``).
    """
    n = len(X)
    ranked = np.ones(n, bool) if ranked is None else np.asarray(ranked, bool)
    has_clues = np.ones(n, bool) if has_clues is None else np.asarray(has_clues, bool)
    text_skip = np.zeros(n, bool) if clue_only is None else np.asarray(clue_only, bool)
    X_r = [x if r else u for x, r, u in zip(X, ranked, unordered(X))]
    X_u = unordered(X)
    out = {}
    for kind, names in MODELS:
        if kind == "clue" and not has_clues.any():
            names = TEXT_FEATURES  # no clue text to learn from: the clue model is the text model
        sel = np.flatnonzero(has_clues) if kind == "clue" and has_clues.any() else np.flatnonzero(~text_skip)
        for suffix, rows, drop in (("", X_r, ()), ("_unordered", X_u, RANK_FEATURES)):
            cols = _cols(tuple(f for f in names if f not in drop and f not in exclude))
            sw = None
            if source is not None:
                src = np.asarray(source)[sel]
                sizes = {d: int((src == d).sum()) for d in np.unique(src)}
                sw = np.array([len(src) / (len(sizes) * sizes[d]) for d in src])
            if hidden or relative:
                model = fit_clogit_mlp([rows[i] for i in sel], gold[sel], cols, hidden=hidden, relative=relative,
                                       weight_decay=weight_decay, sample_weight=sw,
                                       linear_only=[k for k, c in enumerate(cols) if ALL_FEATURES[c] in linear_only])
            else:
                model = fit_clogit([rows[i] for i in sel], gold[sel], cols, C, sample_weight=sw)
            out[kind + suffix] = widen(model, cols)
    return out


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


def balance_weights(sizes: list[int]) -> np.ndarray:
    """Per-mention weights giving each dataset of a mix the same total weight (mean weight 1)."""
    total, k = sum(sizes), len(sizes)
    return np.concatenate([np.full(n, total / (k * n)) for n in sizes if n])


def standardised_padded(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-mention input rows standardised over all rows (a constant column gets scale 1) and padded into
    one ``(mentions, longest list, inputs)`` array, with the mask of the real candidates, the means and
    the scales."""
    allrows = np.concatenate(rows)
    mean, scale = allrows.mean(0), allrows.std(0)
    scale[scale == 0] = 1.0
    M, N, d = len(rows), max(len(x) for x in rows), allrows.shape[1]
    T = np.zeros((M, N, d))
    mask = np.zeros((M, N), dtype=bool)
    for m, x in enumerate(rows):
        T[m, :len(x)] = (x - mean) / scale
        mask[m, :len(x)] = True
    return T, mask, mean, scale


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

    T, mask, mean, scale = standardised_padded([x[:, cols] for x in X])
    M, N, d = T.shape
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
    """A model over ``cols`` as weights over every feature (unused ones 0), the weights-file layout.

    A ``relative`` model's inputs are the features then their differences (``tools.fusion.relative_rows``):
    both halves are widened alike."""
    n_all = len(ALL_FEATURES)
    rel = bool(model.get("relative"))
    pos = list(cols) + ([n_all + c for c in cols] if rel else [])
    d = n_all * (2 if rel else 1)
    full = np.zeros(d)
    mean, scale = np.zeros(d), np.ones(d)
    full[pos], mean[pos], scale[pos] = model["coef"], model["mean"], model["scale"]
    out = {"coef": full.tolist(), "intercept": model["intercept"], "mean": mean.tolist(), "scale": scale.tolist()}
    if rel:
        out["relative"] = True
    if model.get("hidden") is not None:
        W = np.zeros((len(model["hidden"]["b"]), d))
        W[:, pos] = np.asarray(model["hidden"]["W"])
        out["hidden"] = {"W": W.tolist(), "b": list(model["hidden"]["b"]), "v": list(model["hidden"]["v"])}
    return out


def fit_clogit_mlp(X: list[np.ndarray], gold: np.ndarray, cols: list[int], *, hidden: int = 16,
                   relative: bool = True, weight_decay: float = 3e-3, sample_weight: np.ndarray | None = None,
                   seed: int = 0, max_iter: int = 300, linear_only: list[int] = ()) -> dict[str, Any]:
    """The conditional logit with a nil row (:func:`fit_clogit`), its score widened: a linear part plus
    ``hidden`` tanh units (``v . tanh(W x + b)``), over the candidate's standardised features and, with
    ``relative``, their differences to the best rival of the list (``tools.fusion.relative_rows``).

    Exact log-likelihood of ``softmax([score_i ..., 0])`` (nil row at 0, ``gold`` -1 = nil), weighted by
    ``sample_weight`` and averaged, plus ``weight_decay`` times the squared weights (not the biases);
    full-batch L-BFGS (torch, one thread, seeded: the same data gives the same weights). Scored at run
    time by ``tools.fusion.linear_logits`` in numpy. ``linear_only``: positions in ``cols`` whose inputs
    (plain and relative) the hidden units do not read (their ``W`` columns stay 0): evidence that counts
    in proportion only.
    """
    import torch

    from tools.fusion import relative_rows

    rows_in = [x[:, cols] for x in X]
    if relative:
        rows_in = [relative_rows(x) for x in rows_in]
    A, mask, mean, scale = standardised_padded(rows_in)
    M, N, d = A.shape
    y = torch.tensor([g if 0 <= g < len(X[m]) else N for m, g in enumerate(gold)])
    sw = torch.tensor(np.ones(M) if sample_weight is None else np.asarray(sample_weight), dtype=torch.float64)
    At, maskt = torch.tensor(A), torch.tensor(mask)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(seed)
        lin = torch.zeros(d, dtype=torch.float64, requires_grad=True)
        b0 = torch.zeros((), dtype=torch.float64, requires_grad=True)
        params = [lin, b0]
        keep = np.ones(d)
        for k in linear_only:
            keep[k] = 0.0
            if relative:
                keep[len(cols) + k] = 0.0
        mask_w = torch.tensor(keep, dtype=torch.float64)
        if hidden:
            W = (torch.randn(hidden, d, generator=g, dtype=torch.float64) / np.sqrt(d)).requires_grad_()
            bh = torch.zeros(hidden, dtype=torch.float64, requires_grad=True)
            v = (torch.randn(hidden, generator=g, dtype=torch.float64) / np.sqrt(hidden)).requires_grad_()
            params += [W, bh, v]

        def scores() -> torch.Tensor:
            z = At @ lin + b0
            if hidden:
                z = z + torch.tanh(At @ (W * mask_w).T + bh) @ v
            z = z.masked_fill(~maskt, -1e30)
            return torch.cat([z, torch.zeros(M, 1, dtype=torch.float64)], 1)

        opt = torch.optim.LBFGS(params, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            nll = (torch.nn.functional.cross_entropy(scores(), y, reduction="none") * sw).sum() / sw.sum()
            pen = (lin ** 2).sum() + ((W ** 2).sum() + (v ** 2).sum() if hidden else 0.0)
            loss = nll + weight_decay * pen
            loss.backward()
            return loss

        opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    out: dict[str, Any] = {"coef": lin.detach().numpy().tolist(), "intercept": float(b0.detach()),
                           "mean": mean.tolist(), "scale": scale.tolist(), "relative": bool(relative)}
    if hidden:
        out["hidden"] = {"W": (W * mask_w).detach().numpy().tolist(), "b": bh.detach().numpy().tolist(),
                         "v": v.detach().numpy().tolist()}
    return out


def fold_of(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """The fold of each of ``n`` mentions (the split :func:`cross_validate` uses)."""
    return np.random.default_rng(seed).permutation(n) % folds


def fold_weights(X: list[np.ndarray], gold: np.ndarray, fold: np.ndarray, f: int, C: float,
                 llm_weight: Any = 1.0) -> dict[str, Any]:
    """A weights file's content fitted on every mention outside fold ``f``."""
    train = np.array([i for i in range(len(X)) if fold[i] != f])
    models = fit_models([X[i] for i in train], gold[train], C)
    return weights_document(models, llm_weight=llm_weight, fit={"fold": f, "trained_on": len(train), "C": C})


def predict(model: dict[str, Any], x: np.ndarray, cols: list[int]) -> np.ndarray:
    """Per-candidate logits of ``model`` on one mention's feature rows (``tools.fusion.linear_logits``)."""
    return linear_logits(model, x, cols)


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


def _nil_acc(pred: np.ndarray, gold: np.ndarray, nil: np.ndarray) -> str:
    """Top-1 counting nil (a nil answer, -1, is right on a nil gold) and nil F1, as one line."""
    right = np.where(nil, pred < 0, (pred == gold) & (gold >= 0))
    tp, said, real = int(((pred < 0) & nil).sum()), int((pred < 0).sum()), int(nil.sum())
    f1 = 2 * tp / (said + real) if said + real else float("nan")
    return f"Top-1 {_acc(right)}; nil F1 {f1:.2f} (nil golds {real}, nil answers {said})"


def main(argv: list[str] | None = None) -> int:
    """Fit the fused weights on the training mix, print the cross-validated figures and write the file."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="*", default=[str(DATA / "WikiMEL_dev.json")],
                   help="one or more labelled datasets: the training mix")
    p.add_argument("--labels", nargs="*", default=None,
                   help="one labels file per dataset (default: WikiMEL_dev_label.json beside the default data)")
    p.add_argument("--order", nargs="*", default=None, choices=("ranked", "unordered"),
                   help="per dataset: is its list order informative? (default: ranked)")
    p.add_argument("--sample", nargs="*", type=int, default=None,
                   help="per dataset: use a seeded sample of this many mentions (0 = all)")
    p.add_argument("--embedding-model", default="embedded")
    p.add_argument("--embedding-cache", default=None, help="a pickle file caching embeddings across runs")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the conditional logits")
    p.add_argument("--nil-threshold", type=float, default=0.5, help="the nil decision the CV figures use "
                   "(nil_threshold: nil's share of nil + best candidate)")
    p.add_argument("--no-balance", dest="balance", action="store_false",
                   help="weight every mention equally (default: each dataset of the mix weighs the same)")
    p.add_argument("--out", default=str(PACKAGED_WEIGHTS), help="where to write the weights JSON")
    a = p.parse_args(argv)
    if a.folds < 2:
        p.error(f"--folds: expected at least 2, got {a.folds}")
    k = len(a.data)
    default_labels = str(DATA / "WikiMEL_dev_label.json") if a.data == [str(DATA / "WikiMEL_dev.json")] else None
    labels = a.labels or ([default_labels] if default_labels else None)
    for opt, val in (("--labels", labels), ("--order", a.order), ("--sample", a.sample)):
        if val is not None and len(val) != k:
            p.error(f"{opt}: expected one value per dataset ({k}), got {len(val)}")
    orders = a.order or ["ranked"] * k
    samples = a.sample or [0] * k
    t = time.perf_counter()
    X: list[np.ndarray] = []
    gold, nil, ranked, clues, src = [], [], [], [], []
    emb = DiskEmbedder(Path(a.embedding_cache), a.embedding_model) if a.embedding_cache else None
    for d, (path, lab, order, n) in enumerate(zip(a.data, labels or [None] * k, orders, samples)):
        m = build_matrix(path, lab, emb or a.embedding_model, sample=n or None)
        X += m["X"]
        gold += list(m["gold"])
        nil += list(m["nil"])
        clues += list(m["has_clues"])
        ranked += [order == "ranked"] * len(m["X"])
        src += [d] * len(m["X"])
    if emb:
        emb.save()
    gold_a, nil_a, ranked_a, clues_a, src_a = map(np.asarray, (gold, nil, ranked, clues, src))
    print(f"{len(X)} labelled mentions with candidates; features in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    fit: dict[str, Any] = {"data": [Path(x).name for x in a.data], "order": orders, "sample": samples,
                           "mentions": len(X), "folds": a.folds, "C": a.C, "embedding_model": a.embedding_model,
                           "nil_threshold": a.nil_threshold, "balanced": a.balance,
                           "method": "conditional logit with a nil row (L-BFGS)"}
    fold = fold_of(len(X), a.folds)
    preds: dict[str, list] = {"text": [None] * len(X), "text_unordered": [None] * len(X)}
    for f in range(a.folds):
        tr = np.flatnonzero(fold != f)
        models = fit_models([X[i] for i in tr], gold_a[tr], a.C, ranked=ranked_a[tr], has_clues=np.zeros(len(tr), bool),
                            source=src_a[tr] if a.balance else None)
        for i in np.flatnonzero(fold == f):
            x = X[i] if ranked_a[i] else unordered([X[i]])[0]
            for kind in preds:
                m = models[kind]
                preds[kind][i] = predict(m, x if kind == "text" else unordered([X[i]])[0], list(range(len(ALL_FEATURES))))
    fit["cv"] = {}
    for kind, logits in preds.items():
        pred, conf = [], []
        for z in logits:
            pr, _ = distribution(z, True)
            b = int(np.argmax(pr))
            conf.append(float(pr[b]))
            pred.append(-1 if nil_decision(float(pr[b]), float(1 - pr.sum()), a.nil_threshold, True) else b)
        pred_a, conf_a = np.asarray(pred), np.asarray(conf)
        fit["cv"][kind] = {}
        for d, path in enumerate(a.data):
            sel = src_a == d
            line = _nil_acc(pred_a[sel], gold_a[sel], nil_a[sel])
            right = np.where(nil_a, pred_a < 0, (pred_a == gold_a) & (gold_a >= 0))[sel]
            print(f"{kind:15} {Path(path).name}: {a.folds}-fold CV {line}")
            fit["cv"][kind][Path(path).name] = {"top1": float(right.mean()), "gated_share": float((conf_a[sel] >= 0.95).mean())}
    models = fit_models(X, gold_a, a.C, ranked=ranked_a, has_clues=clues_a, source=src_a if a.balance else None)
    for kind in ("text", "text_unordered"):
        used = [(f, w) for f, w in zip(ALL_FEATURES, models[kind]["coef"]) if w]
        print(f"  {kind} weights (standardised): " + ", ".join(f"{n}={w:+.2f}" for n, w in used))
    write_weights(a.out, weights_document(models, llm_weight=1.0, nil_row=True, fit=fit))
    print(f"\nweights written to {a.out}; the LLM's weight is reset to 1.0: refit it for these text weights with "
          f"`python -m evals.fit_llm_weight --weights {a.out}`", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except I2CRError as exc:  # bad data or labels: one line naming them
        sys.exit(f"fit_fusion: error: {exc}")
