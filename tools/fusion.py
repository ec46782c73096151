"""The fused linker's scoring: learned weights over :mod:`tools.features`, plus the LLM.

A candidate's score is a learned logit over its cheap features (linear, or a
small one-hidden-layer network beside the linear part; optionally also over each
feature's difference to the best rival candidate: :func:`linear_logits`)
(``text`` weights before any visual clue, ``clue`` weights once clues are
gathered), plus ``llm_weight`` times the log-probability the linker model gave the
candidate (its name's likelihood, or its letter's) when the model was asked. A softmax over the candidates
turns scores into a distribution whose top value is the confidence used by
the text-first gate.

The weights file is JSON written by ``evals/fit_fusion.py``:
``{"features": [...], "text": {"coef": [...], "intercept": x, "mean": [...], "scale": [...]},
"clue": {...}, "llm_weight": {"likelihood": w, "choice": w} (or one number for both),
"llm_floor": f (optional: the LLM's log-probabilities, relative to its top candidate, are floored
at -f), "llm_nil": {"bias": b, "weight": v} (optional), "llm_context": {"weight": w} (optional:
the text's likelihood under each candidate, :mod:`tools.context_likelihood`), "nil_row": true
(optional), "text_unordered"/"clue_unordered" (optional: models fitted without the list's order,
used when it is not informative), "fit": {...}}``.

``nil_row``: the models were fitted as a conditional logit with a "none of
these" alternative scored 0 beside the candidates (``evals/fit_fusion.py``), so
``softmax([logits..., 0])`` is a calibrated distribution over the candidates
*and* nil (:func:`distribution`): its candidate probabilities are absolute, not
relative to the other candidates, and feed both the text-first gate and the nil
decision (``nil_threshold``). Files without it (older fits) give the plain
softmax over the candidates and never answer nil.

Rank features (``tools.features.RANK_FEATURES``) are computed by the caller
from the list's order only when that order is informative; see
:func:`tools.features.candidate_features`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from tools.errors import ConfigError
from tools.features import ALL_FEATURES

PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "data" / "fusion_weights.json"


class FusionWeights:
    """Loaded weights of the fused scorer."""

    def __init__(self, data: dict[str, Any], source: str):
        self.source = source
        self.features: list[str] = list(data["features"])
        unknown = [f for f in self.features if f not in ALL_FEATURES]
        if unknown:
            raise ConfigError(f"fusion_weights {source}: unknown feature(s) {unknown}")
        self.index = [ALL_FEATURES.index(f) for f in self.features]
        self.models = {}
        for kind in ("text", "clue", "text_unordered", "clue_unordered"):
            if kind not in data and kind.endswith("_unordered"):
                continue
            self.models[kind] = load_model(data[kind], len(self.features), f"fusion_weights {source}: '{kind}'")
        raw = data.get("llm_weight", 1.0)
        weights = raw if isinstance(raw, dict) else {"likelihood": raw, "choice": raw}
        try:
            self.llm_weights = {m: float(weights.get(m, 1.0)) for m in ("likelihood", "choice")}
        except (TypeError, ValueError, AttributeError):
            raise ConfigError(f"fusion_weights {source}: llm_weight must be a number or "
                              f"{{\"likelihood\": w, \"choice\": w}}, got {raw!r}") from None
        floor = data.get("llm_floor")
        if floor is not None and (isinstance(floor, bool) or not isinstance(floor, (int, float)) or floor <= 0):
            raise ConfigError(f"fusion_weights {source}: llm_floor must be a positive number, got {floor!r}")
        self.llm_floor = None if floor is None else float(floor)
        self.nil_row = bool(data.get("nil_row", False))
        nil = data.get("llm_nil")
        try:
            self.llm_nil = None if nil is None else {"bias": float(nil["bias"]), "weight": float(nil["weight"])}
        except (TypeError, KeyError, ValueError):
            raise ConfigError(f"fusion_weights {source}: llm_nil must be {{\"bias\": b, \"weight\": v}}, "
                              f"got {nil!r}") from None
        ctx = data.get("llm_context")
        try:
            self.llm_context = None if ctx is None else {"weight": float(ctx["weight"])}
        except (TypeError, KeyError, ValueError):
            raise ConfigError(f"fusion_weights {source}: llm_context must be {{\"weight\": w}}, got {ctx!r}") from None
        self.fit = data.get("fit", {})

    def llm_weight_for(self, method: str) -> float:
        """Weight of the LLM's log-probabilities read by ``method`` (``likelihood`` or ``choice``)."""
        return self.llm_weights[method]

    def llm_evidence(self, logp: np.ndarray) -> np.ndarray:
        """The LLM's log-probabilities relative to its favourite, floored at ``-llm_floor``.

        The floor bounds how far one model call can push a candidate down (a
        small model is sometimes confidently wrong); without one, they are used as given.
        """
        return floored(logp, self.llm_floor)

    def context_weight(self) -> float:
        """Weight of the text's likelihood under each candidate (``llm_context``; 0 without the term)."""
        return self.llm_context["weight"] if self.llm_context else 0.0

    def with_llm(self, scores: np.ndarray, weight: float, logp: Any, nil_logp: float | None = None,
                 context_logp: Any = None) -> np.ndarray:
        """Candidate scores plus the LLM's evidence, relative to the nil row (kept at 0).

        ``weight`` times the floored relative log-probabilities (:meth:`llm_evidence`); with ``llm_nil``
        (fitted by ``evals/fit.py`` with the nil row) nil's score, while the LLM is asked, is
        ``bias + weight * clip(nil_logp - best name's logp)``: the likelihood of the model answering
        ``prompts.linking.NIL_ANSWER`` as evidence for nil. It is moved to the candidates (the
        softmax only sees differences). Without ``nil_logp`` (letters route) only the bias applies.
        With ``llm_context`` and ``context_logp`` (:mod:`tools.context_likelihood`; ``None`` for a candidate
        not scored), its weight times those scores relative to the best, floored like the names'.
        """
        lp = np.asarray(logp, dtype=np.float64)
        out = np.asarray(scores, dtype=np.float64) + weight * self.llm_evidence(lp)
        if self.llm_context and context_logp is not None and len(context_logp) == len(out):
            out = out + self.llm_context["weight"] * context_evidence(context_logp, self.llm_floor)
        if self.llm_nil and len(lp):
            f = self.llm_floor or 10.0
            rel = 0.0 if nil_logp is None else float(np.clip(nil_logp - lp.max(), -f, f))
            out = out - (self.llm_nil["bias"] + self.llm_nil["weight"] * rel)
        return out

    def logits(self, features: np.ndarray, *, with_clues: bool, ranked: bool = True) -> np.ndarray:
        """Per-candidate logits of the ``clue`` (``with_clues``) or ``text`` model.

        ``ranked=False``: the model fitted without the list's order (``<kind>_unordered``) when the file
        has one; else the same model (the caller has already averaged the rank features).
        """
        kind = "clue" if with_clues else "text"
        m = self.models.get(kind if ranked else f"{kind}_unordered") or self.models[kind]
        return linear_logits(m, features, self.index)


