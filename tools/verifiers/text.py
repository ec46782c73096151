"""The offline verification scorer: the image's clue text against the entity's text, in embedding space.

Its own module so that the other scorers (``tools/verifiers/{clip,judge}.py``), which fall back on it
for records without an image file, need not import ``tools/verify.py`` (which imports them).
"""

from __future__ import annotations

import threading
from typing import Any

from tools.clues import ImageToolError, extract_clue
from tools.clues.base import CLUE_TYPES
from tools.clues.precomputed import describe_all
from tools.embeddings import get_embedder
from tools.texts import entity_text


class TextEmbeddingScorer:
    """Offline default: clue text of the image vs entity text, in embedding space."""

    name = "embedded:clue-text-embedding"
    # all-MiniLM-L6-v2 cosines of an image description with a short entity bio are low
    # (median 0.14 for the right entity); calibration in docs/method.md "Thresholds of the offline defaults".
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
