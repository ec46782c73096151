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
    ``fallback="best"``, the answer the image agreed with most. ``nil`` when
    the result is no entity.
    """
    ctx = resolve_context(runtime)
    verdict = state.get("verdict")
    if verdict == "verified":
        entity = state.get("answer")
        status = "text_verified" if state["round"] == 1 else f"clue_verified:{state.get('current_clue')}"
    elif verdict == "no_visual":
        entity, status = state.get("answer"), "text_only"
    else:
        entity, status = state.get("round1_entity"), "fallback"
        if ctx.fallback == "best":
            scored = [r for r in state.get("round_answers") or [] if r["entity"] and r["verification_score"] is not None]
            if scored:
                entity = max(scored, key=lambda r: r["verification_score"])["entity"]
    if entity is None:
        status = "nil"
    entry = {"step": "final", "round": state["round"], "status": status,
             "entity": entity_ref(entity)}
    return {"entity": entity_public(entity), "status": status, "stop_round": state["round"],
            "round1_entity": entity_public(state.get("round1_entity")),
            "trace": record(entry, "final", status=status, entity=entry["entity"], stop_round=state["round"])}