def load_model(m: Any, n_features: int, where: str) -> dict[str, Any]:
    """One model of a weights file as arrays, its shapes checked against the file's feature list."""
    try:
        relative = bool(m.get("relative", False))
        d = n_features * (2 if relative else 1)
        out: dict[str, Any] = {k: np.asarray(m[k], dtype=np.float64) for k in ("coef", "mean", "scale")}
        out["intercept"], out["relative"] = float(m["intercept"]), relative
        if any(out[k].shape != (d,) for k in ("coef", "mean", "scale")):
            raise ConfigError(f"{where} has {out['coef'].size} weights for {d} inputs "
                              f"({n_features} features{', plain and relative' if relative else ''})")
        if m.get("hidden") is not None:
            h = m["hidden"]
            W, b, v = (np.asarray(h[k], dtype=np.float64) for k in ("W", "b", "v"))
            if W.ndim != 2 or W.shape[1] != d or b.shape != (W.shape[0],) or v.shape != (W.shape[0],):
                raise ConfigError(f"{where}: hidden layer shapes W {W.shape}, b {b.shape}, v {v.shape} "
                                  f"do not fit {d} inputs")
            out["hidden"] = {"W": W, "b": b, "v": v}
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{where} is malformed: {exc!r}") from None
    return out


def relative_rows(x: np.ndarray) -> np.ndarray:
    """Each candidate's features beside their difference to the best *other* candidate of the list,
    column by column (0 for a list of one): how a candidate compares with its rivals, which a score
    of the candidate alone cannot see. Order-free."""
    if len(x) < 2:
        return np.concatenate([x, np.zeros_like(x)], 1)
    srt = np.sort(x, 0)
    best, second = srt[-1], srt[-2]
    return np.concatenate([x, x - np.where(x == best, second, best)], 1)


