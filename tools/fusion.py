"""The fused linker's scoring: learned weights over :mod:`tools.features`, plus the LLM.

A candidate's score is a logistic-regression logit over its cheap features
(``text`` weights before any visual clue, ``clue`` weights once clues are
gathered), plus ``llm_weight`` times the log-probability the linker model gave the
candidate (its name's likelihood, or its letter's) when the model was asked. A softmax over the candidates
turns scores into a distribution whose top value is the confidence used by
the text-first gate.

The weights file is JSON written by ``evals/fit_fusion.py``:
``{"features": [...], "text": {"coef": [...], "intercept": x, "mean": [...], "scale": [...]},
"clue": {...}, "llm_weight": {"likelihood": w, "choice": w} (or one number for both),
"llm_floor": f (optional: the LLM's log-probabilities, relative to its top candidate, are floored
at -f), "fit": {...}}``. The packaged one is fitted on
the WikiMEL dev split (cross-validated figures in its ``fit`` entry and the README).
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
        for kind in ("text", "clue"):
            m = data[kind]
            self.models[kind] = {k: np.asarray(m[k], dtype=np.float64) for k in ("coef", "mean", "scale")}
            self.models[kind]["intercept"] = float(m["intercept"])
            if len(self.models[kind]["coef"]) != len(self.features):
                raise ConfigError(f"fusion_weights {source}: '{kind}' has {len(m['coef'])} weights "
                                  f"for {len(self.features)} features")
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

    def logits(self, features: np.ndarray, *, with_clues: bool) -> np.ndarray:
        """Per-candidate logits of the ``clue`` (``with_clues``) or ``text`` model."""
        m = self.models["clue" if with_clues else "text"]
        x = (features[:, self.index] - m["mean"]) / m["scale"]
        return x @ m["coef"] + m["intercept"]


def floored(logp: Any, floor: float | None) -> np.ndarray:
    """Log-probabilities relative to the best one, floored at ``-floor`` (``None``: unchanged)."""
    x = np.asarray(logp, dtype=np.float64)
    return x if floor is None or not len(x) else np.maximum(x - x.max(), -floor)


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
