"""Optional human review (``human_review``, off by default).

When no round verified (status ``fallback``), the run pauses with a LangGraph
``interrupt``: the payload shows the mention, the proposed answer, what each
round picked and the candidates. It is resumed with
``Command(resume=decision)`` (Python, the SDK, or Studio's "Resume"), where
``decision`` is ``"accept"`` (keep the proposed answer), ``"nil"``, a
candidate's qid or name, or ``{"qid": ...}`` / ``{"name": ...}``. An answer
that names no candidate asks again, with the reason in the payload.
"""

from __future__ import annotations

from typing import Any

from langgraph.config import get_config
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from graph.context import Context
from graph.progress import emit, record
from graph.state import State
from tools.candidates import candidate_key
from tools.errors import ConfigError
from tools.texts import entity_public, entity_ref

HOW = ("resume with 'accept' (keep the proposed answer), 'nil', a candidate's qid or name, "
       "or {'qid': ...} / {'name': ...}")


def review(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Interrupt for a person's decision and settle the answer with it."""
    if not _has_checkpointer():
        raise ConfigError("human_review: a paused run must be saved to be resumed; compile the graph with "
                          "build_graph(checkpointer=...) and pass a thread_id (the LangGraph server has one)")
    proposed = state.get("entity")
    payload: dict[str, Any] = {
        "question": f"No round verified the answer for {state['mention']!r}: accept it or pick another?",
        "mention": state["mention"], "context": state.get("context") or "", "proposed": proposed,
        "rounds": [{"round": r["round"], "clue": r["clue"], "verification_score": r["verification_score"],
                    "pick": r["entity"] and r["entity"]["name"]} for r in state.get("round_answers") or []],
        "candidates": [entity_public(c) for c in state["candidates"]],
        "how": HOW,
    }
    emit("review", proposed=proposed)
    while True:
        decision = interrupt(payload)
        try:
            entity, note = resolve_decision(decision, state["candidates"], proposed)
            break
        except ValueError as exc:
            payload = {**payload, "error": str(exc)}
    status = "reviewed" if entity is not None else "nil"
    entry = {"step": "review", "round": state["round"], "decision": decision, "note": note, "status": status,
             "entity": entity_ref(entity)}
    return {"entity": entity, "status": status,
            "trace": record(entry, "final", status=status, entity=entry["entity"], stop_round=state["round"])}


def _has_checkpointer() -> bool:
    """Whether this run saves checkpoints (LangGraph hands nodes its checkpointer in the config)."""
    return (get_config().get("configurable") or {}).get("__pregel_checkpointer") is not None


def resolve_decision(decision: Any, candidates: list[dict], proposed: dict | None) -> tuple[dict | None, str]:
    """The entity a reviewer's ``decision`` names, and a note; ``ValueError`` if it names none."""
    if isinstance(decision, dict):
        action = decision.get("action")
        decision = action if action else decision.get("qid") or decision.get("name")
    if decision is True or (isinstance(decision, str) and decision.strip().lower() == "accept"):
        return proposed, "reviewer accepted the proposed answer"
    if isinstance(decision, str) and decision.strip().lower() == "nil":
        return None, "reviewer chose nil"
    if isinstance(decision, str) and decision.strip():
        wanted = decision.strip()
        for c in candidates:
            if wanted == c.get("qid") or wanted.lower() == c["name"].lower():
                public = entity_public(c)
                same = proposed is not None and candidate_key(public) == candidate_key(proposed)
                return public, "reviewer accepted the proposed answer" if same else f"reviewer picked {c['name']}"
    raise ValueError(f"review decision {decision!r} names no candidate; {HOW}")
