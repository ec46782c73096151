"""Baselines scored on the same mentions as the graph: first candidate and embedding similarity.

(The third baseline, the text round alone, is the graph's own round-1 answer.)
"""

from __future__ import annotations

from typing import Any

from tools.texts import entity_ref, entity_text, query_text

public = entity_ref
"""``{"qid", "name"}`` of an entity (``None`` stays ``None``)."""


def first_candidate(candidates: list[dict] | None) -> dict | None:
    """The benchmark's first candidate (the candidate lists are ranked)."""
    return public(candidates[0]) if candidates else None


def embedding_choice(embedder: Any, mention: str, context: str, candidates: list[dict] | None) -> dict | None:
    """The candidate whose name+description is closest (cosine) to mention+context."""
    if not candidates:
        return None
    scores = embedder.cosine(query_text(mention, context), [entity_text(c) for c in candidates])
    best = max(range(len(candidates)), key=lambda i: (scores[i], -i))
    return public(candidates[best])
