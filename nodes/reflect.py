"""Stage 3: intra-modal reflection.

Is the pick consistent with the text? Cosine similarity of mention+context
with the entity's name+description must reach ``reflection_threshold`` (α).
A pick that fails is ruled out and the linker is asked again, at most
``max_rechoices`` times; if no pick passes, the best-scoring one is the
round's answer. Unusable answers count as failed attempts.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.context import Context, resolve_context
from graph.progress import emit
from graph.inputs import candidate_key
from graph.state import State
from tools.embeddings import get_embedder
from tools.verify import entity_text


def reflection_query(state: State) -> str:
    """The text a pick must agree with: mention and context."""
    context = state.get("context") or ""
    return f"{state['mention']}. {context}" if context else state["mention"]


def reflect(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Score the latest pick; settle the round's answer or rule the pick out for a re-choice."""
    ctx = resolve_context(runtime)
    candidates = state["candidates"]
    by_key = {candidate_key(c): c for c in candidates}
    attempts = [dict(a) for a in state["attempts"]]
    last = attempts[-1]
    trace = [dict(t) for t in state["trace"]]
    entry = trace[-1]
    excluded = list(state.get("excluded") or [])
    fused = ctx.linker_mode == "fused"  # the fused probability already weighs the cosine with the other evidence
    threshold, measure = (ctx.confidence_threshold, "confidence") if fused else (ctx.reflection_threshold, "alpha")

    if last["outcome"] == "nil":
        entry["note"] = "; ".join(filter(None, [entry.get("note"), "nil accepted: nothing to reflect on"]))
        return {**_settle(None, "nil", state), "trace": trace}

    if last["outcome"] == "entity":
        if fused:
            score = float(last.get("confidence") or 0.0)
        else:
            embedder = get_embedder(ctx.embedding_model, base_url=ctx.openai_base_url, api_key=ctx.openai_api_key)
            score = embedder.cosine(reflection_query(state), [entity_text(by_key[last["key"]])])[0]
        last["score"] = score
        passed = score >= threshold
        entry.update(reflection_score=round(score, 4), reflection_passed=passed, reflection_threshold=threshold)
        if passed:
            return {**_settle(by_key[last["key"]], "passed reflection", state), "trace": trace}
        if fused:  # the next candidates of the same distribution score lower still
            note = f"confidence {score:.3f} below {threshold}: kept, the round's most probable candidate"
            entry["note"] = "; ".join(filter(None, [entry.get("note"), note]))
            return {**_settle(by_key[last["key"]], note, state), "trace": trace}
        excluded.append(last["key"])
        emit("excluded", round=state["round"], qid=by_key[last["key"]].get("qid"), name=by_key[last["key"]]["name"],
             score=round(score, 4), threshold=threshold,
             reason=f"reflection score {score:.3f} < {measure} {threshold}: ruled out for this round")

    remaining = [c for c in candidates if candidate_key(c) not in excluded]
    if len(attempts) <= ctx.max_rechoices and remaining:
        return {"attempts": attempts, "excluded": excluded, "trace": trace, "settled": False}

    scored = [a for a in attempts if a["outcome"] == "entity" and a["score"] is not None]
    if scored:
        best = max(scored, key=lambda a: a["score"])
        note = f"no pick reached {threshold}: best-scoring pick kept ({best['score']:.3f})"
        answer = by_key[best["key"]]
    elif ctx.unparseable_fallback == "top_candidate" and candidates:
        answer, note = candidates[0], "no usable answer from the linker: top-ranked candidate kept"
    else:
        answer, note = None, "no usable answer from the linker: nil"
    entry["note"] = "; ".join(filter(None, [entry.get("note"), note]))
    return {**_settle(answer, note, state), "trace": trace}


def _settle(answer: dict | None, note: str, state: State) -> dict[str, Any]:
    """Fix the round's answer; the round-1 answer is also kept as the fallback."""
    out: dict[str, Any] = {"answer": answer, "answer_note": note, "excluded": [], "attempts": [], "settled": True}
    if state["round"] == 1:
        out["round1_entity"] = answer
    return out

