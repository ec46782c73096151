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
            verdict = "verified" if score >= tau else "failed"
            entry.update(verification_score=round(score, 4), verification_passed=verdict == "verified",
                         verification_threshold=tau, scorer=scorer.name)
    round_answers = [*(state.get("round_answers") or []),
                     {"round": state["round"], "clue": state.get("current_clue"), "entity": answer,
                      "verification_score": score, "verified": verdict == "verified"}]
    next_step = next_after_verify({**state, "verdict": verdict}, ctx)
    next_clue = ctx.clue_order[state.get("clue_index", 0)] if next_step == "clue_round" else None
    return {"verdict": verdict, "round_answers": round_answers, "verification_cache": cache,
            **({"warnings": warnings} if warnings else {}),
            "trace": record(entry, "verification", round=state["round"], pick=entry["pick"], score=score,
                            verdict=verdict, threshold=entry.get("verification_threshold"),
                            passed=verdict == "verified", next=next_step, next_clue=next_clue)}
