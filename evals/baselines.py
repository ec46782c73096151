"""Baselines scored on the same mentions as the graph: first candidate and embedding similarity.

(The third baseline, the text round alone, is the graph's own round-1 answer.)
"""

from __future__ import annotations

from typing import Any

from tools.verify import entity_text


def public(entity: dict | None) -> dict | None:
    """``{"qid", "name"}`` of an entity (``None`` stays ``None``)."""
    return None if entity is None else {"qid": entity.get("qid"), "name": entity.get("name")}


def first_candidate(candidates: list[dict] | None) -> dict | None:
    """The benchmark's first candidate (the candidate lists are ranked)."""
    return public(candidates[0]) if candidates else None


def mention_text(mention: str, context: str) -> str:
    """The query side of the similarity: mention and context, as intra-modal reflection uses it."""
    return f"{mention}. {context}" if context else mention


def embedding_choice(embedder: Any, mention: str, context: str, candidates: list[dict] | None) -> dict | None:
    """The candidate whose name+description is closest (cosine) to mention+context."""
    if not candidates:
        return None
    scores = embedder.cosine(mention_text(mention, context), [entity_text(c) for c in candidates])
    best = max(range(len(candidates)), key=lambda i: (scores[i], -i))
    return public(candidates[best])
