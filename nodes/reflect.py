"""Stage 3: intra-modal reflection.

Is the pick consistent with the text? The measure depends on ``linker_mode``:

- ``llm``: the cosine similarity of "mention. context" with the entity's
  "name. description" must reach ``reflection_threshold`` (α). A pick that
  fails is ruled out and the linker is asked again, at most ``max_rechoices``
  times; if no pick passes, the best-scoring one is the round's answer.
  Unusable answers count as failed attempts.
- ``fused`` (the default): the pick's fused probability, which already weighs
  that cosine with the other evidence, is compared with ``confidence_threshold``.
  Below it the pick is kept all the same (the next candidates of the same
  distribution score lower still) and the trace says so.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.context import Context, resolve_context
from graph.progress import record
from graph.inputs import candidate_key
from graph.state import State
from tools.embeddings import get_embedder
from tools.texts import entity_ref, entity_text, query_text


def reflect(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Judge the latest pick; settle the round's answer or rule the pick out for a re-choice.

    Appends one ``reflect`` entry to the trace: the pick, its score against the
    threshold of the linker mode, and how the round's answer was settled.
    """
    ctx = resolve_context(runtime)
    candidates = state["candidates"]
    by_key = {candidate_key(c): c for c in candidates}
    attempts = [dict(a) for a in state["attempts"]]
    last = attempts[-1]
    excluded = list(state.get("excluded") or [])
    fused = ctx.linker_mode == "fused"  # the fused probability already weighs the cosine with the other evidence
    threshold, measure = (ctx.confidence_threshold, "confidence") if fused else (ctx.reflection_threshold, "alpha")
    pick = by_key.get(last["key"]) if last["outcome"] == "entity" else None
    entry: dict[str, Any] = {"step": "reflect", "round": state["round"], "clue": state.get("current_clue"),
                             "attempt": len(attempts), "pick": entity_ref(pick)}
    event: dict[str, Any] = {}

    if last["outcome"] == "nil":
        entry["note"] = "nil accepted: nothing to reflect on"
        return {**_settle(None, "nil", state), "trace": record(entry)}

    if pick is not None:
        if fused:
            score = float(last.get("confidence") or 0.0)
        else:
            embedder = get_embedder(ctx.embedding_model, base_url=ctx.openai_base_url, api_key=ctx.openai_api_key)
            score = embedder.cosine(query_text(state["mention"], state.get("context") or ""), [entity_text(pick)])[0]
        last["score"] = score
        passed = score >= threshold
        entry.update(reflection_score=round(score, 4), reflection_passed=passed, reflection_threshold=threshold)
        if passed:
            return {**_settle(pick, "passed reflection", state), "trace": record(entry)}
        if fused:  # the next candidates of the same distribution score lower still
            entry["note"] = f"confidence {score:.3f} below {threshold}: kept, the round's most probable candidate"
            return {**_settle(pick, entry["note"], state), "trace": record(entry)}
        excluded.append(last["key"])
        event = dict(event="excluded", round=state["round"], qid=pick.get("qid"), name=pick["name"],
                     score=round(score, 4), threshold=threshold,
                     reason=f"reflection score {score:.3f} < {measure} {threshold}: ruled out for this round")

    remaining = [c for c in candidates if candidate_key(c) not in excluded]
    if len(attempts) <= ctx.max_rechoices and remaining:
        entry["note"] = "ruled out: the linker chooses again" if pick else "unusable answer: the linker is asked again"
        return {"attempts": attempts, "excluded": excluded, "settled": False, "trace": record(entry, **event)}

    scored = [a for a in attempts if a["outcome"] == "entity" and a["score"] is not None]
    if scored:
        best = max(scored, key=lambda a: a["score"])
        note = f"no pick reached {threshold}: best-scoring pick kept ({best['score']:.3f})"
        answer = by_key[best["key"]]
    elif ctx.unparseable_fallback == "top_candidate" and candidates:
        answer, note = candidates[0], "no usable answer from the linker: top-ranked candidate kept"
    else:
        answer, note = None, "no usable answer from the linker: nil"
    entry["note"] = note
    return {**_settle(answer, note, state), "trace": record(entry, **event)}


def _settle(answer: dict | None, note: str, state: State) -> dict[str, Any]:
    """Fix the round's answer; the round-1 answer is also kept as the fallback."""
    out: dict[str, Any] = {"answer": answer, "answer_note": note, "excluded": [], "attempts": [], "settled": True}
    if state["round"] == 1:
        out["round1_entity"] = answer
    return out