def linear_logits(model: dict[str, Any], features: np.ndarray, cols: list[int]) -> np.ndarray:
    """Per-candidate logits of one fitted model of a weights file on the ``cols`` columns of the
    feature rows: the one place the formula is written.

    ``(x - mean) / scale`` standardised inputs, where ``x`` is the candidate's features, followed by
    :func:`relative_rows`'s differences when the model is ``relative``; the logit is
    ``x . coef + intercept``, plus ``v . tanh(W x + b)`` when the model has a ``hidden`` layer
    (fitted by ``evals/fit_fusion.fit_clogit_mlp``)."""
    x = np.asarray(features, dtype=np.float64)[:, cols]
    if model.get("relative"):
        x = relative_rows(x)
    x = (x - np.asarray(model["mean"])) / np.asarray(model["scale"])
    z = x @ np.asarray(model["coef"]) + model["intercept"]
    h = model.get("hidden")
    if h is not None:
        z = z + np.tanh(x @ np.asarray(h["W"]).T + np.asarray(h["b"])) @ np.asarray(h["v"])
    return z


def distribution(scores: np.ndarray, nil_row: bool) -> tuple[np.ndarray, float]:
    """Probabilities of the candidates and of nil from their scores.

    With ``nil_row`` a nil alternative scored 0 joins the softmax (the models'
    intercepts were fitted against it); without, nil gets 0 and the candidates
    share all the mass.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not nil_row:
        return softmax(scores), 0.0
    full = softmax(np.append(scores, 0.0))
    return full[:-1], float(full[-1])


def order_is_ranked(candidate_order: str, source: str | None) -> bool:
    """Whether the list's order counts as evidence (the rank features are read).

    ``ranked``/``unordered`` as declared; ``auto``: ranked only for lists the
    knowledge base retrieval ranked (``source == "knowledge base"``); a list that
    came with the input is treated as unordered, so shuffling it cannot change
    the answer (see docs/generalisation.md for the measurement behind this default).
    """
    if candidate_order == "ranked":
        return True
    if candidate_order == "unordered":
        return False
    return source == "knowledge base"


def nil_decision(p_top: float | None, p_nil: float, nil_threshold: float | None, nil_row: bool) -> bool:
    """Whether to answer nil rather than the best candidate.

    Of the two leading answers, the best candidate (probability ``p_top``) and nil (``p_nil``),
    nil is chosen when its share ``p_nil / (p_nil + p_top)`` exceeds ``nil_threshold``: 0.5 is
    the most probable answer (the choice that maximises expected accuracy when nil counts as
    an answer), higher values answer nil more rarely. Never with ``nil_threshold=None`` (the off
    switch) or with weights that have no nil row (their probabilities are relative to the other
    candidates, not absolute).
    """
    if nil_threshold is None or not nil_row:
        return False
    if not p_top:
        return True
    return p_nil / (p_nil + p_top) > nil_threshold


def nil_offered(allow_nil: bool, nil_threshold: float | None) -> bool:
    """Whether ``linker_mode=llm`` offers the model a nil answer: one setting for both linkers.

    ``nil_threshold`` off (``None``) turns nil off in both modes (the fused linker never answers nil,
    the llm linker is not offered the nil answer format); otherwise ``allow_nil`` decides (default on).
    The threshold's value has no meaning for the llm linker, whose nil is its own answer.
    """
    return bool(allow_nil) and nil_threshold is not None


def weights_document(models: dict[str, dict[str, Any]], *, llm_weight: Any = 1.0, llm_floor: float | None = None,
                     nil_row: bool = True, fit: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON content of a weights file (the one format :class:`FusionWeights` reads).

    ``models``: ``{"text": {"coef", "intercept", "mean", "scale"}, "clue": {...}}`` over ``ALL_FEATURES``
    (twice over with ``"relative": true``; optionally ``"hidden": {"W", "b", "v"}``),
    optionally ``text_unordered`` / ``clue_unordered`` (fitted without the rank features: used when the
    list's order is not informative).
    """
    out: dict[str, Any] = {"features": list(ALL_FEATURES)}
    for kind in ("text", "clue", "text_unordered", "clue_unordered"):
        if kind not in models and kind.endswith("_unordered"):
            continue
        m = models[kind]
        d = len(ALL_FEATURES) * (2 if m.get("relative") else 1)
        if len(m["coef"]) != d:
            raise ValueError(f"model '{kind}' has {len(m['coef'])} weights for {d} inputs")
        out[kind] = {k: (float(m[k]) if k == "intercept" else [float(v) for v in m[k]])
                     for k in ("coef", "intercept", "mean", "scale")}
        if m.get("relative"):
            out[kind]["relative"] = True
        if m.get("hidden") is not None:
            h = m["hidden"]
            out[kind]["hidden"] = {"W": [[float(v) for v in row] for row in h["W"]],
                                   "b": [float(v) for v in h["b"]], "v": [float(v) for v in h["v"]]}
    out["llm_weight"] = llm_weight
    if llm_floor is not None:
        out["llm_floor"] = llm_floor
    out["nil_row"] = bool(nil_row)
    out["fit"] = fit or {}
    return out


