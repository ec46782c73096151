"""Final node: the linked entity, the status and the round the run stopped at."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.context import Context, resolve_context
from graph.progress import record
from graph.state import State
from tools.texts import entity_public, entity_ref


def finalize(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Settle the output.

    verified → that round's answer (``text_verified`` in round 1, else
    ``clue_verified:<clue>``); no image → the text answer (``text_only``); no
    round verified → ``fallback``: the round-1 answer (reference) or, with
    ``fallback="best"``, the answer the image agreed with most. A round-1 answer the
    image refuted (``refute_contradictions``) gives way to the unrefuted round answer
    the image agreed with most, if there is one; a round-1 nil, which the image cannot
    verify, gives way to the last clue round's answer (``nil_fallback="last_clue"``).
    ``nil`` when the result is no entity.
    """
    ctx = resolve_context(runtime)
    verdict = state.get("verdict")
    note = None
    if verdict == "verified":
        entity = state.get("answer")
        status = "text_verified" if state["round"] == 1 else f"clue_verified:{state.get('current_clue')}"
    elif verdict == "no_visual":
        entity, status = state.get("answer"), "text_only"
    else:
        entity, status = state.get("round1_entity"), "fallback"
        rounds = state.get("round_answers") or []
        scored = [r for r in rounds if r["entity"] and r["verification_score"] is not None and not r.get("refuted")]
        first_refuted = bool(rounds) and rounds[0]["round"] == 1 and bool(rounds[0].get("refuted"))
        last = rounds[-1] if rounds and rounds[-1]["round"] > 1 else None
        if entity is None and last is not None and ctx.nil_fallback == "last_clue":
            # a round-1 nil is no answer the image was asked about: the last clue round, with every clue
            # gathered, decides (an entity the image did not refute, or nil again)
            if last["entity"] is not None and not last.get("refuted"):
                entity = last["entity"]
                note = f"round-1 nil could not be verified; round {last['round']}'s answer, with the clues, stands"
        elif scored and (ctx.fallback == "best" or first_refuted):
            best = max(scored, key=lambda r: r["verification_score"])
            entity = best["entity"]
            if first_refuted:
                note = f"round-1 answer refuted ({rounds[0]['refuted']}); round {best['round']}'s answer stands"
    if entity is None:
        status = "nil"
    entry = {"step": "final", "round": state["round"], "status": status,
             "entity": entity_ref(entity), **({"note": note} if note else {})}
    return {"entity": entity_public(entity), "status": status, "stop_round": state["round"],
            "round1_entity": entity_public(state.get("round1_entity")),
            "trace": record(entry, "final", status=status, entity=entry["entity"], stop_round=state["round"])}
