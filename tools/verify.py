"""Inter-modal verification: how well does the image agree with a candidate entity?

``get_scorer(ctx)`` returns the scorer named by ``ctx.verifier``:

* ``embedded`` — offline default: the image's clue text (precomputed
  descriptions, or the clue tools run on the file) against the entity's name
  and description, cosine in the text-embedding space of ``ctx.embedding_model``.
* ``clip:<hub id | local path>`` — a CLIP-family model through transformers
  (``tools/verifiers/clip.py``), cosine of image and entity text (reference τ 0.31).
  It needs an image file (``needs_image``); records with only a precomputed
  description are verified by the text scorer, with its own τ.
* ``judge:<chat model spec>`` — a vision-capable chat model asked for a 0–1
  score (``tools/verifiers/judge.py``).

A scorer that cannot use an image raises an ``InputError`` naming it (an
``UnusableImage`` or an ``ImageToolError``); the verify node then notes it and
lets the text answer stand. A model that cannot be loaded is a ``ModelError``.

Every scorer has ``name``, ``default_threshold`` and
``score(entity, image=..., image_desc=..., ctx=...) -> float``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Protocol

from tools.specs import parse_spec
from tools.texts import entity_text
from tools.verifiers.text import TextEmbeddingScorer

__all__ = ["Scorer", "TextEmbeddingScorer", "entity_text", "get_scorer", "text_scorer", "VERIFIER_PROVIDERS"]

VERIFIER_PROVIDERS = ("embedded", "clip", "judge")


class Scorer(Protocol):
    """What every verification scorer offers."""

    name: str
    default_threshold: float

    def score(self, entity: dict, *, image: str | None, image_desc: dict | None, ctx: Any) -> float:
        """Agreement of the image with ``entity`` (higher = more agreement)."""
        ...


def text_scorer() -> Scorer:
    """The shared offline text scorer (also used for image-less records by image-only scorers)."""
    return _scorer("embedded", "")


def get_scorer(ctx: Any) -> Scorer:
    """The scorer configured by ``ctx.verifier`` (cached per spec)."""
    spec = ctx.verifier
    if not isinstance(spec, str):
        return spec  # a scorer object passed from Python
    parsed = parse_spec(spec, setting="verifier", providers=VERIFIER_PROVIDERS)
    return _scorer(parsed.provider, parsed.name)


@lru_cache(maxsize=8)
def _scorer(provider: str, name: str) -> Scorer:
    if provider == "clip":
        from tools.verifiers.clip import ClipScorer

        return ClipScorer(name)
    if provider == "judge":
        from tools.verifiers.judge import JudgeScorer

        return JudgeScorer(name)
    return TextEmbeddingScorer()