def write_weights(path: str | Path, document: dict[str, Any]) -> Path:
    """Write a weights document (checked by loading it back) to ``path``."""
    FusionWeights(document, str(path))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(document, indent=1) + "\n")
    return p


def floored(logp: Any, floor: float | None) -> np.ndarray:
    """Log-probabilities relative to the best one, floored at ``-floor`` (``None``: unchanged)."""
    x = np.asarray(logp, dtype=np.float64)
    return x if floor is None or not len(x) else np.maximum(x - x.max(), -floor)


def context_evidence(scores: Any, floor: float | None) -> np.ndarray:
    """The text-likelihood scores of :mod:`tools.context_likelihood` relative to the best scored one, floored at
    ``-floor`` (10 without one) as the names' scores are (:func:`floored`); unscored candidates (``None``/NaN)
    get the floor."""
    s = np.array([-np.inf if v is None or np.isnan(v) else float(v) for v in scores], dtype=np.float64)
    if not np.isfinite(s).any():
        return np.zeros(len(s))
    return floored(s, floor or 10.0)


def softmax(scores: np.ndarray) -> np.ndarray:
    """A distribution over candidates from their scores."""
    if len(scores) == 0:
        return scores
    z = np.exp(scores - scores.max())
    return z / z.sum()


def load_weights(path: str | None) -> FusionWeights:
    """The weights at ``path`` (``None`` or ``''``: the packaged file); ``ConfigError`` if unusable.

    Loaded once per file version: a file rewritten (a refit) is read again.
    """
    p = Path(str(path or PACKAGED_WEIGHTS)).expanduser()
    try:
        stat = p.stat()
        version = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        version = None
    return _load(str(p), version)


@lru_cache(maxsize=8)
def _load(path: str, version: tuple[int, int] | None) -> FusionWeights:
    p = Path(path)
    if version is None or not p.is_file():
        raise ConfigError(f"fusion_weights: file not found: {p} (write one with `python -m evals.fit_fusion`)")
    try:
        data = json.loads(p.read_text())
        return FusionWeights(data, str(p))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"fusion_weights {p}: not a weights file written by evals/fit_fusion.py "
                          f"({type(exc).__name__}: {exc})") from None
