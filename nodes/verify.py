"""Stage 4: inter-modal verification.

Does the image agree with the round's answer? The configured scorer
(``tools/verify.py``) scores image against entity; passing ``τ`` ends the
run early (text first: a verified round-1 answer needs no clues). Without an
image the text answer stands. Otherwise the next visual clue is extracted
(``graph/edges.py``).
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.context import Context, resolve_context
from graph.edges import next_after_verify
from graph.progress import record
from graph.state import State
from tools.candidates import candidate_key
from tools.errors import InputError
from tools.refute import contradiction
from tools.texts import entity_ref
from tools.verify import get_scorer, text_scorer


def verify(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Score the round's answer against the image (the edge ``after_verify`` then finishes or gathers a clue)."""
    ctx = resolve_context(runtime)
    answer = state.get("answer")
    entry: dict[str, Any] = {"step": "verify", "round": state["round"], "clue": state.get("current_clue"),
                             "pick": entity_ref(answer)}
    cache = dict(state.get("verification_cache") or {})
    score, warnings = None, None
    if not state.get("has_visual"):
        verdict, entry["note"] = "no_visual", "no image: the text answer stands"
    elif answer is None:
        verdict, entry["note"] = "failed", "nil answer: nothing to verify against the image"
    else:
        scorer = get_scorer(ctx)
        if not state.get("image") and getattr(scorer, "needs_image", False):
            scorer = text_scorer()  # only a precomputed description: compare it as text, with its own tau
        tau = ctx.verification_threshold if ctx.verification_threshold is not None else scorer.default_threshold
        key = candidate_key(answer)
        try:
            if key not in cache:
                cache[key] = float(scorer.score(answer, image=state.get("image"),
                                                image_desc=state.get("image_desc"), ctx=ctx))
            score = cache[key]
        except InputError as exc:  # a verifier that cannot use this image never stops the run
            note = str(exc) if scorer.name in str(exc) else f"verifier '{scorer.name}': {exc}"
            note += "; not verified, the text answer stands"
            warnings = [*(state.get("warnings") or []), note]
            verdict, entry["note"] = ("no_visual" if state["round"] == 1 else "unverifiable"), note
        else:
            refuted = _refuted(answer, scorer, state, ctx)
            verdict = "verified" if score >= tau and not refuted else "failed"
            entry.update(verification_score=round(score, 4), verification_passed=verdict == "verified",
                         verification_threshold=tau, scorer=scorer.name)
            if refuted:
                entry.update(refuted=refuted, note=f"refuted: {refuted}")
    round_answers = [*(state.get("round_answers") or []),
                     {"round": state["round"], "clue": state.get("current_clue"), "entity": answer,
                      "verification_score": score, "verified": verdict == "verified",
                      "refuted": entry.get("refuted")}]
    next_step = next_after_verify({**state, "verdict": verdict}, ctx)
    next_clue = ctx.clue_order[state.get("clue_index", 0)] if next_step == "clue_round" else None
    return {"verdict": verdict, "round_answers": round_answers, "verification_cache": cache,
            **({"warnings": warnings} if warnings else {}),
            "trace": record(entry, "verification", round=state["round"], pick=entry["pick"], score=score,
                            verdict=verdict, threshold=entry.get("verification_threshold"),
                            passed=verdict == "verified", next=next_step, next_clue=next_clue)}


def _refuted(answer: dict, scorer: Any, state: State, ctx: Context) -> str | None:
    """What in the image rules the answer out (``refute_contradictions``), from the image text of a
    scorer that reads one (the offline scorer); ``None`` otherwise."""
    image_text = getattr(scorer, "image_text", None)
    if not ctx.refute_contradictions or image_text is None:
        return None
    return contradiction(answer, image_text(state.get("image"), state.get("image_desc"), ctx))
