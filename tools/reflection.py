"""Intra-modal reflection as a plain function: is the latest pick consistent with the text?

``reflect_pick(mention, context, candidates, attempts, excluded, ...)`` scores
the latest attempt and decides what happens next. The measure depends on
``linker_mode`` (both modes are here, and only here):

- ``llm``: the cosine similarity of "mention. context" with the entity's
  "name. description" (``tools/texts.py``) must reach ``reflection_threshold``
  (α). A pick that fails is ruled out and the linker is asked again, at most
  ``max_rechoices`` times; if no pick passes, the best-scoring one is the
  round's answer. Unusable answers count as failed attempts.
- ``fused``: the pick's fused probability, which already weighs that cosine
  with the other evidence, is compared with ``confidence_threshold``. Below it
  the pick is kept all the same (the next candidates of the same distribution
  score lower still) and the note says so.

The function touches no graph state: ``nodes/reflect.py`` reads the state,
calls it, and writes the :class:`Reflection` back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tools.candidates import candidate_key
from tools.embeddings import get_embedder
from tools.texts import entity_text, query_text

# linker_mode -> (the threshold setting it is judged against, its name in notes, a pick below it is kept)
MEASURES = {"fused": ("confidence_threshold", "confidence", True), "llm": ("reflection_threshold", "alpha", False)}


def pick_score(linker_mode: str, mention: str, context: str, pick: dict, attempt: dict, *,
               embedding_model: Any = "embedded", openai_base_url: str | None = None,
               openai_api_key: str | None = None) -> float:
    """The reflection score of ``pick``: its fused probability (``fused``, from the attempt), or the
    cosine of "mention. context" with "name. description" (``llm``; the embedder is loaded here)."""
    if linker_mode == "fused":
        return float(attempt.get("confidence") or 0.0)
    embedder = get_embedder(embedding_model, base_url=openai_base_url, api_key=openai_api_key)
    return embedder.cosine(query_text(mention, context), [entity_text(pick)])[0]


@dataclass
class Reflection:
    """The outcome of reflecting on one attempt.

    ``settled``: the round's answer is fixed (``answer``, ``None`` = nil, and
    ``note``); otherwise the linker chooses again with ``excluded`` ruled out.
    ``attempts`` are the round's attempts with the latest one's ``score`` set;
    ``details`` go into the ``reflect`` trace entry, ``event`` (when a pick is
    ruled out) into its progress event.
    """

    settled: bool
    answer: dict | None
    note: str
    attempts: list[dict]
    excluded: list[str]
    pick: dict | None
    details: dict[str, Any] = field(default_factory=dict)
    event: dict[str, Any] = field(default_factory=dict)


def reflect_pick(mention: str, context: str, candidates: list[dict], attempts: list[dict], excluded: list[str], *,
                 round_no: int, linker_mode: str, confidence_threshold: float, reflection_threshold: float,
                 max_rechoices: int, unparseable_fallback: str, embedding_model: Any = "embedded",
                 openai_base_url: str | None = None, openai_api_key: str | None = None) -> Reflection:
    """Judge the latest of ``attempts``: settle the round's answer, or rule the pick out for a re-choice.

    ``embedding_model`` (with the ``openai_*`` settings) is loaded only when a pick is judged in ``llm`` mode.
    """
    by_key = {candidate_key(c): c for c in candidates}
    attempts = [dict(a) for a in attempts]
    excluded = list(excluded)
    last = attempts[-1]
    setting, measure, keep_below = MEASURES[linker_mode]
    threshold = {"confidence_threshold": confidence_threshold, "reflection_threshold": reflection_threshold}[setting]
    pick = by_key.get(last["key"]) if last["outcome"] == "entity" else None
    details: dict[str, Any] = {}
    event: dict[str, Any] = {}

    def done(answer: dict | None, note: str) -> Reflection:
        return Reflection(True, answer, note, attempts, [], pick, {**details, "note": note}, event)

    if last["outcome"] == "nil":
        return Reflection(True, None, "nil", attempts, [], None, {"note": "nil accepted: nothing to reflect on"})

    if pick is not None:
        score = last["score"] = pick_score(linker_mode, mention, context, pick, last, embedding_model=embedding_model,
                                           openai_base_url=openai_base_url, openai_api_key=openai_api_key)
        passed = score >= threshold
        details.update(reflection_score=round(score, 4), reflection_passed=passed, reflection_threshold=threshold)
        if passed:
            return Reflection(True, pick, "passed reflection", attempts, [], pick, details)
        if keep_below:  # the next candidates of the same distribution score lower still
            return done(pick, f"confidence {score:.3f} below {threshold}: kept, the round's most probable candidate")
        excluded.append(last["key"])
        event = dict(event="excluded", round=round_no, qid=pick.get("qid"), name=pick["name"],
                     score=round(score, 4), threshold=threshold,
                     reason=f"reflection score {score:.3f} < {measure} {threshold}: ruled out for this round")

    remaining = [c for c in candidates if candidate_key(c) not in excluded]
    if len(attempts) <= max_rechoices and remaining:
        note = "ruled out: the linker chooses again" if pick else "unusable answer: the linker is asked again"
        return Reflection(False, None, note, attempts, excluded, pick, {**details, "note": note}, event)

    scored = [a for a in attempts if a["outcome"] == "entity" and a["score"] is not None]
    if scored:
        best = max(scored, key=lambda a: a["score"])
        return done(by_key[best["key"]], f"no pick reached {threshold}: best-scoring pick kept ({best['score']:.3f})")
    if unparseable_fallback == "top_candidate" and candidates:
        return done(candidates[0], "no usable answer from the linker: top-ranked candidate kept")
    return done(None, "no usable answer from the linker: nil")

