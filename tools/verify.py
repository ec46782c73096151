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

import threading
from functools import lru_cache
from typing import Any, Protocol

from tools.clues import ImageToolError, extract_clue
from tools.clues.precomputed import describe_all
from tools.context_types import CLUE_TYPES
from tools.embeddings import get_embedder
from tools.specs import parse_spec
from tools.texts import entity_text  # also imported from here by tools/verifiers/{clip,judge}.py

VERIFIER_PROVIDERS = ("embedded", "clip", "judge")


class Scorer(Protocol):
    """What every verification scorer offers."""

    name: str
    default_threshold: float

    def score(self, entity: dict, *, image: str | None, image_desc: dict | None, ctx: Any) -> float:
        """Agreement of the image with ``entity`` (higher = more agreement)."""
        ...


class TextEmbeddingScorer:
    """Offline default: clue text of the image vs entity text, in embedding space."""

    name = "embedded:clue-text-embedding"
    # all-MiniLM-L6-v2 cosines of an image description with a short entity bio are low
    # (median 0.14 for the right entity); calibration in README "Thresholds of the offline defaults".
    default_threshold = 0.2

    def __init__(self) -> None:
        self._image_text: dict[str, str] = {}
        self._lock = threading.Lock()

    def image_text(self, image: str | None, image_desc: dict | None, ctx: Any) -> str:
        """What the image shows, as text (precomputed descriptions or every clue tool once)."""
        if image_desc and getattr(ctx, "use_precomputed_clues", True):
            text = describe_all(image_desc)
            if text or not image:
                return text
        if not image:
            return ""
        with self._lock:
            if image in self._image_text:
                return self._image_text[image]
        gathered: dict = {}
        for clue_type in CLUE_TYPES:
            try:
                gathered[clue_type] = extract_clue(clue_type, image=image, image_desc=None, ctx=ctx,
                                                   gathered=gathered)
            except ImageToolError:  # a tool this image defeats is left out (its clue round notes it)
                continue
        text = ". ".join(c.text for c in gathered.values() if c.text)
        with self._lock:
            self._image_text[image] = text
        return text

    def score(self, entity: dict, *, image: str | None, image_desc: dict | None, ctx: Any) -> float:
        text = self.image_text(image, image_desc, ctx)
        if not text:
            return 0.0
        embedder = get_embedder(ctx.embedding_model, base_url=ctx.openai_base_url, api_key=ctx.openai_api_key)
        return embedder.cosine(text, [entity_text(entity)])[0]


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
